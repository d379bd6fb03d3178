//! READ CAPACITY (10) and (16).

use super::cdb;
use super::sense::Sense;
use super::{Ctx, Done, HandlerResult};
use crate::backend::BLOCK_SIZE;

/// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: 512-byte physical blocks. 4 KiB
/// (exponent 3) would describe the pool better, but libiscsi's
/// GetLBAStatus.UnmapSingle then expects the extent reported for LBA i+1 to start at
/// i+8, which SBC forbids (the first descriptor must contain the starting LBA); the
/// 4 KiB preference is stated in VPD 0xB0's granularities instead.
pub(crate) const PHYSICAL_BLOCK_EXPONENT: u8 = 0;

/// OPTIMAL TRANSFER LENGTH GRANULARITY and OPTIMAL UNMAP GRANULARITY (VPD 0xB0): 4 KiB,
/// what the pool and file systems store and release without read-modify-write.
pub(crate) const OPTIMAL_GRANULARITY_BLOCKS: u32 = 8;

pub(crate) fn read_capacity10(c: &Ctx<'_>) -> HandlerResult {
    // SBC-3: an LBA with PMI clear is an error (PMI itself is obsolete in SBC-4 and
    // ignored here).
    if c.cdb[8] & 0x01 == 0 && cdb::u32_at(c.cdb, 2) != Some(0) {
        return Err(Sense::invalid_cdb(2, None));
    }
    // A volume too large for 32 bits reports FFFFFFFFh, sending the initiator to (16).
    let last = c.unit.num_blocks().saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
    Ok(Done::data(d, 8))
}

pub(crate) fn read_capacity16(c: &Ctx<'_>) -> HandlerResult {
    let alloc = cdb::u32_at(c.cdb, 10).unwrap_or(0) as usize;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&c.unit.num_blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
    // No protection; see PHYSICAL_BLOCK_EXPONENT. A thin backend releases deallocated
    // blocks and reads them back as zeros: LBPME and LBPRZ.
    d[13] = PHYSICAL_BLOCK_EXPONENT;
    if c.unit.backend().thin() {
        d[14] = 0x80 | 0x40;
    }
    Ok(Done::data(d, alloc))
}
