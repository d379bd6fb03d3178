//! Third-party copy (VAAI "Clone"): EXTENDED COPY (LID1), RECEIVE COPY RESULTS and
//! the Third-party Copy VPD page, over the parameter list decoded by `copy_params`.
//!
//! The copy manager is the logical unit the command was sent to; the source and the
//! destination may be any logical units *the issuing I_T nexus can reach* (its LUN
//! map), named by their NAA designator. A designator of a volume the nexus cannot see
//! is unreachable, exactly as if it did not exist (LIO's CVE-2020-28374 let EXTENDED
//! COPY read and write volumes outside the initiator's LUN masking).
//!
//! Every segment is checked (targets, ranges, a writable destination) before the
//! first block moves. The data moves through [`BlockBackend::copy_from`]: between
//! pool volumes it goes SDS to SDS without passing through the gateway.

use super::copy_params::{
    self, CopyList, ListIdUsage, BLOCK_TO_BLOCK, IDENTIFICATION_TARGET, MAX_DESCRIPTOR_LIST_LENGTH,
    MAX_SEGMENT_DESCRIPTORS, MAX_TARGET_DESCRIPTORS,
};
use super::pr::{self, Access};
use super::sense::{asc, Sense, SenseKey};
use super::unit::LogicalUnit;
use super::{cdb, BoxFut, Ctx, Done, HandlerResult, ItNexus};
use crate::backend::{BackendError, BlockBackend, BLOCK_SIZE};
use std::collections::HashMap;

/// MAXIMUM SEGMENT LENGTH in bytes: the most one block → block descriptor can name.
pub(crate) const MAX_SEGMENT_BYTES: u32 = u16::MAX as u32 * BLOCK_SIZE;

/// TOTAL / MAXIMUM (IDENTIFIED) CONCURRENT COPIES we promise. Copies do not queue
/// behind each other, so this is a floor, not a limit we enforce.
const CONCURRENT_COPIES: u16 = 16;

/// DATA SEGMENT GRANULARITY, as a power of two: segments are whole 512-byte blocks.
const DATA_SEGMENT_GRANULARITY_LOG2: u8 = 9;

/// The descriptor type codes we implement, ascending (segment, then target).
const DESCRIPTOR_CODES: [u8; 2] = [BLOCK_TO_BLOCK, IDENTIFICATION_TARGET];

/// NAA designator type and logical-unit association (VPD 0x83).
const DESIGNATOR_NAA: u8 = 0x3;

/// What one EXTENDED COPY with a list identifier left for RECEIVE COPY RESULTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub running: bool,
    /// LIST ID USAGE 00b: keep the results once the command completes.
    pub hold: bool,
    pub segments: u16,
    pub bytes: u64,
    /// Fixed-format sense of a failed copy, until FAILED SEGMENT DETAILS returns it.
    pub failure: Option<Vec<u8>>,
    /// COPY STATUS has reported the completed command.
    pub status_reported: bool,
}

/// Copy results of one logical unit (as copy manager), per I_T nexus and list
/// identifier: at most 256 per nexus, dropped with the nexus.
#[derive(Debug, Default)]
pub(crate) struct CopyResults(HashMap<(ItNexus, u8), Record>);

impl CopyResults {
    /// Registers a starting command; OPERATION IN PROGRESS if the nexus already runs
    /// one with this list identifier.
    pub(crate) fn begin(&mut self, nexus: &ItNexus, id: u8, hold: bool) -> Result<(), Sense> {
        let key = (nexus.clone(), id);
        if self.0.get(&key).is_some_and(|r| r.running) {
            return Err(Sense::illegal(asc::OPERATION_IN_PROGRESS).with_param_pointer(0));
        }
        self.0.insert(
            key,
            Record {
                running: true,
                hold,
                segments: 0,
                bytes: 0,
                failure: None,
                status_reported: false,
            },
        );
        Ok(())
    }

    fn progress(&mut self, nexus: &ItNexus, id: u8, segments: u16, bytes: u64) {
        if let Some(r) = self.0.get_mut(&(nexus.clone(), id)) {
            r.segments = segments;
            r.bytes = bytes;
        }
    }

    fn finish(&mut self, nexus: &ItNexus, id: u8, failure: Option<Vec<u8>>) {
        let key = (nexus.clone(), id);
        match self.0.get_mut(&key) {
            Some(r) if r.hold => {
                r.running = false;
                r.failure = failure;
            }
            _ => {
                self.0.remove(&key);
            }
        }
    }

    fn get(&self, nexus: &ItNexus, id: u8) -> Option<&Record> {
        self.0.get(&(nexus.clone(), id))
    }

    /// Drops what was delivered: a completed command whose status was reported and
    /// whose failure details (if any) were too.
    fn delivered(&mut self, nexus: &ItNexus, id: u8, status: bool, failure: bool) {
        let key = (nexus.clone(), id);
        if let Some(r) = self.0.get_mut(&key) {
            if r.running {
                return;
            }
            r.status_reported |= status;
            if failure {
                r.failure = None;
            }
            if r.status_reported && r.failure.is_none() {
                self.0.remove(&key);
            }
        }
    }

    /// The nexus is gone (or the unit was reset): its results go with it.
    pub fn forget(&mut self, nexus: &ItNexus) {
        self.0.retain(|(n, _), _| n != nexus);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// One segment, resolved and checked.
struct Step<'a> {
    src: &'a LogicalUnit,
    dst: &'a LogicalUnit,
    src_lba: u64,
    dst_lba: u64,
    blocks: u64,
    /// Offset of the segment descriptor in the parameter list.
    at: usize,
}

/// COPY ABORTED with the segment pointer at `byte` of the parameter list.
fn aborted(code: u16, byte: usize) -> Sense {
    Sense::new(SenseKey::CopyAborted, code).with_param_pointer(byte)
}

/// The logical unit a target descriptor names, among those the nexus can reach.
/// A destination prefers a writable unit where the nexus reaches the volume twice.
fn resolve<'a>(
    c: &Ctx<'a>,
    list: &CopyList,
    index: u16,
    ptr: usize,
    writing: bool,
) -> Result<&'a LogicalUnit, Sense> {
    let Some(t) = list.targets.get(usize::from(index)) else {
        return Err(aborted(asc::UNREACHABLE_COPY_TARGET, ptr));
    };
    let naa = t.designator_type == DESIGNATOR_NAA && t.association == 0 && t.code_set == 1;
    let mut named = c
        .luns
        .values()
        .filter(|u| naa && u.identity().naa[..] == t.designator[..]);
    let first = named
        .next()
        .ok_or_else(|| aborted(asc::COPY_TARGET_DEVICE_NOT_REACHABLE, t.at))?;
    let unit = match first.read_only() && writing {
        true => named.find(|u| !u.read_only()).unwrap_or(first),
        false => first,
    };
    if t.block_len != BLOCK_SIZE {
        return Err(Sense::invalid_param(t.at + 29, None));
    }
    Ok(unit)
}

/// Resolves every segment before any data moves, so a bad list changes nothing.
fn plan<'a>(c: &Ctx<'a>, list: &CopyList) -> Result<Vec<Step<'a>>, Sense> {
    let mut steps = Vec::with_capacity(list.segments.len());
    for s in &list.segments {
        let src = resolve(c, list, s.src, s.at + 4, false)?;
        let dst = resolve(c, list, s.dst, s.at + 6, true)?;
        let blocks = u64::from(s.blocks);
        let fits = |u: &LogicalUnit, lba: u64| {
            lba.checked_add(blocks)
                .is_some_and(|end| end <= u.num_blocks())
        };
        // SPC-4 leaves the code to us; libiscsi accepts only these for a segment
        // the copy manager cannot carry out.
        if !fits(src, s.src_lba) {
            return Err(aborted(asc::NO_ADDITIONAL_SENSE, s.at + 12));
        }
        if !fits(dst, s.dst_lba) {
            return Err(aborted(asc::NO_ADDITIONAL_SENSE, s.at + 20));
        }
        dst.check_writable()?;
        steps.push(Step {
            src,
            dst,
            src_lba: s.src_lba,
            dst_lba: s.dst_lba,
            blocks,
            at: s.at,
        });
    }
    Ok(steps)
}

fn copy_sense(e: BackendError, at: usize) -> Sense {
    match e {
        BackendError::NoSpace => Sense::new(
            SenseKey::DataProtect,
            asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        ),
        // Every copy of some source or destination data is on a failed server.
        BackendError::Unavailable(why) => {
            tracing::debug!(error = %why, "EXTENDED COPY segment has no copy to use");
            aborted(asc::COPY_TARGET_DEVICE_NOT_REACHABLE, at)
        }
        other => {
            tracing::warn!(error = %other, "EXTENDED COPY segment failed");
            aborted(asc::THIRD_PARTY_DEVICE_FAILURE, at)
        }
    }
}

/// Runs the segments in order, each as if read whole and then written; reports
/// progress to `progress` (segments done, bytes moved).
async fn run(steps: &[Step<'_>], mut progress: impl FnMut(u16, u64)) -> Result<(), Sense> {
    let mut bytes = 0u64;
    for (i, s) in steps.iter().enumerate() {
        if s.blocks > 0 {
            let src: &dyn BlockBackend = s.src.backend();
            s.dst
                .backend()
                .copy_from(s.dst_lba, src, s.src_lba, s.blocks)
                .await
                .map_err(|e| copy_sense(e, s.at))?;
            bytes += s.blocks * u64::from(BLOCK_SIZE);
        }
        progress(i as u16 + 1, bytes);
    }
    // A destination with its write cache disabled gets the copy durable before GOOD.
    let mut flushed: Vec<&LogicalUnit> = Vec::new();
    for s in steps {
        let done = flushed.iter().any(|u| std::ptr::eq(*u, s.dst));
        if s.blocks > 0 && !done && s.dst.write_through() {
            flushed.push(s.dst);
            s.dst
                .backend()
                .flush()
                .await
                .map_err(|e| copy_sense(e, s.at))?;
        }
    }
    Ok(())
}

/// Ends a tracked copy's record however the command ends: with its result, or as
/// aborted when the task is dropped (ABORT TASK), so the list identifier is free again.
struct Tracking<'a> {
    unit: &'a LogicalUnit,
    nexus: &'a ItNexus,
    id: u8,
    failure: Option<Sense>,
}

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        let failure = self.failure.as_ref().map(Sense::fixed);
        self.unit.lock().copies.finish(self.nexus, self.id, failure);
    }
}

/// EXTENDED COPY (LID1), 0x83 / 0x00.
pub(crate) fn extended_copy<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let param_len = cdb::u32_at(c.cdb, 10).unwrap_or(0) as usize;
        let raw = c.data_out.prefix(param_len).to_bytes();
        let Some(list) = copy_params::parse(&raw, param_len)? else {
            return Ok(Done::good());
        };
        let steps = plan(c, &list)?;
        // The copy reads and writes on the nexus's behalf: what a reservation forbids
        // it to do itself, the copy manager does not do for it.
        for st in &steps {
            if !pr::permits(st.src, c.nexus, Access::Read)?
                || !pr::permits(st.dst, c.nexus, Access::Write)?
            {
                return Ok(Done::conflict());
            }
        }
        let id = list.list_id;
        let mut tracking = None;
        if list.usage != ListIdUsage::None {
            let hold = list.usage == ListIdUsage::Hold;
            c.unit.lock().copies.begin(c.nexus, id, hold)?;
            tracking = Some(Tracking {
                unit: c.unit,
                nexus: c.nexus,
                id,
                failure: Some(Sense::new(
                    SenseKey::AbortedCommand,
                    asc::NO_ADDITIONAL_SENSE,
                )),
            });
        }
        let result = run(&steps, |segments, bytes| {
            if tracking.is_some() {
                c.unit.lock().copies.progress(c.nexus, id, segments, bytes);
            }
        })
        .await;
        if let Some(t) = tracking.as_mut() {
            t.failure = result.as_ref().err().cloned();
        }
        drop(tracking);
        result.map(|()| Done::good())
    })
}

/// RECEIVE COPY RESULTS, 0x84: COPY STATUS (0x00), OPERATING PARAMETERS (0x03) and
/// FAILED SEGMENT DETAILS (0x04).
pub(crate) fn receive_copy_results(c: &Ctx<'_>) -> HandlerResult {
    let sa = c.cdb[1] & 0x1F;
    let id = c.cdb[2];
    let alloc = cdb::u32_at(c.cdb, 10).unwrap_or(0) as usize;
    match sa {
        0x00 => {
            let mut st = c.unit.lock();
            let r = st
                .copies
                .get(c.nexus, id)
                .ok_or_else(|| Sense::invalid_cdb(2, None))?;
            let d = copy_status(r);
            st.copies.delivered(c.nexus, id, true, false);
            Ok(Done::data(d, alloc))
        }
        0x03 => Ok(Done::data(operating_parameters(), alloc)),
        0x04 => {
            let mut st = c.unit.lock();
            let r = st
                .copies
                .get(c.nexus, id)
                .ok_or_else(|| Sense::invalid_cdb(2, None))?;
            let d = failed_segment_details(r);
            // Discarded once all of it has been transferred.
            let whole = alloc >= d.len();
            st.copies.delivered(c.nexus, id, false, whole);
            Ok(Done::data(d, alloc))
        }
        _ => Err(Sense::invalid_cdb(1, Some(4))),
    }
}

fn copy_status(r: &Record) -> Vec<u8> {
    let mut d = vec![0u8; 12];
    d[0..4].copy_from_slice(&8u32.to_be_bytes());
    // HDD=0 (no held data); COPY MANAGER STATUS 0 running, 1 done, 2 done with errors.
    d[4] = match (r.running, r.failure.is_some()) {
        (true, _) => 0,
        (false, false) => 1,
        (false, true) => 2,
    };
    d[5..7].copy_from_slice(&r.segments.to_be_bytes());
    // TRANSFER COUNT UNITS: bytes, KiB, MiB, GiB (00h-03h), the first that fits.
    let (mut units, mut count) = (0u8, r.bytes);
    while count > u64::from(u32::MAX) {
        units += 1;
        count >>= 10;
    }
    d[7] = units;
    d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
    d
}

fn failed_segment_details(r: &Record) -> Vec<u8> {
    let Some(sense) = r.failure.as_ref().filter(|_| !r.running) else {
        // Nothing held: AVAILABLE DATA 0 and no more.
        return vec![0u8; 4];
    };
    let mut d = vec![0u8; 60];
    d[56] = super::status::CHECK_CONDITION;
    d[58..60].copy_from_slice(&(sense.len() as u16).to_be_bytes());
    d.extend_from_slice(sense);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

fn operating_parameters() -> Vec<u8> {
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    d[8..10].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER
    // SIZE: 0, none of those are offered.
    d[34..36].copy_from_slice(&CONCURRENT_COPIES.to_be_bytes());
    d[36] = CONCURRENT_COPIES as u8;
    d[37] = DATA_SEGMENT_GRANULARITY_LOG2;
    d[43] = DESCRIPTOR_CODES.len() as u8;
    d.extend_from_slice(&DESCRIPTOR_CODES);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

/// Appends a third-party copy descriptor, its length padded to a multiple of four.
fn descriptor(page: &mut Vec<u8>, kind: u16, mut body: Vec<u8>) {
    body.resize(body.len().div_ceil(4) * 4, 0);
    page.extend_from_slice(&kind.to_be_bytes());
    page.extend_from_slice(&(body.len() as u16).to_be_bytes());
    page.extend_from_slice(&body);
}

/// The body of VPD page 0x8F (Third-party Copy): the same limits as OPERATING
/// PARAMETERS, as SPC-4's descriptors.
pub(crate) fn third_party_copy_vpd() -> Vec<u8> {
    let mut page = Vec::new();
    // Supported Commands: EXTENDED COPY (LID1) and the RECEIVE COPY RESULTS actions.
    let commands = [0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04];
    let mut body = vec![commands.len() as u8];
    body.extend_from_slice(&commands);
    descriptor(&mut page, 0x0001, body);
    // Parameter Data.
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&MAX_TARGET_DESCRIPTORS.to_be_bytes());
    body[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    descriptor(&mut page, 0x0004, body);
    // Supported Descriptors.
    let mut body = vec![DESCRIPTOR_CODES.len() as u8];
    body.extend_from_slice(&DESCRIPTOR_CODES);
    descriptor(&mut page, 0x0008, body);
    // Supported CSCD Descriptor IDs: none (no null or ROD copy targets).
    descriptor(&mut page, 0x000C, vec![0, 0]);
    // General Copy Operations.
    let mut body = vec![0u8; 32];
    body[0..4].copy_from_slice(&u32::from(CONCURRENT_COPIES).to_be_bytes());
    body[4..8].copy_from_slice(&u32::from(CONCURRENT_COPIES).to_be_bytes());
    body[8..12].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    body[12] = DATA_SEGMENT_GRANULARITY_LOG2;
    descriptor(&mut page, 0x8001, body);
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::scsi::{shared::LocalStore, Identity};
    use std::sync::Arc;

    #[test]
    fn a_dropped_copy_frees_its_list_id_and_reads_as_aborted() {
        let unit = LogicalUnit::new(
            Arc::new(MemoryBackend::new(8)),
            Identity::from_volume_id("v", 1),
            false,
            Arc::new(LocalStore::new()),
        );
        let nexus = ItNexus {
            initiator: Arc::from("iqn.2024-01.test:i"),
            isid: [0; 6],
            tpgt: 1,
        };
        unit.lock().copies.begin(&nexus, 7, true).unwrap();
        assert!(unit.lock().copies.begin(&nexus, 7, true).is_err());
        // What extended_copy leaves when its task is dropped mid-copy.
        drop(Tracking {
            unit: &unit,
            nexus: &nexus,
            id: 7,
            failure: Some(Sense::new(
                SenseKey::AbortedCommand,
                asc::NO_ADDITIONAL_SENSE,
            )),
        });
        let st = unit.lock();
        let r = st.copies.get(&nexus, 7).unwrap();
        assert!(!r.running);
        assert_eq!(copy_status(r)[4], 2, "completed with errors");
        assert_eq!(
            r.failure.as_ref().unwrap()[2],
            SenseKey::AbortedCommand as u8
        );
        drop(st);
        unit.lock().copies.begin(&nexus, 7, true).unwrap();
    }
}
