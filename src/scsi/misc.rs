//! TEST UNIT READY, REQUEST SENSE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
//! READ DEFECT DATA and REPORT SUPPORTED OPERATION CODES.

use super::pr::Access;
use super::sense::{asc, Sense, SenseKey};
use super::{cdb, status, BoxFut, Ctx, Done, HandlerResult, Op, Response, OPS};
use bytes::Bytes;

pub(crate) fn test_unit_ready(_: &Ctx<'_>) -> HandlerResult {
    Ok(Done::good())
}

/// REQUEST SENSE reports a running or failed sanitize (with its progress), else
/// reports (and clears) a pending unit attention, else NO SENSE; the format follows
/// the CDB's DESC bit, not D_SENSE.
pub(crate) fn request_sense(c: &Ctx<'_>) -> HandlerResult {
    let desc = c.cdb[1] & 0x01 != 0;
    let alloc = usize::from(c.cdb[4]);
    let sense = match c.unit.sanitize_condition() {
        Some(s) => s,
        None => match c.unit.lock().ua.pop(c.nexus) {
            Some(code) => Sense::new(SenseKey::UnitAttention, code),
            None => Sense::new(SenseKey::NoSense, asc::NO_ADDITIONAL_SENSE),
        },
    };
    let data = if desc {
        sense.descriptor()
    } else {
        sense.fixed()
    };
    Ok(Done::data(data, alloc))
}

/// REQUEST SENSE to a LUN the nexus cannot reach returns LOGICAL UNIT NOT SUPPORTED as
/// parameter data with GOOD status (SPC-4 6.39).
pub(crate) fn request_sense_absent(cdb: &[u8]) -> Response {
    let (Some(&b1), Some(&alloc)) = (cdb.get(1), cdb.get(4)) else {
        return Response {
            status: status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED).encode(false),
        };
    };
    let s = Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED);
    let mut d = if b1 & 0x01 != 0 {
        s.descriptor()
    } else {
        s.fixed()
    };
    d.truncate(usize::from(alloc));
    Response {
        status: status::GOOD,
        data_in: d.into(),
        sense: Bytes::new(),
    }
}

/// START=1 with no power condition passes every persistent reservation (SBC-3 table
/// 13); stopping, ejecting or changing power conditions needs write access.
pub(crate) fn start_stop_access(cdb: &[u8]) -> Access {
    match cdb.get(4) {
        Some(b) if b & 0xF1 == 0x01 => Access::Status,
        _ => Access::Write,
    }
}

/// START STOP UNIT on a fixed disk: nothing spins, so only the eject request matters,
/// and it is refused while any nexus prevents medium removal. Stopping flushes the
/// cache unless NO_FLUSH, as a real drive would before spinning down.
pub(crate) fn start_stop_unit<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let b4 = c.cdb[4];
        let power_condition = b4 >> 4;
        let (no_flush, loej, start) = (b4 & 0x04 != 0, b4 & 0x02 != 0, b4 & 0x01 != 0);
        if power_condition != 0 {
            // LOEJ and START are ignored with a power condition (SBC-3 5.25).
            return Ok(Done::good());
        }
        if loej && !start && !c.unit.lock().prevent.is_empty() {
            return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED));
        }
        if !start && !no_flush {
            c.unit
                .backend()
                .flush()
                .await
                .map_err(|e| super::rw::io_sense(e, true))?;
        }
        Ok(Done::good())
    })
}

/// Reservations let PREVENT=0 through always, PREVENT=1 only to nexuses that may write.
pub(crate) fn prevent_access(cdb: &[u8]) -> Access {
    match cdb.get(4) {
        Some(b) if b & 0x03 == 0 => Access::Any,
        _ => Access::Write,
    }
}

pub(crate) fn prevent_allow(c: &Ctx<'_>) -> HandlerResult {
    let prevent = match c.cdb[4] & 0x03 {
        0 => false,
        1 => true,
        // 10b and 11b were for medium changers; obsolete for block devices.
        _ => return Err(Sense::invalid_cdb(4, Some(1))),
    };
    let mut st = c.unit.lock();
    if prevent {
        st.prevent.insert(c.nexus.clone());
    } else {
        st.prevent.remove(c.nexus);
    }
    Ok(Done::good())
}

/// READ DEFECT DATA (10)/(12): a virtual volume has no defects, so both lists are empty;
/// the requested lists and format are echoed as valid.
pub(crate) fn read_defect_data(c: &Ctx<'_>) -> HandlerResult {
    if c.cdb[0] == 0x37 {
        let alloc = usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0));
        Ok(Done::data(vec![0, c.cdb[2] & 0x1F, 0, 0], alloc))
    } else {
        let alloc = cdb::u32_at(c.cdb, 6).unwrap_or(0) as usize;
        Ok(Done::data(
            vec![0, c.cdb[1] & 0x1F, 0, 0, 0, 0, 0, 0],
            alloc,
        ))
    }
}

/// Command timeouts descriptor (SPC-4 6.35.4): length 0Ah, timeouts unspecified.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES, generated from the dispatch table.
pub(crate) fn report_supported_opcodes(c: &Ctx<'_>) -> HandlerResult {
    let rctd = c.cdb[2] & 0x80 != 0;
    let options = c.cdb[2] & 0x07;
    let opcode = c.cdb[3];
    let sa = cdb::u16_at(c.cdb, 4).unwrap_or(0);
    let alloc = cdb::u32_at(c.cdb, 6).unwrap_or(0) as usize;
    if c.cdb[2] & 0x78 != 0 {
        return Err(Sense::invalid_cdb(2, None));
    }

    let data = match options {
        0 => all_commands(rctd),
        1 => {
            if super::has_service_actions(opcode) {
                return Err(Sense::invalid_cdb(3, None));
            }
            one_command(OPS.iter().find(|o| o.opcode == opcode), rctd)
        }
        2 => {
            let exists = OPS.iter().any(|o| o.opcode == opcode);
            if exists && !super::has_service_actions(opcode) {
                return Err(Sense::invalid_cdb(3, None));
            }
            one_command(find(opcode, Some(sa)), rctd)
        }
        3 => {
            let row = if super::has_service_actions(opcode) {
                find(opcode, Some(sa))
            } else {
                find(opcode, None)
            };
            one_command(row, rctd)
        }
        _ => return Err(Sense::invalid_cdb(2, Some(2))),
    };
    Ok(Done::data(data, alloc))
}

fn find(opcode: u8, sa: Option<u16>) -> Option<&'static Op> {
    OPS.iter()
        .find(|o| o.opcode == opcode && o.sa.map(u16::from) == sa)
}

fn all_commands(rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for op in OPS {
        let mut flags = 0;
        if rctd {
            flags |= 0x02;
        }
        if op.sa.is_some() {
            flags |= 0x01;
        }
        d.push(op.opcode);
        d.push(0);
        d.extend_from_slice(&u16::from(op.sa.unwrap_or(0)).to_be_bytes());
        d.push(0);
        d.push(flags);
        d.extend_from_slice(&(op.usage.len() as u16).to_be_bytes());
        if rctd {
            d.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
        }
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    d
}

fn one_command(op: Option<&Op>, rctd: bool) -> Vec<u8> {
    let Some(op) = op else {
        // SUPPORT 001b: not supported.
        return vec![0, 0x01, 0, 0];
    };
    let mut d = vec![0, if rctd { 0x80 } else { 0 } | 0x03];
    d.extend_from_slice(&(op.usage.len() as u16).to_be_bytes());
    d.extend_from_slice(op.usage);
    if rctd {
        d.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
    }
    d
}
