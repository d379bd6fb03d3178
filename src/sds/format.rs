//! The on-disk format of an SDS device: pure encoding and decoding, no I/O.
//!
//! A device (block device or pre-sized file) is laid out as:
//!
//! ```text
//! 0             4 KiB header
//! 4096          chunk table: one 32-byte entry per slot, padded to 4 KiB
//! data_offset   slot 0, slot 1, ... each CHUNK_SIZE (1 MiB) bytes;
//!               slot i at data_offset + i * CHUNK_SIZE (data_offset is 1 MiB aligned)
//! ```
//!
//! Header (integers big-endian, the rest of the 4 KiB zero):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `DRDNTSDS` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | system id |
//! | 24 | 8 | SDS id |
//! | 32 | 8 | device id |
//! | 40 | 8 | storage pool id |
//! | 48 | 8 | chunk size (1 MiB) |
//! | 56 | 8 | slot count |
//! | 64 | 8 | table offset (4096) |
//! | 72 | 8 | data offset |
//! | 80 | 4 | CRC32C of bytes 0..80 |
//!
//! A device whose first 8 bytes are not the magic is blank and may be claimed.
//!
//! Table entry (32 bytes): volume id u64, chunk index u64, state u32 (bit 0 used,
//! bit 1 thick: reserved by a thick volume, so unmapping keeps the slot; bit 2 dirty:
//! this copy, as primary, took a write its mirror did not get since it was last
//! replicated whole), 8 reserved zero bytes, CRC32C of bytes 0..28. An all-zero entry is a free slot (so a freshly
//! zeroed or sparse table is all free); any other entry must carry a valid checksum.
//! Entries are 32-byte aligned inside a sector, so one is never torn by a crash.
//!
//! The dirty bit is persistent because it outlives the SDS that holds the other copy:
//! when that SDS returns after a failure, the MDM asks the survivor which chunks it
//! wrote alone (`SdsControl::Dirty`) and copies back only those, even if the survivor
//! restarted meanwhile.

use crate::cluster::api::CHUNK_SIZE;

pub const HEADER_LEN: u64 = 4096;
pub const MAGIC: [u8; 8] = *b"DRDNTSDS";
pub const FORMAT_VERSION: u32 = 1;
pub const ENTRY_LEN: u64 = 32;

const TABLE_ALIGN: u64 = 4096;
const CRC_AT: usize = 80;
const STATE_USED: u32 = 0x1;
const STATE_THICK: u32 = 0x2;
const STATE_DIRTY: u32 = 0x4;
const STATE_KNOWN: u32 = STATE_USED | STATE_THICK | STATE_DIRTY;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the header checksum does not match")]
    HeaderChecksum,
    #[error("format version {0} is not supported by this SDS (it reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("chunk size {0} differs from this build's {CHUNK_SIZE}")]
    ChunkSize(u64),
    #[error("the header's table and data offsets are inconsistent")]
    Layout,
    #[error("{capacity} bytes hold no chunk; a device needs at least {need} bytes")]
    TooSmall { capacity: u64, need: u64 },
    #[error("the entry checksum does not match")]
    EntryChecksum,
    #[error("the entry has unknown state bits {0:#x}")]
    EntryState(u32),
}

/// Who owns a device and where its table and slots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub system_id: u64,
    pub sds_id: u64,
    pub device_id: u64,
    pub pool_id: u64,
    pub slots: u64,
    pub table_offset: u64,
    pub data_offset: u64,
}

/// The owner ids written into a new header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub system_id: u64,
    pub sds_id: u64,
    pub device_id: u64,
    pub pool_id: u64,
}

impl Header {
    /// The header for a device of `capacity` bytes: as many slots as fit after the
    /// header and their table.
    pub fn for_capacity(owner: Owner, capacity: u64) -> Result<Self, FormatError> {
        let data_offset = |slots: u64| {
            (HEADER_LEN + (slots * ENTRY_LEN).next_multiple_of(TABLE_ALIGN))
                .next_multiple_of(CHUNK_SIZE)
        };
        let mut slots = capacity / CHUNK_SIZE;
        while slots > 0 && data_offset(slots) + slots * CHUNK_SIZE > capacity {
            slots -= 1;
        }
        if slots == 0 {
            return Err(FormatError::TooSmall {
                capacity,
                need: data_offset(1) + CHUNK_SIZE,
            });
        }
        Ok(Self {
            system_id: owner.system_id,
            sds_id: owner.sds_id,
            device_id: owner.device_id,
            pool_id: owner.pool_id,
            slots,
            table_offset: HEADER_LEN,
            data_offset: data_offset(slots),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        let fields = [
            self.system_id,
            self.sds_id,
            self.device_id,
            self.pool_id,
            CHUNK_SIZE,
            self.slots,
            self.table_offset,
            self.data_offset,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes the first [`HEADER_LEN`] bytes of a device; `Ok(None)` if the device is
    /// blank (no magic).
    pub fn decode(b: &[u8]) -> Result<Option<Self>, FormatError> {
        if b.len() < CRC_AT + 4 || b[0..8] != MAGIC {
            return Ok(None);
        }
        let crc = u32::from_be_bytes(b[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..CRC_AT]) {
            return Err(FormatError::HeaderChecksum);
        }
        let version = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        let field = |i: usize| be64(&b[16 + 8 * i..]);
        let chunk_size = field(4);
        if chunk_size != CHUNK_SIZE {
            return Err(FormatError::ChunkSize(chunk_size));
        }
        let h = Self {
            system_id: field(0),
            sds_id: field(1),
            device_id: field(2),
            pool_id: field(3),
            slots: field(5),
            table_offset: field(6),
            data_offset: field(7),
        };
        let table_end = h
            .slots
            .checked_mul(ENTRY_LEN)
            .and_then(|t| t.checked_add(h.table_offset));
        let data_end = h
            .slots
            .checked_mul(CHUNK_SIZE)
            .and_then(|d| d.checked_add(h.data_offset));
        match (table_end, data_end) {
            (Some(t), Some(_)) if h.table_offset >= HEADER_LEN && t <= h.data_offset => Ok(Some(h)),
            _ => Err(FormatError::Layout),
        }
    }

    /// Bytes the table occupies (whole 4 KiB blocks).
    pub fn table_len(&self) -> u64 {
        (self.slots * ENTRY_LEN).next_multiple_of(TABLE_ALIGN)
    }

    /// Where the device's last slot ends: the capacity it must still have.
    pub fn end(&self) -> u64 {
        self.data_offset + self.slots * CHUNK_SIZE
    }

    pub fn slot_offset(&self, slot: u64) -> u64 {
        self.data_offset + slot * CHUNK_SIZE
    }

    pub fn entry_offset(&self, slot: u64) -> u64 {
        self.table_offset + slot * ENTRY_LEN
    }
}

/// One chunk table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Free,
    Used {
        volume: u64,
        chunk: u64,
        thick: bool,
        /// Written as primary without its mirror since last replicated whole.
        dirty: bool,
    },
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut b = [0u8; ENTRY_LEN as usize];
        if let Entry::Used {
            volume,
            chunk,
            thick,
            dirty,
        } = *self
        {
            let state = STATE_USED
                | if thick { STATE_THICK } else { 0 }
                | if dirty { STATE_DIRTY } else { 0 };
            b[0..8].copy_from_slice(&volume.to_be_bytes());
            b[8..16].copy_from_slice(&chunk.to_be_bytes());
            b[16..20].copy_from_slice(&state.to_be_bytes());
            let crc = crc32c::crc32c(&b[..28]);
            b[28..32].copy_from_slice(&crc.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8; ENTRY_LEN as usize]) -> Result<Self, FormatError> {
        if b.iter().all(|&x| x == 0) {
            return Ok(Entry::Free);
        }
        let crc = u32::from_be_bytes(b[28..32].try_into().expect("4 bytes"));
        if crc != crc32c::crc32c(&b[..28]) {
            return Err(FormatError::EntryChecksum);
        }
        let state = u32::from_be_bytes(b[16..20].try_into().expect("4 bytes"));
        if state & !STATE_KNOWN != 0 || state & STATE_USED == 0 {
            return Err(FormatError::EntryState(state));
        }
        Ok(Entry::Used {
            volume: be64(&b[0..]),
            chunk: be64(&b[8..]),
            thick: state & STATE_THICK != 0,
            dirty: state & STATE_DIRTY != 0,
        })
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: Owner = Owner {
        system_id: 0x1a2b,
        sds_id: 7,
        device_id: 8,
        pool_id: 9,
    };

    #[test]
    fn layout_fits_the_capacity() {
        let h = Header::for_capacity(OWNER, 64 << 20).unwrap();
        assert_eq!(h.table_offset, 4096);
        assert_eq!(h.data_offset, 1 << 20);
        assert_eq!(h.slots, 63);
        assert_eq!(h.end(), 64 << 20);
        // A large device: the table outgrows one megabyte and pushes the data back.
        let big = Header::for_capacity(OWNER, 1 << 40).unwrap();
        assert!(big.data_offset >= HEADER_LEN + big.slots * ENTRY_LEN);
        assert_eq!(big.data_offset % CHUNK_SIZE, 0);
        assert!(big.end() <= 1 << 40);
        assert!(big.end() + CHUNK_SIZE > (1 << 40) - CHUNK_SIZE);
        assert_eq!(
            Header::for_capacity(OWNER, (2 << 20) - 1),
            Err(FormatError::TooSmall {
                capacity: (2 << 20) - 1,
                need: 2 << 20
            })
        );
        assert_eq!(Header::for_capacity(OWNER, 2 << 20).unwrap().slots, 1);
    }

    #[test]
    fn header_round_trip() {
        let h = Header::for_capacity(OWNER, 64 << 20).unwrap();
        let b = h.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..8], b"DRDNTSDS");
        assert_eq!(Header::decode(&b).unwrap(), Some(h));
        assert_eq!(h.slot_offset(2), (1 << 20) + (2 << 20));
        assert_eq!(h.entry_offset(2), 4096 + 64);
    }

    #[test]
    fn blank_and_foreign_contents_have_no_header() {
        assert_eq!(Header::decode(&[0u8; 4096]).unwrap(), None);
        assert_eq!(Header::decode(&[0xEEu8; 4096]).unwrap(), None);
    }

    #[test]
    fn header_corruption_is_detected() {
        let h = Header::for_capacity(OWNER, 64 << 20).unwrap();
        let mut b = h.encode();
        b[20] ^= 1;
        assert_eq!(Header::decode(&b), Err(FormatError::HeaderChecksum));

        let reseal = |b: &mut Vec<u8>| {
            let crc = crc32c::crc32c(&b[..CRC_AT]);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        };
        let mut b = h.encode();
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        reseal(&mut b);
        assert_eq!(Header::decode(&b), Err(FormatError::Version(2)));

        let mut b = h.encode();
        b[48..56].copy_from_slice(&(4u64 << 20).to_be_bytes());
        reseal(&mut b);
        assert_eq!(Header::decode(&b), Err(FormatError::ChunkSize(4 << 20)));

        let mut b = h.encode();
        b[56..64].copy_from_slice(&u64::MAX.to_be_bytes());
        reseal(&mut b);
        assert_eq!(Header::decode(&b), Err(FormatError::Layout));
    }

    #[test]
    fn entry_round_trip_and_free() {
        for e in [
            Entry::Free,
            Entry::Used {
                volume: 5,
                chunk: 1 << 40,
                thick: false,
                dirty: false,
            },
            Entry::Used {
                volume: u64::MAX,
                chunk: 0,
                thick: true,
                dirty: false,
            },
            Entry::Used {
                volume: 3,
                chunk: 4,
                thick: true,
                dirty: true,
            },
        ] {
            assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        }
        assert_eq!(Entry::Free.encode(), [0u8; 32]);
    }

    #[test]
    fn entry_corruption_is_detected() {
        let e = Entry::Used {
            volume: 5,
            chunk: 6,
            thick: false,
            dirty: true,
        };
        let mut b = e.encode();
        b[3] ^= 0x40;
        assert_eq!(Entry::decode(&b), Err(FormatError::EntryChecksum));
        let mut b = [0u8; 32];
        b[31] = 1;
        assert_eq!(Entry::decode(&b), Err(FormatError::EntryChecksum));
        let mut b = e.encode();
        b[16..20].copy_from_slice(&0x8u32.to_be_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(Entry::decode(&b), Err(FormatError::EntryState(8)));
    }
}
