//! The SPC-4/SBC-3 engine.
//!
//! Transport-agnostic: the iSCSI layer hands in a CDB, the Data-Out it received and the
//! I_T nexus it came from, and gets back status, Data-In and sense. Commands are decoded
//! from one table ([`OPS`]) that also feeds REPORT SUPPORTED OPERATION CODES, so what we
//! execute and what we advertise cannot drift apart.

pub mod alua;
mod atomic;
mod capacity;
pub mod cdb;
mod copy;
mod copy_params;
mod inquiry;
mod misc;
mod mode;
mod pr;
mod provisioning;
mod report_luns;
mod rw;
mod sanitize;
pub mod sense;
pub mod shared;
mod ua;
mod unit;

#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod tests;

pub use sense::{Sense, SenseKey};
pub use unit::LogicalUnit;

use crate::backend::{SgList, BLOCK_SIZE};
use bytes::Bytes;
use sense::asc;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// SCSI status codes (SAM-5 5.3).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Identity of an I_T nexus: keys for unit attentions, PREVENT state and (later) reservations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItNexus {
    pub initiator: Arc<str>,
    pub isid: [u8; 6],
    pub tpgt: u16,
}

/// Volume identity, identical through every portal and gateway and across restarts.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub serial: String,
    pub naa: [u8; 16],
}

/// IEEE company ID in the NAA designator. A locally administered CID (X bit set), so
/// it cannot collide with a registered vendor's designators.
const COMPANY_ID: u64 = 0x0A_D7_EA;

impl Identity {
    /// Derives serial and an NAA type 6 (IEEE Registered Extended) designator from a stable 64-bit volume id. Serial: 16 hex digits of the id.
    pub fn from_volume_id(name: &str, id: u64) -> Self {
        // NAA(4) | company id(24) | vendor specific(36) = 0, then the id as the 64-bit
        // extension: the designator depends on nothing but the id.
        let hi = (6u64 << 60) | (COMPANY_ID << 36);
        let mut naa = [0u8; 16];
        naa[..8].copy_from_slice(&hi.to_be_bytes());
        naa[8..].copy_from_slice(&id.to_be_bytes());
        Self {
            name: name.to_string(),
            serial: format!("{id:016x}"),
            naa,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    LogicalUnit,
    TargetWarm,
    TargetCold,
}

/// The LUNs one I_T nexus may reach: LUN number → unit.
pub type LunMap = std::collections::BTreeMap<u64, Arc<LogicalUnit>>;

pub struct Request {
    pub lun: u64,
    pub cdb: Bytes,
    pub data_out: SgList,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// SCSI status, see [`status`].
    pub status: u8,
    /// Already truncated to the CDB's allocation length.
    pub data_in: Bytes,
    /// Fixed or descriptor format per the Control page D_SENSE; empty unless CHECK CONDITION.
    pub sense: Bytes,
}

impl Response {
    fn check(sense: &Sense, descriptor: bool) -> Self {
        Self {
            status: status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: sense.encode(descriptor),
        }
    }
}

/// What a handler produced when it did not fail.
#[derive(Debug)]
pub(crate) struct Done {
    pub status: u8,
    pub data: Bytes,
}

impl Done {
    pub fn good() -> Self {
        Self {
            status: status::GOOD,
            data: Bytes::new(),
        }
    }

    /// RESERVATION CONFLICT: a reservation forbids this command to this nexus.
    pub fn conflict() -> Self {
        Self {
            status: status::RESERVATION_CONFLICT,
            data: Bytes::new(),
        }
    }

    /// Data-In cut to the allocation length: the initiator asked for no more.
    pub fn data(mut v: Vec<u8>, alloc: usize) -> Self {
        v.truncate(alloc);
        Self {
            status: status::GOOD,
            data: v.into(),
        }
    }
}

/// Everything a handler may look at.
pub(crate) struct Ctx<'a> {
    pub unit: &'a LogicalUnit,
    pub nexus: &'a ItNexus,
    pub cdb: &'a [u8],
    pub data_out: &'a SgList,
    pub luns: &'a LunMap,
}

pub(crate) type HandlerResult = Result<Done, Sense>;
pub(crate) type BoxFut<'a> = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'a>>;

#[derive(Clone, Copy)]
pub(crate) enum Exec {
    Sync(fn(&Ctx<'_>) -> HandlerResult),
    Async(for<'a> fn(&'a Ctx<'a>) -> BoxFut<'a>),
}

/// How much Data-Out a CDB describes.
#[derive(Clone, Copy)]
pub(crate) enum DataOut {
    None,
    /// Transfer length in blocks.
    Blocks,
    /// VERIFY: depends on BYTCHK.
    Verify,
    /// A parameter list length field: (offset, bytes).
    Param(usize, usize),
    /// WRITE SAME: one block of pattern, none with NDOB.
    WriteSame,
    /// COMPARE AND WRITE: compare and write data, twice the number of blocks.
    CompareAndWrite,
}

/// How reservations judge a command ([`pr::Access`]): by its opcode alone, or by
/// fields of its CDB (PREVENT ALLOW MEDIUM REMOVAL, START STOP UNIT).
#[derive(Clone, Copy)]
pub(crate) enum Fence {
    Is(pr::Access),
    Cdb(fn(&[u8]) -> pr::Access),
}

impl Fence {
    fn access(self, cdb: &[u8]) -> pr::Access {
        match self {
            Fence::Is(a) => a,
            Fence::Cdb(f) => f(cdb),
        }
    }
}

/// One row of the command table.
pub(crate) struct Op {
    pub opcode: u8,
    pub sa: Option<u8>,
    pub name: &'static str,
    /// CDB usage data for REPORT SUPPORTED OPERATION CODES; its length is the CDB length.
    pub usage: &'static [u8],
    pub dout: DataOut,
    /// What a reservation held through another nexus allows of it.
    pub fence: Fence,
    pub exec: Exec,
}

macro_rules! op {
    ($code:expr, $sa:expr, $name:expr, $dout:expr, $fence:expr, $exec:expr, [$($u:expr),* $(,)?]) => {
        Op { opcode: $code, sa: $sa, name: $name, usage: &[$($u),*], dout: $dout, fence: $fence, exec: $exec }
    };
}

use pr::Access::{Any as ANY, Own as OWN, Read as RD, Status as STAT, Write as WR};
use DataOut as D;
use Exec::{Async as A, Sync as S};
use Fence::{Cdb as BY, Is};

const FF: u8 = 0xFF;

/// The command table, sorted by opcode then service action (REPORT SUPPORTED OPERATION
/// CODES lists it in this order). Columns: opcode, service action, name, Data-Out,
/// reservation class ([`Fence`]: ANY, STAT, RD, WR or OWN, see [`pr::Access`]),
/// handler, CDB usage data.
#[rustfmt::skip]
pub(crate) static OPS: &[Op] = &[
    op!(0x00, None, "TEST UNIT READY", D::None, Is(STAT), S(misc::test_unit_ready), [0x00, 0, 0, 0, 0, 0]),
    op!(0x03, None, "REQUEST SENSE", D::None, Is(ANY), S(misc::request_sense), [0x03, 0x01, 0, 0, FF, 0]),
    op!(0x08, None, "READ(6)", D::None, Is(RD), A(rw::read), [0x08, 0x1F, FF, FF, FF, 0]),
    op!(0x0A, None, "WRITE(6)", D::Blocks, Is(WR), A(rw::write), [0x0A, 0x1F, FF, FF, FF, 0]),
    op!(0x12, None, "INQUIRY", D::None, Is(ANY), S(inquiry::inquiry), [0x12, 0x01, FF, FF, FF, 0]),
    op!(0x15, None, "MODE SELECT(6)", D::Param(4, 1), Is(WR), A(mode::mode_select), [0x15, 0x11, 0, 0, FF, 0]),
    op!(0x16, None, "RESERVE(6)", D::None, Is(OWN), A(pr::reserve), [0x16, 0, 0, 0, 0, 0]),
    op!(0x17, None, "RELEASE(6)", D::None, Is(OWN), A(pr::release), [0x17, 0, 0, 0, 0, 0]),
    op!(0x1A, None, "MODE SENSE(6)", D::None, Is(RD), S(mode::mode_sense), [0x1A, 0x08, FF, FF, FF, 0]),
    op!(0x1B, None, "START STOP UNIT", D::None, BY(misc::start_stop_access), A(misc::start_stop_unit), [0x1B, 0x01, 0, 0x0F, 0xF7, 0]),
    op!(0x1E, None, "PREVENT ALLOW MEDIUM REMOVAL", D::None, BY(misc::prevent_access), S(misc::prevent_allow), [0x1E, 0, 0, 0, 0x03, 0]),
    op!(0x25, None, "READ CAPACITY(10)", D::None, Is(STAT), S(capacity::read_capacity10), [0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0]),
    op!(0x28, None, "READ(10)", D::None, Is(RD), A(rw::read), [0x28, 0x18, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x2A, None, "WRITE(10)", D::Blocks, Is(WR), A(rw::write), [0x2A, 0x18, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x2E, None, "WRITE AND VERIFY(10)", D::Blocks, Is(WR), A(rw::write), [0x2E, 0x12, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x2F, None, "VERIFY(10)", D::Verify, Is(RD), A(rw::verify), [0x2F, 0x16, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x34, None, "PRE-FETCH(10)", D::None, Is(RD), S(rw::prefetch), [0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x35, None, "SYNCHRONIZE CACHE(10)", D::None, Is(WR), A(rw::sync_cache), [0x35, 0, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x37, None, "READ DEFECT DATA(10)", D::None, Is(RD), S(misc::read_defect_data), [0x37, 0, 0x1F, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x41, None, "WRITE SAME(10)", D::WriteSame, Is(WR), A(provisioning::write_same), [0x41, 0x08, FF, FF, FF, FF, 0, FF, FF, 0]),
    op!(0x42, None, "UNMAP", D::Param(7, 2), Is(WR), A(provisioning::unmap), [0x42, 0, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x48, Some(0x01), "SANITIZE", D::Param(7, 2), Is(WR), A(sanitize::sanitize), [0x48, 0xA1, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x48, Some(0x02), "SANITIZE", D::Param(7, 2), Is(WR), A(sanitize::sanitize), [0x48, 0xA2, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x48, Some(0x03), "SANITIZE", D::Param(7, 2), Is(WR), A(sanitize::sanitize), [0x48, 0xA3, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x48, Some(0x1F), "SANITIZE", D::Param(7, 2), Is(WR), A(sanitize::sanitize), [0x48, 0xBF, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x55, None, "MODE SELECT(10)", D::Param(7, 2), Is(WR), A(mode::mode_select), [0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x56, None, "RESERVE(10)", D::None, Is(OWN), A(pr::reserve), [0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]),
    op!(0x57, None, "RELEASE(10)", D::None, Is(OWN), A(pr::release), [0x57, 0x10, 0, 0, 0, 0, 0, 0, 0, 0]),
    op!(0x5A, None, "MODE SENSE(10)", D::None, Is(RD), S(mode::mode_sense), [0x5A, 0x18, FF, FF, 0, 0, 0, FF, FF, 0]),
    op!(0x5E, Some(0x00), "PERSISTENT RESERVE IN READ KEYS", D::None, Is(OWN), S(pr::persistent_reserve_in), [0x5E, 0x00, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x5E, Some(0x01), "PERSISTENT RESERVE IN READ RESERVATION", D::None, Is(OWN), S(pr::persistent_reserve_in), [0x5E, 0x01, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x5E, Some(0x02), "PERSISTENT RESERVE IN REPORT CAPABILITIES", D::None, Is(OWN), S(pr::persistent_reserve_in), [0x5E, 0x02, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x5E, Some(0x03), "PERSISTENT RESERVE IN READ FULL STATUS", D::None, Is(OWN), S(pr::persistent_reserve_in), [0x5E, 0x03, 0, 0, 0, 0, 0, FF, FF, 0]),
    op!(0x5F, Some(0x00), "PERSISTENT RESERVE OUT REGISTER", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x00, 0, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x01), "PERSISTENT RESERVE OUT RESERVE", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x01, FF, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x02), "PERSISTENT RESERVE OUT RELEASE", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x02, FF, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x03), "PERSISTENT RESERVE OUT CLEAR", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x03, 0, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x04), "PERSISTENT RESERVE OUT PREEMPT", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x04, FF, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x05), "PERSISTENT RESERVE OUT PREEMPT AND ABORT", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x05, FF, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x06), "PERSISTENT RESERVE OUT REGISTER AND IGNORE EXISTING KEY", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x06, 0, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x5F, Some(0x07), "PERSISTENT RESERVE OUT REGISTER AND MOVE", D::Param(5, 4), Is(OWN), A(pr::persistent_reserve_out), [0x5F, 0x07, 0, 0, 0, FF, FF, FF, FF, 0]),
    op!(0x83, Some(0x00), "EXTENDED COPY(LID1)", D::Param(10, 4), Is(WR), A(copy::extended_copy), [0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0x84, Some(0x00), "RECEIVE COPY RESULTS(COPY STATUS)", D::None, Is(RD), S(copy::receive_copy_results), [0x84, 0x00, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0x84, Some(0x03), "RECEIVE COPY RESULTS(OPERATING PARAMETERS)", D::None, Is(RD), S(copy::receive_copy_results), [0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0x84, Some(0x04), "RECEIVE COPY RESULTS(FAILED SEGMENT DETAILS)", D::None, Is(RD), S(copy::receive_copy_results), [0x84, 0x04, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0x88, None, "READ(16)", D::None, Is(RD), A(rw::read), [0x88, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x89, None, "COMPARE AND WRITE", D::CompareAndWrite, Is(WR), A(atomic::compare_and_write), [0x89, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, 0]),
    op!(0x8A, None, "WRITE(16)", D::Blocks, Is(WR), A(rw::write), [0x8A, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x8B, None, "ORWRITE(16)", D::Blocks, Is(WR), A(atomic::orwrite), [0x8B, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x8E, None, "WRITE AND VERIFY(16)", D::Blocks, Is(WR), A(rw::write), [0x8E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x8F, None, "VERIFY(16)", D::Verify, Is(RD), A(rw::verify), [0x8F, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x90, None, "PRE-FETCH(16)", D::None, Is(RD), S(rw::prefetch), [0x90, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x91, None, "SYNCHRONIZE CACHE(16)", D::None, Is(WR), A(rw::sync_cache), [0x91, 0, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x93, None, "WRITE SAME(16)", D::WriteSame, Is(WR), A(provisioning::write_same), [0x93, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0x9C, None, "WRITE ATOMIC(16)", D::Blocks, Is(WR), A(atomic::write_atomic), [0x9C, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, FF, FF, 0, 0]),
    op!(0x9E, Some(0x10), "READ CAPACITY(16)", D::None, Is(STAT), S(capacity::read_capacity16), [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0x9E, Some(0x12), "GET LBA STATUS", D::None, Is(RD), A(provisioning::get_lba_status), [0x9E, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xA0, None, "REPORT LUNS", D::None, Is(ANY), S(report_luns::report_luns), [0xA0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0xA3, Some(0x0A), "REPORT TARGET PORT GROUPS", D::None, Is(ANY), S(alua::report_target_port_groups), [0xA3, 0xEA, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
    op!(0xA3, Some(0x0C), "REPORT SUPPORTED OPERATION CODES", D::None, Is(RD), S(misc::report_supported_opcodes), [0xA3, 0x0C, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xA8, None, "READ(12)", D::None, Is(RD), A(rw::read), [0xA8, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xAA, None, "WRITE(12)", D::Blocks, Is(WR), A(rw::write), [0xAA, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xAE, None, "WRITE AND VERIFY(12)", D::Blocks, Is(WR), A(rw::write), [0xAE, 0x12, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xAF, None, "VERIFY(12)", D::Verify, Is(RD), A(rw::verify), [0xAF, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0]),
    op!(0xB7, None, "READ DEFECT DATA(12)", D::None, Is(RD), S(misc::read_defect_data), [0xB7, 0x1F, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0]),
];

/// Whether `opcode` has service actions in the table.
pub(crate) fn has_service_actions(opcode: u8) -> bool {
    OPS.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// Finds the table row for a CDB; `Err` is the sense for an unknown opcode or service action.
pub(crate) fn lookup(cdb: &[u8]) -> Result<&'static Op, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::illegal(asc::INVALID_COMMAND_OPERATION_CODE));
    };
    let mut rows = OPS.iter().filter(|o| o.opcode == opcode).peekable();
    let Some(first) = rows.peek() else {
        return Err(Sense::illegal(asc::INVALID_COMMAND_OPERATION_CODE));
    };
    if first.sa.is_none() {
        return Ok(first);
    }
    let sa = cdb.get(1).map(|b| b & 0x1F);
    rows.find(|o| o.sa == sa)
        .ok_or_else(|| Sense::invalid_cdb(1, Some(4)))
}

/// Commands that must not consume or be blocked by a unit attention (SAM-5 5.14).
fn skips_unit_attention(opcode: u8) -> bool {
    matches!(opcode, 0x12 | 0x03 | 0xA0)
}

/// Executes one command for `nexus` against the LUNs it may reach. Handles REPORT LUNS and commands to LUNs not in `luns` (LOGICAL UNIT NOT SUPPORTED, 05/25/00; INQUIRY to an absent LUN returns peripheral qualifier 3 / device type 0x1f; REQUEST SENSE to it returns the LUN-not-supported sense as data), then dispatches to the unit, delivering pending unit attentions first (except for INQUIRY, REPORT LUNS, REQUEST SENSE per SAM/SPC rules). A command a reservation forbids this nexus (the table's [`Fence`] decides, see [`pr`]) ends in RESERVATION CONFLICT without running.
pub async fn execute(luns: &LunMap, nexus: &ItNexus, req: Request) -> Response {
    let cdb = &req.cdb[..];
    let opcode = cdb.first().copied();
    let Some(unit) = luns.get(&req.lun) else {
        return match opcode {
            Some(0xA0) => report_luns::run(luns, cdb),
            Some(0x12) => inquiry::absent_lun(cdb),
            Some(0x03) => misc::request_sense_absent(cdb),
            _ => Response::check(&Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED), false),
        };
    };

    // Mode pages and reservations another gateway changed are in force from here on.
    let shared = pr::refresh(unit);

    // A running (or failed) sanitize answers before any unit attention: the initiator
    // must learn that the medium is busy, and the attentions wait their turn.
    if let Some(sense) = unit.sanitize_hold(opcode) {
        let d_sense = unit.lock().mode.d_sense();
        return Response::check(&sense, d_sense);
    }

    let (d_sense, ua) = {
        let mut st = unit.lock();
        st.ua.touch(nexus);
        let ua = match opcode {
            Some(op) if skips_unit_attention(op) => None,
            _ => st.ua.pop(nexus),
        };
        (st.mode.d_sense(), ua)
    };
    if let Some(code) = ua {
        return Response::check(&Sense::new(SenseKey::UnitAttention, code), d_sense);
    }

    let result = match lookup(cdb) {
        Err(s) => Err(s),
        Ok(op) => {
            let ctx = Ctx {
                unit,
                nexus,
                cdb,
                data_out: &req.data_out,
                luns,
            };
            match precheck(op, cdb).and_then(|()| pr::allows(&shared, nexus, op.fence.access(cdb)))
            {
                Err(s) => Err(s),
                Ok(false) => Ok(Done::conflict()),
                Ok(true) => match op.exec {
                    Exec::Sync(f) => f(&ctx),
                    Exec::Async(f) => f(&ctx).await,
                },
            }
        }
    };
    match result {
        Ok(done) => Response {
            status: done.status,
            data_in: done.data,
            sense: Bytes::new(),
        },
        Err(sense) => {
            // D_SENSE may have changed while the command ran (MODE SELECT); use the
            // setting in force when the status is returned.
            let d_sense = unit.lock().mode.d_sense();
            Response::check(&sense, d_sense)
        }
    }
}

/// Checks shared by every command: a CDB long enough for the table's layout, so
/// handlers can index fields directly, and no NACA (ACA is not supported).
fn precheck(op: &Op, cdb: &[u8]) -> Result<(), Sense> {
    let len = op.usage.len();
    if cdb.len() < len {
        return Err(Sense::invalid_cdb(cdb.len(), None));
    }
    if cdb[len - 1] & 0x04 != 0 {
        return Err(Sense::invalid_cdb(len - 1, Some(2)));
    }
    Ok(())
}

/// The largest transfer one command may move (VPD 0xB0 MAXIMUM TRANSFER LENGTH); the
/// transport refuses to gather more write data than this for a single command.
pub const MAX_TRANSFER_BYTES: u32 = rw::MAX_TRANSFER_BLOCKS * BLOCK_SIZE;

/// Bytes of Data-Out the CDB describes (SPDTL), so the transport can compute write
/// residuals: the write length of WRITE/WRITE AND VERIFY/VERIFY with BYTCHK/ORWRITE/
/// WRITE ATOMIC, twice it for COMPARE AND WRITE, the
/// parameter list length of MODE SELECT and UNMAP, one block for WRITE SAME unless
/// NDOB; 0 for commands without Data-Out; None for an unknown opcode or a CDB too
/// short to tell.
pub fn data_out_length(cdb: &[u8]) -> Option<u32> {
    let op = lookup(cdb).ok()?;
    if cdb.len() < op.usage.len() {
        return None;
    }
    let bytes = |blocks: u32| blocks.saturating_mul(BLOCK_SIZE);
    match op.dout {
        DataOut::None => Some(0),
        DataOut::Blocks => Some(bytes(cdb::block_range(cdb)?.blocks)),
        DataOut::Verify => {
            let r = cdb::block_range(cdb)?;
            Some(match (r.flags >> 1) & 0x03 {
                1 => bytes(r.blocks),
                3 if r.blocks > 0 => BLOCK_SIZE,
                _ => 0,
            })
        }
        DataOut::Param(off, len) => cdb::be(cdb, off, len).map(|v| v as u32),
        // NDOB exists only in WRITE SAME(16); in (10) bit 0 is reserved.
        DataOut::WriteSame if cdb[0] == 0x93 && cdb[1] & 0x01 != 0 => Some(0),
        DataOut::WriteSame => Some(BLOCK_SIZE),
        DataOut::CompareAndWrite => Some(bytes(cdb::block_range(cdb)?.blocks.saturating_mul(2))),
    }
}

/// iSCSI/SAM LUN field (8 bytes, as a big-endian u64) ↔ LUN number; peripheral (LUN<256) and flat (256..16383) addressing.
///
/// Any other form (a bus number, logical unit or extended addressing, a second level)
/// decodes to `u64::MAX`, which no LUN map contains, so the command gets LOGICAL UNIT
/// NOT SUPPORTED instead of reaching a unit it did not name.
pub fn decode_lun(raw: u64) -> u64 {
    let [b0, b1, rest @ ..] = raw.to_be_bytes();
    if rest.iter().any(|&b| b != 0) {
        return u64::MAX;
    }
    match b0 >> 6 {
        0b00 if b0 == 0 => u64::from(b1),
        0b01 => (u64::from(b0 & 0x3F) << 8) | u64::from(b1),
        _ => u64::MAX,
    }
}

/// Inverse of [`decode_lun`]; LUNs of 16384 and above cannot be encoded and map to
/// `u64::MAX` (configuration must not create them).
pub fn encode_lun(lun: u64) -> u64 {
    match lun {
        0..=255 => lun << 48,
        256..=16383 => (0x4000 | lun) << 48,
        _ => u64::MAX,
    }
}

/// The command's name for logs ("READ(10)"), or `None` for an opcode we do not implement.
pub fn command_name(cdb: &[u8]) -> Option<&'static str> {
    lookup(cdb).ok().map(|op| op.name)
}
