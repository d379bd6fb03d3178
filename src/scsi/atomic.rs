//! COMPARE AND WRITE, ORWRITE(16) and WRITE ATOMIC(16): the read-modify-writes the
//! backend performs atomically ([`crate::backend::AtomicOp`]).
//!
//! A pool volume runs them at the chunk's primary SDS under a lock, which orders them
//! against every gateway's writes but covers one 1 MiB chunk (2048 blocks) only. The
//! limits in the Block Limits page keep every COMPARE AND WRITE and WRITE ATOMIC inside
//! one chunk; ORWRITE has no such limit and is atomic per chunk.

use super::rw::{checked, io_sense};
use super::sense::{asc, Sense, SenseKey};
use super::{BoxFut, Ctx, Done};
use crate::backend::{AtomicOp, AtomicOutcome, SgList, BLOCK_SIZE};

const BS: usize = BLOCK_SIZE as usize;

/// MAXIMUM COMPARE AND WRITE LENGTH. One block: SBC has no alignment for COMPARE AND
/// WRITE, so any longer limit admits a range that starts in one chunk and ends in the
/// next, whose primaries (usually two SDS) no single lock covers.
pub(crate) const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 1;

/// ATOMIC ALIGNMENT and MAXIMUM ATOMIC TRANSFER LENGTH, equal and dividing the 2048
/// blocks of a chunk: an aligned range no longer than the alignment never leaves the
/// aligned 128 KiB stretch it starts in, hence never leaves its chunk.
pub(crate) const ATOMIC_ALIGNMENT: u32 = 256;
pub(crate) const MAX_ATOMIC_BLOCKS: u32 = ATOMIC_ALIGNMENT;
/// ATOMIC TRANSFER LENGTH GRANULARITY: 4 KiB, the optimal transfer granularity.
pub(crate) const ATOMIC_GRANULARITY: u32 = 8;

// The alignment argument above only holds if these divide the chunk.
const _: () = assert!(((1 << 20) / BLOCK_SIZE).is_multiple_of(ATOMIC_ALIGNMENT));
const _: () = assert!(ATOMIC_ALIGNMENT.is_multiple_of(ATOMIC_GRANULARITY));

fn fua(c: &Ctx<'_>, flags: u8) -> bool {
    flags & 0x08 != 0 || c.unit.write_through()
}

fn outcome(r: AtomicOutcome) -> Result<Done, Sense> {
    match r {
        AtomicOutcome::Done => Ok(Done::good()),
        // INFORMATION: the offset of the first differing byte from the start of the
        // Data-Out buffer, which begins with the compare data (SBC-3 5.2).
        AtomicOutcome::Miscompare { offset } => {
            Err(Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY).with_info(offset))
        }
    }
}

/// COMPARE AND WRITE: the Data-Out holds the compare blocks then the write blocks,
/// exactly twice the NUMBER OF LOGICAL BLOCKS.
pub(crate) fn compare_and_write<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        if r.blocks > u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
            return Err(Sense::invalid_cdb(r.len_offset, None));
        }
        c.unit.check_writable()?;
        let len = r.blocks as usize * BS;
        if c.data_out.len() != 2 * len {
            // Splitting any other amount into compare and write data would compare
            // against the wrong bytes (this includes Data-Out with no blocks, e.g. a
            // NUMBER OF LOGICAL BLOCKS that wrapped to 0 in its one byte).
            return Err(Sense::invalid_cdb(r.len_offset, None));
        }
        if r.blocks == 0 {
            return Ok(Done::good());
        }
        let op = AtomicOp::CompareAndWrite {
            compare: c.data_out.prefix(len),
            write: c.data_out.slice(len, len),
        };
        let done = c
            .unit
            .backend()
            .atomic(r.lba, op, fua(c, r.flags))
            .await
            .map_err(|e| io_sense(e, true))?;
        outcome(done)
    })
}

/// ORWRITE(16) without protection information: the blocks become their current bytes
/// ORed with the Data-Out. A short Data-Out is padded with zeros, which leave the rest
/// unchanged.
pub(crate) fn orwrite<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        c.unit.check_writable()?;
        if r.blocks == 0 {
            return Ok(Done::good());
        }
        let want = r.blocks as usize * BS;
        let mut data = c.data_out.prefix(want);
        if data.len() < want {
            data.push(vec![0u8; want - data.len()].into());
        }
        let done = c
            .unit
            .backend()
            .atomic(r.lba, AtomicOp::Or(data), fua(c, r.flags))
            .await
            .map_err(|e| io_sense(e, true))?;
        outcome(done)
    })
}

/// WRITE ATOMIC(16): all of the blocks or none, within the Block Limits page's
/// alignment, granularity and maximum. The range is checked first, so a request past
/// the end is LBA OUT OF RANGE whatever its alignment.
pub(crate) fn write_atomic<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        if r.blocks > MAX_ATOMIC_BLOCKS || !r.blocks.is_multiple_of(ATOMIC_GRANULARITY) {
            return Err(Sense::invalid_cdb(r.len_offset, None));
        }
        if !r.lba.is_multiple_of(u64::from(ATOMIC_ALIGNMENT)) {
            return Err(Sense::invalid_cdb(2, None));
        }
        c.unit.check_writable()?;
        if r.blocks == 0 {
            return Ok(Done::good());
        }
        let len = r.blocks as usize * BS;
        if c.data_out.len() < len {
            // Atomic means all of it: a partial transfer writes nothing.
            return Err(Sense::invalid_cdb(r.len_offset, None));
        }
        let data: SgList = c.data_out.prefix(len);
        let done = c
            .unit
            .backend()
            .atomic(r.lba, AtomicOp::Write(data), fua(c, r.flags))
            .await
            .map_err(|e| io_sense(e, true))?;
        outcome(done)
    })
}
