//! Pure big-endian field readers for CDBs. Every reader returns `None` instead of
//! panicking on a CDB too short for the field, so no CDB can crash the engine.

/// Reads `len` (1..=8) bytes at `off` as a big-endian integer.
pub fn be(cdb: &[u8], off: usize, len: usize) -> Option<u64> {
    let bytes = cdb.get(off..off.checked_add(len)?)?;
    if len > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

pub fn u16_at(cdb: &[u8], off: usize) -> Option<u16> {
    be(cdb, off, 2).map(|v| v as u16)
}

pub fn u32_at(cdb: &[u8], off: usize) -> Option<u32> {
    be(cdb, off, 4).map(|v| v as u32)
}

/// The block-addressing fields shared by READ/WRITE/VERIFY/WRITE AND VERIFY/PRE-FETCH/
/// SYNCHRONIZE CACHE in their 6, 10, 12 and 16 byte forms, ORWRITE(16), COMPARE AND
/// WRITE and WRITE ATOMIC(16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub lba: u64,
    pub blocks: u32,
    /// Byte 1 (protect, DPO, FUA, BYTCHK, IMMED live here); 0 for 6-byte CDBs.
    pub flags: u8,
    /// Offset of the transfer length field, for sense field pointers.
    pub len_offset: usize,
}

/// Decodes the LBA and transfer length from the CDB's group code (SPC-4 4.2.5.1).
pub fn block_range(cdb: &[u8]) -> Option<BlockRange> {
    let op = *cdb.first()?;
    let (lba, blocks, flags, len_offset) = match op >> 5 {
        0 => {
            let lba = be(cdb, 1, 3)? & 0x1F_FFFF;
            // A 6-byte transfer length of 0 means 256 blocks (SBC-3 5.16, 5.29).
            let n = match *cdb.get(4)? {
                0 => 256,
                n => u32::from(n),
            };
            (lba, n, 0, 4)
        }
        1 | 2 => (be(cdb, 2, 4)?, u32::from(u16_at(cdb, 7)?), *cdb.get(1)?, 7),
        5 => (be(cdb, 2, 4)?, u32_at(cdb, 6)?, *cdb.get(1)?, 6),
        // COMPARE AND WRITE: a one-byte NUMBER OF LOGICAL BLOCKS in byte 13.
        _ if op == 0x89 => (be(cdb, 2, 8)?, u32::from(*cdb.get(13)?), *cdb.get(1)?, 13),
        // WRITE ATOMIC(16): a two-byte TRANSFER LENGTH in bytes 12-13.
        _ if op == 0x9C => (
            be(cdb, 2, 8)?,
            u32::from(u16_at(cdb, 12)?),
            *cdb.get(1)?,
            12,
        ),
        4 => (be(cdb, 2, 8)?, u32_at(cdb, 10)?, *cdb.get(1)?, 10),
        _ => return None,
    };
    Some(BlockRange {
        lba,
        blocks,
        flags,
        len_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_reject_short_cdbs() {
        assert_eq!(be(&[1, 2], 0, 2), Some(0x0102));
        assert_eq!(be(&[1, 2], 1, 2), None);
        assert_eq!(be(&[1, 2], usize::MAX, 2), None);
        assert_eq!(u32_at(&[0, 0, 0, 1], 0), Some(1));
        assert_eq!(u16_at(&[0xAB], 0), None);
    }

    #[test]
    fn six_byte_zero_length_is_256() {
        let r = block_range(&[0x08, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap();
        assert_eq!(r.lba, 0x1F_FFFF);
        assert_eq!(r.blocks, 256);
    }

    #[test]
    fn ten_twelve_sixteen() {
        let r = block_range(&[0x28, 0x18, 0, 0, 1, 0, 0, 0, 2, 0]).unwrap();
        assert_eq!((r.lba, r.blocks, r.flags), (256, 2, 0x18));
        let r = block_range(&[0xA8, 0, 0, 0, 0, 5, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!((r.lba, r.blocks), (5, 256));
        let mut c = [0u8; 16];
        c[0] = 0x88;
        c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        c[13] = 7;
        let r = block_range(&c).unwrap();
        assert_eq!((r.lba, r.blocks), (u64::MAX, 7));
        assert_eq!(block_range(&c[..12]), None);
        c[0] = 0x89;
        c[12] = 9;
        let r = block_range(&c).unwrap();
        assert_eq!((r.blocks, r.len_offset), (7, 13));
        c[0] = 0x9C;
        let r = block_range(&c).unwrap();
        assert_eq!((r.lba, r.blocks, r.len_offset), (u64::MAX, 0x0907, 12));
        assert_eq!(block_range(&[0xC0; 16]), None);
    }
}
