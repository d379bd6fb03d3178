//! Logical block provisioning: WRITE SAME (10/16), UNMAP and GET LBA STATUS.
//!
//! Only a thin backend ([`crate::backend::BlockBackend::thin`]) advertises provisioning
//! (LBPME in READ CAPACITY(16), VPD 0xB2), and only then may an initiator deallocate.
//! WRITE SAME is useful either way (fast zeroing, pattern fill), so it is always offered;
//! on a fully provisioned unit its UNMAP bit is ignored and the pattern is written.

use super::cdb;
use super::rw::{check_range, io_sense, MAX_TRANSFER_BLOCKS};
use super::sense::{asc, Sense};
use super::{BoxFut, Ctx, Done};
use crate::backend::{Provisioning, SgList, BLOCK_SIZE};

const BS: usize = BLOCK_SIZE as usize;

/// MAXIMUM WRITE SAME LENGTH (VPD 0xB0): the maximum transfer length, because
/// initiators (libiscsi among them) check a WRITE SAME by writing and reading the same
/// range with ordinary commands. It also bounds the time one command may keep the
/// backend busy filling a pattern; zeroing is cheap but uses the same limit so the rule
/// an initiator sees does not depend on the data it sends.
pub(crate) const MAX_WRITE_SAME_BLOCKS: u64 = MAX_TRANSFER_BLOCKS as u64;

/// MAXIMUM UNMAP LBA COUNT: per command, summed over descriptors (512 MiB). Hole
/// punching is cheap, but an initiator splitting big discards keeps each command short.
pub(crate) const MAX_UNMAP_BLOCKS: u32 = 1024 * 1024;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT: keeps the parameter list (8 + 16 per
/// descriptor) small enough to gather into one buffer.
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// OPTIMAL UNMAP GRANULARITY: 4 KiB; file systems release whole pages, so smaller
/// discards only zero the data and leave it allocated.
pub(crate) const UNMAP_GRANULARITY: u32 = super::capacity::OPTIMAL_GRANULARITY_BLOCKS;

/// Pattern fills are written in pieces of this size so a large WRITE SAME never needs a
/// buffer the size of its range.
const FILL_CHUNK: usize = 1024 * 1024;

/// GET LBA STATUS answers at most this many descriptors: enough for a useful map of
/// the neighbourhood.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;

/// Backend queries one GET LBA STATUS may make (a file volume answers per extent).
const MAX_LBA_STATUS_QUERIES: usize = 8192;

/// Blocks (8 GiB) past which GET LBA STATUS stops merging runs into its descriptors: a
/// pool volume answers per 1 MiB chunk, each a request to an SDS.
const MAX_LBA_STATUS_SPAN: u64 = 8 << 30 >> 9;

/// WRITE SAME(10) 0x41 and WRITE SAME(16) 0x93.
pub(crate) fn write_same<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = cdb::block_range(c.cdb).ok_or_else(|| Sense::invalid_cdb(0, None))?;
        // No protection information, so any WRPROTECT value asks for checks we cannot do.
        if r.flags >> 5 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        // ANC_SUP=0 in VPD 0xB2: anchored (mapped but unwritten) blocks do not exist here.
        if r.flags & 0x10 != 0 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        // PBDATA/LBDATA (obsolete in SBC-4) would ask us to alter the pattern per block.
        if r.flags & 0x06 != 0 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        let unmap = r.flags & 0x08 != 0;
        let ndob = c.cdb[0] == 0x93 && r.flags & 0x01 != 0;
        let capacity = c.unit.num_blocks();
        // WSNZ=0: zero blocks means "to the end of the medium", which must start on it.
        let blocks = if r.blocks == 0 {
            if r.lba >= capacity {
                return Err(Sense::lba_out_of_range());
            }
            capacity - r.lba
        } else {
            check_range(capacity, r.lba, r.blocks)?;
            u64::from(r.blocks)
        };
        if blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::invalid_cdb(r.len_offset, None));
        }
        c.unit.check_writable()?;
        let block = if ndob {
            None
        } else {
            // Exactly one block describes the pattern; anything else is a malformed
            // transfer we cannot replicate faithfully.
            if c.data_out.len() != BS {
                return Err(Sense::invalid_cdb(r.len_offset, None));
            }
            Some(c.data_out.to_bytes())
        };
        let backend = c.unit.backend();
        // UNMAP on a thin unit deallocates whatever the pattern: the blocks then read
        // back as zeros (LBPRZ), as LIO does and libiscsi's WriteSame*.UnmapUntilEnd
        // expects. Without it, an all-zero pattern still takes the cheap zeroing path.
        if unmap && backend.thin() {
            return backend
                .write_zeroes(r.lba, blocks, true)
                .await
                .map(|()| Done::good())
                .map_err(|e| io_sense(e, true));
        }
        let zeros = block.as_ref().is_none_or(|b| b.iter().all(|&x| x == 0));
        if zeros {
            return backend
                .write_zeroes(r.lba, blocks, false)
                .await
                .map(|()| Done::good())
                .map_err(|e| io_sense(e, true));
        }
        let block = block.unwrap_or_default();
        let fua = c.unit.write_through();
        let per_chunk = (FILL_CHUNK / BS) as u64;
        let chunk_blocks = blocks.min(per_chunk) as usize;
        let buf: bytes::Bytes = block.repeat(chunk_blocks).into();
        let mut lba = r.lba;
        let end = r.lba + blocks;
        while lba < end {
            let n = (end - lba).min(per_chunk) as usize;
            backend
                .write(lba, SgList::from(buf.slice(..n * BS)), fua)
                .await
                .map_err(|e| io_sense(e, true))?;
            lba += n as u64;
        }
        Ok(Done::good())
    })
}

/// UNMAP 0x42. Every descriptor is validated before any block is released, so a bad
/// list leaves the medium untouched.
pub(crate) fn unmap<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let backend = c.unit.backend();
        // LBPU=0 on a fully provisioned unit: UNMAP is not a command it has.
        if !backend.thin() {
            return Err(Sense::illegal(asc::INVALID_COMMAND_OPERATION_CODE));
        }
        if c.cdb[1] & 0x01 != 0 {
            return Err(Sense::invalid_cdb(1, Some(0)));
        }
        c.unit.check_writable()?;
        let param_len = usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0));
        if param_len == 0 {
            return Ok(Done::good());
        }
        let list = c.data_out.prefix(param_len).to_bytes();
        if list.len() < 8 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let ranges = parse_unmap_list(&list, c.unit.num_blocks())?;
        for (lba, n) in ranges {
            backend
                .unmap(lba, u64::from(n))
                .await
                .map_err(|e| io_sense(e, true))?;
        }
        Ok(Done::good())
    })
}

/// Decodes and checks an UNMAP parameter list (at least its 8-byte header) into the
/// non-empty ranges to release. A trailing partial descriptor, or descriptors the
/// header announces but the list does not hold, are ignored (SBC-4 5.31.2).
fn parse_unmap_list(list: &[u8], capacity: u64) -> Result<Vec<(u64, u32)>, Sense> {
    let bdl = usize::from(cdb::u16_at(list, 2).unwrap_or(0));
    let count = bdl.min(list.len() - 8) / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param(2, None));
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for d in list[8..8 + count * 16].chunks_exact(16) {
        let lba = cdb::be(d, 0, 8).unwrap_or(0);
        let n = cdb::u32_at(d, 8).unwrap_or(0);
        check_range(capacity, lba, n)?;
        total += u64::from(n);
        if total > u64::from(MAX_UNMAP_BLOCKS) {
            let off = 8 + 16 * ranges.len() + 8;
            return Err(Sense::invalid_param(off, None));
        }
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    Ok(ranges)
}

/// GET LBA STATUS (SERVICE ACTION IN(16) 0x9E / 0x12): runs of mapped and deallocated
/// blocks from the starting LBA, as many as the allocation length has room for.
pub(crate) fn get_lba_status<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let start = cdb::be(c.cdb, 2, 8).unwrap_or(u64::MAX);
        let alloc = cdb::u32_at(c.cdb, 10).unwrap_or(0) as usize;
        let capacity = c.unit.num_blocks();
        if start >= capacity {
            return Err(Sense::lba_out_of_range());
        }
        // Always at least one descriptor, so the PARAMETER DATA LENGTH tells a caller
        // with a short buffer how much there is.
        let room = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        let backend = c.unit.backend();
        // Runs the backend reports one after another (a pool volume answers per chunk)
        // are merged while their state is the same, so a descriptor covers a whole
        // extent: an initiator checking that a sanitized or unmapped volume is
        // deallocated end to end gets one descriptor, not one per chunk.
        let mut runs: Vec<(u64, u64, Provisioning)> = Vec::with_capacity(room);
        let mut lba = start;
        let mut queries = 0;
        while lba < capacity
            && queries < MAX_LBA_STATUS_QUERIES
            && lba - start < MAX_LBA_STATUS_SPAN
        {
            let (state, run) = if backend.thin() {
                backend
                    .allocation_status(lba)
                    .await
                    .map_err(|e| io_sense(e, false))?
            } else {
                (Provisioning::Mapped, capacity - lba)
            };
            queries += 1;
            // A run always advances and fits the medium.
            let run = run.clamp(1, capacity - lba);
            let full = runs.len() == room;
            match runs.last_mut() {
                Some(last) if last.2 == state && last.1 + run <= u64::from(u32::MAX) => {
                    last.1 += run
                }
                _ if full => break,
                _ => runs.push((lba, run, state)),
            }
            lba += run;
        }
        let mut descs: Vec<u8> = Vec::with_capacity(runs.len() * 16);
        for (lba, run, state) in runs {
            descs.extend_from_slice(&lba.to_be_bytes());
            descs.extend_from_slice(&(run as u32).to_be_bytes());
            descs.push(match state {
                Provisioning::Mapped => 0,
                Provisioning::Deallocated => 1,
            });
            descs.extend_from_slice(&[0, 0, 0]);
        }
        let mut d = Vec::with_capacity(8 + descs.len());
        d.extend_from_slice(&((descs.len() + 4) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&descs);
        Ok(Done::data(d, alloc))
    })
}
