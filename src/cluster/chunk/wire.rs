//! The chunk protocol's binary headers: pure encoding and validation, no I/O.
//!
//! Every message is a fixed header followed by `payload_len` bytes of payload. All
//! integers are big-endian.
//!
//! Request (72 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `0x4451` ("DQ") |
//! | 2 | 1 | op: 1 Read, 2 Write, 3 WriteZeroes, 4 Flush, 5 Status, 6 Control, 7 Atomic, 8 Copy, 9 Replicate, 10 StatusMany, 11 Attach |
//! | 3 | 1 | flags: 0x01 FUA (Write, WriteZeroes, Atomic, Copy), 0x02 UNMAP (WriteZeroes, Copy), 0x04 SINGLE_COPY (Write, WriteZeroes, Atomic, Copy; never with FORWARDED): the chunk's pool keeps one copy (with a mirror: the copy a move is filling), 0x08 ARENA (Read): put the data in the connection's shared memory, bits 0x30 the Atomic kind: 0x10 compare-and-write, 0x20 or-write, 0x30 atomic write, 0x40 FORWARDED (Write, WriteZeroes; never with a mirror): sent by a primary SDS for its mirror copy, or by Replicate |
//! | 4 | 4 | payload_len (Write, Atomic or-write and write: = length; Atomic compare-and-write: 2 × length, compare data then write data; Control: JSON; Copy: 64; StatusMany: 16 × length; others 0) |
//! | 8 | 8 | tag, echoed in the response |
//! | 16 | 8 | layout epoch |
//! | 24 | 8 | volume id |
//! | 32 | 8 | chunk index |
//! | 40 | 4 | offset inside the chunk |
//! | 44 | 4 | length |
//! | 48 | 8 | device id on the receiving SDS |
//! | 56 | 8 | mirror SDS id (0: no mirror) |
//! | 64 | 8 | mirror device id; in a Read with ARENA: the byte offset in the shared memory |
//!
//! Copy (op 8) is sent to the primary SDS of the *destination* chunk, whose copy the
//! header names like a Write's (with the secondary as mirror); its 64-byte payload
//! names the source range ([`CopySource`]):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | source volume id |
//! | 8 | 8 | source chunk index |
//! | 16 | 4 | offset inside the source chunk (the length is the header's) |
//! | 20 | 4 | reserved, 0 |
//! | 24 | 8 | source layout epoch |
//! | 32 | 8 | SDS id of the source copy to read first (the primary) |
//! | 40 | 8 | its device id |
//! | 48 | 8 | SDS id of the other source copy, read if the first fails (0: none) |
//! | 56 | 8 | its device id |
//!
//! The destination SDS reads the source range (from its own device when it holds
//! that copy, else from the peer SDS over this protocol), then stores it exactly like
//! a mirrored Write: locally and on the mirror, answering once both are written. A
//! source range that was never written is not read: it becomes a WriteZeroes (with
//! the request's UNMAP flag, so a thin destination stays unallocated). A local
//! source read holds the source chunk's lock shared, like a Read; the destination
//! write then holds the destination chunk's, like a Write; never both at once.
//!
//! Response (24 bytes): magic `0x4452` ("DR") u16, status u8 (0 Ok, 1 StaleEpoch, 2
//! NoSpace, 3 Io, 4 Refused, 5 Mirror, 6 Protocol, 7 Fenced: the SDS holds no lease
//! from the MDM and serves no data; Flush and Control are always served), flags u8 (0x01 MAPPED in
//! a Status reply, 0x02 MISCOMPARE in an Atomic reply, 0x04 IN_ARENA in a Read reply:
//! the data is in the shared memory where the request asked, and the reply carries
//! none), payload_len u32, tag u64, aux u64. The payload is the data of a Read, the JSON `Result<SdsControlReply, String>`
//! of a Control, or UTF-8 error text. `aux` is the SDS's current epoch in a StaleEpoch
//! reply, the failed SDS in a Mirror reply, the run length in bytes in a Status reply
//! and the offset of the first differing byte in a MISCOMPARE reply.
//!
//! FORWARDED tells the receiving SDS the request is a copy its primary sends (a mirror
//! write, or a piece of a Replicate): it takes no chunk lock (the sender holds one) and
//! never marks the chunk dirty. A Write, WriteZeroes, Atomic or Copy with neither a
//! mirror nor FORWARDED is a *degraded* primary write (the layout gives the chunk no
//! secondary): the SDS sets the chunk's persistent dirty bit before acknowledging it,
//! as it does when a forward to the mirror fails. With SINGLE_COPY it is not degraded:
//! the chunk's pool keeps one copy, no copy can come back to catch up, and nothing is
//! marked, not even when the forward to a move's target (its mirror) fails: that
//! target is dropped from the layout or the write retried to it.
//!
//! Replicate (9) is sent by the MDM to the SDS holding a chunk copy, for rebuild,
//! backward rebuild and rebalance: the header's chunk reference names that copy (volume,
//! chunk, device, epoch), the mirror fields the target (SDS, device), offset 0 and
//! length `CHUNK_SIZE`, no payload and no flags. Under the chunk's exclusive lock the
//! SDS checks its lease, admits the epoch (raising its mark), and walks the copy's
//! allocation: every allocated run is sent to the target as Writes of at most 256 KiB
//! with FORWARDED, the same epoch and no mirror; every never-written run as a
//! WriteZeroes with UNMAP and FORWARDED (a chunk not allocated at all is one WriteZeroes
//! over the whole chunk, which frees a thin target's slot); the last request carries
//! FUA. It then clears the copy's dirty bit and answers Ok with `aux` = bytes of data
//! sent. A failure at the target answers Mirror (StaleEpoch passes through) and leaves
//! the dirty bit set. The target treats the pieces like forwarded mirror writes (no
//! lock, a slot allocated on first write).
//!
//! StatusMany (10) asks for the allocation of many chunk copies of one volume held on
//! the receiving SDS at once, each from its offset 0: what a gateway mapping a long
//! stretch of a thin volume (GET LBA STATUS) would otherwise ask chunk by chunk. The
//! header names the volume and its layout epoch; chunk index, offset, device and
//! mirror are 0; `length` is the number of entries (1 to [`MAX_STATUS_ENTRIES`]). The
//! payload is `length` entries of chunk index u64 and device id u64. The SDS checks
//! its lease and the epoch once; an unknown device fails the whole request. An Ok
//! reply carries one 8-byte entry per request entry, in order: flags u8 (0x01 MAPPED),
//! three bytes 0, and the run length in bytes u32, exactly as a Status at offset 0
//! would answer.
//!
//! Attach (11) is the first request on a local connection (the SDS's abstract Unix
//! socket, see `local`) and carries a sealed memfd as SCM_RIGHTS: shared memory the
//! client lends for read data. `length` is its size (a multiple of 4096, at most
//! 1 GiB); every other field is 0 and there is no payload. The SDS maps it and
//! answers Ok, or refuses (no descriptor, not sealed against shrinking, another
//! size): the client then uses TCP. Over TCP, or later on a connection, Attach is
//! refused. A Read with ARENA names a range of that memory in bytes 64..72; the SDS
//! writes the data there before it answers, with IN_ARENA and no payload, or answers
//! with the data as usual (a client must accept both). It never touches the range
//! after answering.
//!
//! Atomic (7) is a read-modify-write the receiving primary performs under an exclusive
//! lock on the chunk (ordinary writes that name a mirror, and reads, hold the same lock
//! shared): compare-and-write writes the second half of the payload only if the range
//! holds the first half, else answers Ok with MISCOMPARE and writes nothing; or-write
//! writes the range ORed with the payload; atomic write writes the payload. The
//! resulting bytes go to the mirror as an ordinary Write (same epoch, same FUA) before
//! the lock is released and the reply sent.
//!
//! A header is validated once, here, by both ends: the receiver before it reads a
//! payload, the sender before it puts a nonsensical request on the wire.

use super::arena::{MAX_ARENA_LEN, PAGE};
use super::{ChunkError, ChunkRef, Mirror, Secondary};
use crate::cluster::api::CHUNK_SIZE;

pub const REQUEST_MAGIC: u16 = 0x4451;
pub const RESPONSE_MAGIC: u16 = 0x4452;
pub const REQUEST_HEADER_LEN: usize = 72;
pub const RESPONSE_HEADER_LEN: usize = 24;
/// Control messages carry inventories of large SDS; generous but bounded so a broken
/// peer cannot make us allocate without limit.
pub const MAX_CONTROL_PAYLOAD: u32 = 64 << 20;

/// Request flag: make the data durable before replying.
pub const FLAG_FUA: u8 = 0x01;
/// Request flag (WriteZeroes): the range may be deallocated.
pub const FLAG_UNMAP: u8 = 0x02;
/// Request flag (Write, WriteZeroes, Atomic, Copy): the chunk's pool keeps one copy, so
/// the write is not degraded, nor marked if its forward to a move's target fails; see
/// the module doc.
pub const FLAG_SINGLE_COPY: u8 = 0x04;
/// Request flag (Write, WriteZeroes): a copy sent by the chunk's primary (a mirror write
/// or a Replicate piece), not a write of the primary's own; see the module doc.
pub const FLAG_FORWARDED: u8 = 0x40;
/// Request flags (Atomic): which read-modify-write; exactly one of the three values.
pub const ATOMIC_KIND_MASK: u8 = 0x30;
pub const ATOMIC_COMPARE_AND_WRITE: u8 = 0x10;
pub const ATOMIC_OR: u8 = 0x20;
pub const ATOMIC_WRITE: u8 = 0x30;
/// Request flag (Read): put the data in the connection's shared memory at the offset
/// the request names; see the module doc.
pub const FLAG_ARENA: u8 = 0x08;
/// Response flag (Status): the bytes at the offset are allocated.
pub const FLAG_MAPPED: u8 = 0x01;
/// Response flag (Read): the data is in the shared memory, not in the reply.
pub const FLAG_IN_ARENA: u8 = 0x04;
/// Most entries one StatusMany may carry.
pub const MAX_STATUS_ENTRIES: u32 = 1024;
/// Bytes of one StatusMany request entry (chunk index, device id) and reply entry.
const STATUS_ENTRY_LEN: usize = 16;
const STATUS_RUN_LEN: usize = 8;
/// Response flag (Atomic): the compare data differed, nothing was written; `aux` is the
/// offset of the first differing byte within the range.
pub const FLAG_MISCOMPARE: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {found:#06x} (expected {expected:#06x}); the peer does not speak the chunk protocol or the stream is out of step")]
    BadMagic { found: u16, expected: u16 },
    #[error("unknown op {0}; the peer runs an incompatible version")]
    UnknownOp(u8),
    #[error("unknown status {0}; the peer runs an incompatible version")]
    UnknownStatus(u8),
    #[error("flags {flags:#04x} are not valid for {op:?}")]
    BadFlags { op: Op, flags: u8 },
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge { len: u32, max: u32 },
    #[error("{op:?} carries a {len}-byte payload; expected {expected}")]
    PayloadMismatch { op: Op, len: u32, expected: u32 },
    #[error("range {offset}+{length} lies outside the {CHUNK_SIZE}-byte chunk")]
    OutsideChunk { offset: u32, length: u32 },
    #[error("mirror SDS is set but the op is {0:?}; only writes are mirrored")]
    MirrorNotWrite(Op),
    #[error("Atomic request without a kind in its flags ({0:#04x})")]
    NoAtomicKind(u8),
    #[error("copy source {0}")]
    BadCopySource(&'static str),
    #[error(
        "Replicate must name a mirror and cover the whole chunk (offset 0, length {CHUNK_SIZE})"
    )]
    BadReplicate,
    #[error(
        "StatusMany must start at offset 0 and carry 1 to {MAX_STATUS_ENTRIES} entries, not {0}"
    )]
    BadStatusMany(u32),
    #[error("Attach must name a memory size that is a multiple of 4096 up to {MAX_ARENA_LEN}, not {0}, and nothing else")]
    BadAttach(u32),
    #[error("ARENA flag and arena offset must come together, on a Read")]
    BadArena,
    #[error("StatusMany reply of {len} bytes for {entries} entries")]
    BadStatusRuns { len: usize, entries: usize },
}

/// StatusMany's request payload: (chunk index, device id) per entry.
pub fn encode_status_entries(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(entries.len() * STATUS_ENTRY_LEN);
    for (chunk, device) in entries {
        b.extend_from_slice(&chunk.to_be_bytes());
        b.extend_from_slice(&device.to_be_bytes());
    }
    b
}

/// The entries of a StatusMany payload whose length [`RequestHeader::check`] accepted.
pub fn decode_status_entries(b: &[u8]) -> Vec<(u64, u64)> {
    b.chunks_exact(STATUS_ENTRY_LEN)
        .map(|e| (be64(e, 0), be64(e, 8)))
        .collect()
}

/// StatusMany's reply payload: (mapped, run in bytes) per entry.
pub fn encode_status_runs(runs: &[(bool, u32)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(runs.len() * STATUS_RUN_LEN);
    for (mapped, run) in runs {
        b.extend_from_slice(&[if *mapped { FLAG_MAPPED } else { 0 }, 0, 0, 0]);
        b.extend_from_slice(&run.to_be_bytes());
    }
    b
}

/// The runs of a StatusMany reply that asked about `entries` chunks.
pub fn decode_status_runs(b: &[u8], entries: usize) -> Result<Vec<(bool, u32)>, WireError> {
    if b.len() != entries * STATUS_RUN_LEN {
        return Err(WireError::BadStatusRuns {
            len: b.len(),
            entries,
        });
    }
    Ok(b.chunks_exact(STATUS_RUN_LEN)
        .map(|e| {
            (
                e[0] & FLAG_MAPPED != 0,
                u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 1,
    Write = 2,
    WriteZeroes = 3,
    Flush = 4,
    Status = 5,
    Control = 6,
    Atomic = 7,
    Copy = 8,
    /// Rebuild, backward rebuild and rebalance (sent by the MDM to a chunk's primary):
    /// copy the whole chunk copy named by the header to the mirror, under the chunk's
    /// exclusive lock, so the new copy is whole before any later write reaches it.
    Replicate = 9,
    /// The allocation of many chunk copies of one volume at once; see the module doc.
    StatusMany = 10,
    /// Shared memory for reads, on a local connection; see the module doc.
    Attach = 11,
}

/// What an [`Op::Atomic`] request does, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicKind {
    CompareAndWrite,
    Or,
    Write,
}

impl AtomicKind {
    pub fn flags(self) -> u8 {
        match self {
            AtomicKind::CompareAndWrite => ATOMIC_COMPARE_AND_WRITE,
            AtomicKind::Or => ATOMIC_OR,
            AtomicKind::Write => ATOMIC_WRITE,
        }
    }
}

impl Op {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::WriteZeroes,
            4 => Op::Flush,
            5 => Op::Status,
            6 => Op::Control,
            7 => Op::Atomic,
            8 => Op::Copy,
            9 => Op::Replicate,
            10 => Op::StatusMany,
            11 => Op::Attach,
            _ => return Err(WireError::UnknownOp(v)),
        })
    }

    fn allowed_flags(self) -> u8 {
        match self {
            Op::Write => FLAG_FUA | FLAG_FORWARDED | FLAG_SINGLE_COPY,
            Op::WriteZeroes => FLAG_FUA | FLAG_UNMAP | FLAG_FORWARDED | FLAG_SINGLE_COPY,
            Op::Copy => FLAG_FUA | FLAG_UNMAP | FLAG_SINGLE_COPY,
            Op::Atomic => FLAG_FUA | ATOMIC_KIND_MASK | FLAG_SINGLE_COPY,
            Op::Read => FLAG_ARENA,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub op: Op,
    pub flags: u8,
    pub payload_len: u32,
    pub tag: u64,
    /// Volume, chunk, device and epoch; all zero for Flush and Control.
    pub at: ChunkRef,
    pub offset: u32,
    pub length: u32,
    pub mirror: Option<Mirror>,
    /// Where in the connection's shared memory a Read's data goes (with FLAG_ARENA).
    pub arena: Option<u64>,
}

impl RequestHeader {
    /// A header for `op` with every other field zero.
    pub fn new(op: Op, tag: u64) -> Self {
        Self {
            op,
            flags: 0,
            payload_len: 0,
            tag,
            at: ChunkRef {
                volume: 0,
                chunk: 0,
                device: 0,
                epoch: 0,
            },
            offset: 0,
            length: 0,
            mirror: None,
            arena: None,
        }
    }

    pub fn fua(&self) -> bool {
        self.flags & FLAG_FUA != 0
    }

    pub fn unmap(&self) -> bool {
        self.flags & FLAG_UNMAP != 0
    }

    /// Sent by the chunk's primary for its mirror copy (or by Replicate).
    pub fn forwarded(&self) -> bool {
        self.flags & FLAG_FORWARDED != 0
    }

    /// A primary write to a chunk whose pool keeps one copy.
    pub fn single_copy(&self) -> bool {
        self.flags & FLAG_SINGLE_COPY != 0
    }

    /// Names the mirror, or says why there is none.
    pub fn set_secondary(&mut self, secondary: Secondary) {
        self.mirror = secondary.mirror();
        if matches!(
            secondary,
            Secondary::SingleCopy | Secondary::SingleCopyMoving(_)
        ) {
            self.flags |= FLAG_SINGLE_COPY;
        }
    }

    /// The kind of an Atomic request; `None` for other ops (and for an Atomic header
    /// that [`RequestHeader::check`] refuses).
    pub fn atomic_kind(&self) -> Option<AtomicKind> {
        if self.op != Op::Atomic {
            return None;
        }
        match self.flags & ATOMIC_KIND_MASK {
            ATOMIC_COMPARE_AND_WRITE => Some(AtomicKind::CompareAndWrite),
            ATOMIC_OR => Some(AtomicKind::Or),
            ATOMIC_WRITE => Some(AtomicKind::Write),
            _ => None,
        }
    }

    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut b = [0u8; REQUEST_HEADER_LEN];
        let mirror = self.mirror.unwrap_or(Mirror { sds: 0, device: 0 });
        b[0..2].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[2] = self.op as u8;
        b[3] = self.flags;
        b[4..8].copy_from_slice(&self.payload_len.to_be_bytes());
        b[8..16].copy_from_slice(&self.tag.to_be_bytes());
        b[16..24].copy_from_slice(&self.at.epoch.to_be_bytes());
        b[24..32].copy_from_slice(&self.at.volume.to_be_bytes());
        b[32..40].copy_from_slice(&self.at.chunk.to_be_bytes());
        b[40..44].copy_from_slice(&self.offset.to_be_bytes());
        b[44..48].copy_from_slice(&self.length.to_be_bytes());
        b[48..56].copy_from_slice(&self.at.device.to_be_bytes());
        b[56..64].copy_from_slice(&mirror.sds.to_be_bytes());
        let last = self.arena.unwrap_or(mirror.device);
        b[64..72].copy_from_slice(&last.to_be_bytes());
        b
    }

    /// Decodes and validates a request header.
    pub fn decode(b: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, WireError> {
        request_frame(b)?;
        let mirror_sds = be64(b, 56);
        let h = Self {
            op: Op::from_u8(b[2])?,
            flags: b[3],
            payload_len: be32(b, 4),
            tag: be64(b, 8),
            at: ChunkRef {
                epoch: be64(b, 16),
                volume: be64(b, 24),
                chunk: be64(b, 32),
                device: be64(b, 48),
            },
            offset: be32(b, 40),
            length: be32(b, 44),
            mirror: (mirror_sds != 0).then(|| Mirror {
                sds: mirror_sds,
                device: be64(b, 64),
            }),
            arena: (b[2] == Op::Read as u8 && b[3] & FLAG_ARENA != 0).then(|| be64(b, 64)),
        };
        h.check()?;
        Ok(h)
    }

    /// Whether the header makes sense: flags allowed for the op, the range inside one
    /// chunk, the payload length the op implies.
    pub fn check(&self) -> Result<(), WireError> {
        let op = self.op;
        if self.flags & !op.allowed_flags() != 0 {
            return Err(WireError::BadFlags {
                op,
                flags: self.flags,
            });
        }
        if self.arena.is_some() != (self.flags & FLAG_ARENA != 0) {
            return Err(WireError::BadArena);
        }
        if op == Op::Atomic && self.atomic_kind().is_none() {
            return Err(WireError::NoAtomicKind(self.flags));
        }
        // A forwarded copy is the last hop: it is never forwarded again, and is no
        // single copy's own write.
        if self.forwarded() && (self.mirror.is_some() || self.single_copy()) {
            return Err(WireError::BadFlags {
                op,
                flags: self.flags,
            });
        }
        if self.mirror.is_some()
            && !matches!(
                op,
                Op::Write | Op::WriteZeroes | Op::Atomic | Op::Copy | Op::Replicate
            )
        {
            return Err(WireError::MirrorNotWrite(op));
        }
        if op == Op::Replicate
            && (self.mirror.is_none() || self.offset != 0 || self.length as u64 != CHUNK_SIZE)
        {
            return Err(WireError::BadReplicate);
        }
        let outside = || WireError::OutsideChunk {
            offset: self.offset,
            length: self.length,
        };
        match op {
            Op::Read | Op::Write | Op::WriteZeroes | Op::Atomic | Op::Copy | Op::Replicate => {
                if self.offset as u64 + self.length as u64 > CHUNK_SIZE {
                    return Err(outside());
                }
            }
            Op::Status => {
                if self.offset as u64 >= CHUNK_SIZE {
                    return Err(outside());
                }
            }
            Op::StatusMany => {
                if self.offset != 0 || self.length == 0 || self.length > MAX_STATUS_ENTRIES {
                    return Err(WireError::BadStatusMany(self.length));
                }
            }
            Op::Attach => {
                let len = self.length as u64;
                if self.offset != 0
                    || len == 0
                    || !len.is_multiple_of(PAGE as u64)
                    || len > MAX_ARENA_LEN
                    || self.at != RequestHeader::new(op, 0).at
                {
                    return Err(WireError::BadAttach(self.length));
                }
            }
            Op::Flush | Op::Control => {}
        }
        let expected = match op {
            Op::Write => self.length,
            // At most 2 MiB: the range lies inside one chunk.
            Op::Atomic if self.atomic_kind() == Some(AtomicKind::CompareAndWrite) => {
                self.length * 2
            }
            Op::Atomic => self.length,
            Op::Copy => COPY_SOURCE_LEN as u32,
            Op::StatusMany => self.length * STATUS_ENTRY_LEN as u32,
            Op::Control => {
                if self.payload_len > MAX_CONTROL_PAYLOAD {
                    return Err(WireError::PayloadTooLarge {
                        len: self.payload_len,
                        max: MAX_CONTROL_PAYLOAD,
                    });
                }
                return Ok(());
            }
            _ => 0,
        };
        if self.payload_len != expected {
            return Err(WireError::PayloadMismatch {
                op,
                len: self.payload_len,
                expected,
            });
        }
        Ok(())
    }
}

/// The tag and payload length of a request whose magic and payload size are sane, even
/// if the rest of it is not: enough for a receiver to skip the payload and answer the
/// tag with an error instead of dropping the connection.
pub fn request_frame(b: &[u8; REQUEST_HEADER_LEN]) -> Result<(u64, u32), WireError> {
    check_magic(b, REQUEST_MAGIC)?;
    let len = be32(b, 4);
    if len > MAX_CONTROL_PAYLOAD {
        return Err(WireError::PayloadTooLarge {
            len,
            max: MAX_CONTROL_PAYLOAD,
        });
    }
    Ok((be64(b, 8), len))
}

/// Length of a Copy request's payload.
pub const COPY_SOURCE_LEN: usize = 64;

/// One copy of a Copy request's source chunk: the SDS holding it and its device there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCopy {
    pub sds: u64,
    pub device: u64,
}

/// The payload of a Copy request: where the data comes from. The length is the
/// request header's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySource {
    pub volume: u64,
    pub chunk: u64,
    pub epoch: u64,
    pub offset: u32,
    /// The copy to read first, then the other one (if any) should that fail.
    pub copies: [Option<SourceCopy>; 2],
}

impl CopySource {
    pub fn encode(&self) -> [u8; COPY_SOURCE_LEN] {
        let mut b = [0u8; COPY_SOURCE_LEN];
        let copy = |i: usize| self.copies[i].unwrap_or(SourceCopy { sds: 0, device: 0 });
        b[0..8].copy_from_slice(&self.volume.to_be_bytes());
        b[8..16].copy_from_slice(&self.chunk.to_be_bytes());
        b[16..20].copy_from_slice(&self.offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_be_bytes());
        b[32..40].copy_from_slice(&copy(0).sds.to_be_bytes());
        b[40..48].copy_from_slice(&copy(0).device.to_be_bytes());
        b[48..56].copy_from_slice(&copy(1).sds.to_be_bytes());
        b[56..64].copy_from_slice(&copy(1).device.to_be_bytes());
        b
    }

    /// Decodes and checks a Copy payload against the `length` its header carries.
    pub fn decode(b: &[u8], length: u32) -> Result<Self, WireError> {
        if b.len() != COPY_SOURCE_LEN {
            return Err(WireError::BadCopySource("payload has the wrong length"));
        }
        let copy = |at: usize| {
            let sds = be64(b, at);
            (sds != 0).then(|| SourceCopy {
                sds,
                device: be64(b, at + 8),
            })
        };
        let s = Self {
            volume: be64(b, 0),
            chunk: be64(b, 8),
            offset: be32(b, 16),
            epoch: be64(b, 24),
            copies: [copy(32), copy(48)],
        };
        if be32(b, 20) != 0 {
            return Err(WireError::BadCopySource("reserved bytes are not zero"));
        }
        if s.copies[0].is_none() {
            return Err(WireError::BadCopySource("names no SDS to read from"));
        }
        if s.offset as u64 + length as u64 > CHUNK_SIZE {
            return Err(WireError::BadCopySource("range lies outside its chunk"));
        }
        Ok(s)
    }

    /// The source copies in the order to try them.
    pub fn copies(&self) -> impl Iterator<Item = SourceCopy> + '_ {
        self.copies.iter().flatten().copied()
    }
}

/// How a request ended; the error statuses mirror [`ChunkError`]'s variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    StaleEpoch = 1,
    NoSpace = 2,
    Io = 3,
    Refused = 4,
    Mirror = 5,
    Protocol = 6,
    Fenced = 7,
}

impl Status {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            0 => Status::Ok,
            1 => Status::StaleEpoch,
            2 => Status::NoSpace,
            3 => Status::Io,
            4 => Status::Refused,
            5 => Status::Mirror,
            6 => Status::Protocol,
            7 => Status::Fenced,
            _ => return Err(WireError::UnknownStatus(v)),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    pub status: Status,
    pub flags: u8,
    pub payload_len: u32,
    pub tag: u64,
    pub aux: u64,
}

impl ResponseHeader {
    /// A success header for `tag` carrying `payload_len` bytes.
    pub fn ok(tag: u64, payload_len: u32) -> Self {
        Self {
            status: Status::Ok,
            flags: 0,
            payload_len,
            tag,
            aux: 0,
        }
    }

    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut b = [0u8; RESPONSE_HEADER_LEN];
        b[0..2].copy_from_slice(&RESPONSE_MAGIC.to_be_bytes());
        b[2] = self.status as u8;
        b[3] = self.flags;
        b[4..8].copy_from_slice(&self.payload_len.to_be_bytes());
        b[8..16].copy_from_slice(&self.tag.to_be_bytes());
        b[16..24].copy_from_slice(&self.aux.to_be_bytes());
        b
    }

    /// Decodes a response header. The payload limit is the control limit because the
    /// header alone does not say which op it answers; the caller checks the rest.
    pub fn decode(b: &[u8; RESPONSE_HEADER_LEN]) -> Result<Self, WireError> {
        check_magic(b, RESPONSE_MAGIC)?;
        let payload_len = be32(b, 4);
        if payload_len > MAX_CONTROL_PAYLOAD {
            return Err(WireError::PayloadTooLarge {
                len: payload_len,
                max: MAX_CONTROL_PAYLOAD,
            });
        }
        Ok(Self {
            status: Status::from_u8(b[2])?,
            flags: b[3],
            payload_len,
            tag: be64(b, 8),
            aux: be64(b, 16),
        })
    }
}

/// The response header and payload that report `err` for request `tag`.
///
/// `Unreachable` never originates at an SDS about its own work; if a handler passes
/// one on it travels as an I/O failure with its text.
pub fn encode_error(tag: u64, err: &ChunkError) -> (ResponseHeader, Vec<u8>) {
    let (status, aux, text) = match err {
        ChunkError::StaleEpoch { current, .. } => (Status::StaleEpoch, *current, String::new()),
        ChunkError::NoSpace => (Status::NoSpace, 0, String::new()),
        ChunkError::Io(m) => (Status::Io, 0, m.clone()),
        ChunkError::Unreachable { .. } => (Status::Io, 0, err.to_string()),
        ChunkError::Mirror { sds, reason } => (Status::Mirror, *sds, reason.clone()),
        ChunkError::Refused(m) => (Status::Refused, 0, m.clone()),
        ChunkError::Protocol(m) => (Status::Protocol, 0, m.clone()),
        ChunkError::Fenced(m) => (Status::Fenced, 0, m.clone()),
    };
    let text = text.into_bytes();
    let header = ResponseHeader {
        status,
        flags: 0,
        payload_len: text.len() as u32,
        tag,
        aux,
    };
    (header, text)
}

/// The error an error response stands for; `None` for [`Status::Ok`]. `sent` is the
/// epoch the request carried (the response only names the SDS's current one).
pub fn decode_error(h: &ResponseHeader, payload: &[u8], sent: u64) -> Option<ChunkError> {
    let text = || String::from_utf8_lossy(payload).into_owned();
    Some(match h.status {
        Status::Ok => return None,
        Status::StaleEpoch => ChunkError::StaleEpoch {
            sent,
            current: h.aux,
        },
        Status::NoSpace => ChunkError::NoSpace,
        Status::Io => ChunkError::Io(text()),
        Status::Refused => ChunkError::Refused(text()),
        Status::Mirror => ChunkError::Mirror {
            sds: h.aux,
            reason: text(),
        },
        Status::Protocol => {
            ChunkError::Protocol(format!("the SDS rejected the request: {}", text()))
        }
        Status::Fenced => ChunkError::Fenced(text()),
    })
}

fn check_magic(b: &[u8], expected: u16) -> Result<(), WireError> {
    let found = u16::from_be_bytes([b[0], b[1]]);
    if found == expected {
        Ok(())
    } else {
        Err(WireError::BadMagic { found, expected })
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_req() -> RequestHeader {
        RequestHeader {
            op: Op::Write,
            flags: FLAG_FUA,
            payload_len: 4096,
            tag: 0x0102_0304_0506_0708,
            at: ChunkRef {
                volume: 11,
                chunk: 12,
                device: 13,
                epoch: 14,
            },
            offset: 8192,
            length: 4096,
            mirror: Some(Mirror {
                sds: 21,
                device: 22,
            }),
            arena: None,
        }
    }

    #[test]
    fn a_read_into_shared_memory_names_its_offset_and_attach_its_size() {
        let mut h = RequestHeader::new(Op::Read, 5);
        h.length = 4096;
        h.flags = FLAG_ARENA;
        h.arena = Some(0x0123_4567_89ab_c000);
        assert_eq!(RequestHeader::decode(&h.encode()).unwrap(), h);
        // The flag and the offset come together, and only on a Read.
        h.arena = None;
        assert_eq!(h.check(), Err(WireError::BadArena));
        h.flags = 0;
        h.arena = Some(0);
        assert_eq!(h.check(), Err(WireError::BadArena));
        let mut w = write_req();
        w.flags |= FLAG_ARENA;
        assert!(matches!(w.check(), Err(WireError::BadFlags { .. })));

        let mut a = RequestHeader::new(Op::Attach, 1);
        a.length = 64 << 20;
        assert_eq!(RequestHeader::decode(&a.encode()).unwrap(), a);
        for bad in [0, 4095, 4097] {
            a.length = bad;
            assert_eq!(a.check(), Err(WireError::BadAttach(bad)));
        }
        a.length = 4096;
        a.at.volume = 3;
        assert_eq!(a.check(), Err(WireError::BadAttach(4096)));
    }

    #[test]
    fn request_round_trip() {
        let h = write_req();
        let b = h.encode();
        assert_eq!(&b[0..2], b"DQ");
        assert_eq!(RequestHeader::decode(&b).unwrap(), h);
        assert_eq!(request_frame(&b).unwrap(), (h.tag, 4096));

        let mut z = RequestHeader::new(Op::WriteZeroes, 9);
        z.flags = FLAG_UNMAP | FLAG_FUA;
        z.length = CHUNK_SIZE as u32;
        let back = RequestHeader::decode(&z.encode()).unwrap();
        assert!(back.unmap() && back.fua());
        assert_eq!(back.mirror, None);
    }

    #[test]
    fn status_many_entries_and_runs_round_trip_and_are_bounded() {
        let entries = [(3, 10), (u64::MAX, 1)];
        let payload = encode_status_entries(&entries);
        assert_eq!(payload.len(), 32);
        assert_eq!(decode_status_entries(&payload), entries);
        let mut h = RequestHeader::new(Op::StatusMany, 5);
        h.length = 2;
        h.payload_len = 32;
        assert_eq!(RequestHeader::decode(&h.encode()).unwrap(), h);
        h.check().unwrap();
        h.payload_len = 16;
        assert!(matches!(h.check(), Err(WireError::PayloadMismatch { .. })));
        for length in [0, MAX_STATUS_ENTRIES + 1] {
            h.length = length;
            h.payload_len = length * 16;
            assert_eq!(h.check(), Err(WireError::BadStatusMany(length)));
        }
        let runs = [(true, 4096), (false, CHUNK_SIZE as u32)];
        let reply = encode_status_runs(&runs);
        assert_eq!(decode_status_runs(&reply, 2).unwrap(), runs);
        assert!(matches!(
            decode_status_runs(&reply, 3),
            Err(WireError::BadStatusRuns {
                len: 16,
                entries: 3
            })
        ));
    }

    #[test]
    fn big_endian_layout() {
        let b = write_req().encode();
        assert_eq!(b[2], 2);
        assert_eq!(b[3], FLAG_FUA);
        assert_eq!(&b[4..8], &[0, 0, 0x10, 0]);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(b[23], 14);
        assert_eq!(b[55], 13);
        assert_eq!(b[63], 21);
        assert_eq!(b[71], 22);
    }

    #[test]
    fn response_round_trip() {
        let h = ResponseHeader {
            status: Status::StaleEpoch,
            flags: FLAG_MAPPED,
            payload_len: 3,
            tag: 77,
            aux: 99,
        };
        let b = h.encode();
        assert_eq!(&b[0..2], b"DR");
        assert_eq!(ResponseHeader::decode(&b).unwrap(), h);
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut b = write_req().encode();
        b[0] = 0;
        assert!(matches!(
            RequestHeader::decode(&b),
            Err(WireError::BadMagic {
                expected: REQUEST_MAGIC,
                ..
            })
        ));
        assert!(request_frame(&b).is_err());
        let r = ResponseHeader::ok(1, 0).encode();
        let mut as_req = [0u8; REQUEST_HEADER_LEN];
        as_req[..RESPONSE_HEADER_LEN].copy_from_slice(&r);
        assert!(matches!(
            RequestHeader::decode(&as_req),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn unknown_op_keeps_the_frame() {
        let mut b = write_req().encode();
        b[2] = 42;
        assert_eq!(RequestHeader::decode(&b), Err(WireError::UnknownOp(42)));
        assert_eq!(request_frame(&b).unwrap(), (0x0102_0304_0506_0708, 4096));
    }

    #[test]
    fn flags_must_suit_the_op() {
        let mut h = RequestHeader::new(Op::Read, 1);
        h.flags = FLAG_FUA;
        assert!(matches!(
            RequestHeader::decode(&h.encode()),
            Err(WireError::BadFlags { op: Op::Read, .. })
        ));
        let mut w = write_req();
        w.flags = FLAG_UNMAP;
        assert!(matches!(w.check(), Err(WireError::BadFlags { .. })));
        let mut r = RequestHeader::new(Op::Read, 1);
        r.mirror = Some(Mirror { sds: 1, device: 1 });
        assert_eq!(r.check(), Err(WireError::MirrorNotWrite(Op::Read)));
    }

    #[test]
    fn forwarded_copies_and_replicate_requests() {
        let mut w = write_req();
        w.flags = FLAG_FORWARDED | FLAG_FUA;
        // A forwarded copy is never forwarded again.
        assert!(matches!(w.check(), Err(WireError::BadFlags { .. })));
        w.mirror = None;
        assert!(RequestHeader::decode(&w.encode()).unwrap().forwarded());
        let mut a = RequestHeader::new(Op::Atomic, 1);
        a.flags = ATOMIC_WRITE | FLAG_FORWARDED;
        assert!(matches!(a.check(), Err(WireError::BadFlags { .. })));

        let mut r = RequestHeader::new(Op::Replicate, 3);
        r.length = CHUNK_SIZE as u32;
        assert_eq!(r.check(), Err(WireError::BadReplicate));
        r.mirror = Some(Mirror { sds: 4, device: 5 });
        assert_eq!(RequestHeader::decode(&r.encode()).unwrap(), r);
        r.offset = 512;
        r.length -= 512;
        assert_eq!(r.check(), Err(WireError::BadReplicate));
    }

    #[test]
    fn single_copy_writes_name_only_a_moves_target_and_are_no_mirror() {
        let mut w = write_req();
        w.set_secondary(Secondary::SingleCopy);
        assert_eq!(
            (w.mirror, w.flags & FLAG_SINGLE_COPY),
            (None, FLAG_SINGLE_COPY)
        );
        let back = RequestHeader::decode(&w.encode()).unwrap();
        assert!(back.single_copy() && !back.forwarded());
        let target = Mirror { sds: 1, device: 1 };
        let mut moving = write_req();
        moving.set_secondary(Secondary::SingleCopyMoving(target));
        assert_eq!(
            (moving.mirror, moving.flags & FLAG_SINGLE_COPY),
            (Some(target), FLAG_SINGLE_COPY)
        );
        moving.check().unwrap();
        assert_eq!(RequestHeader::decode(&moving.encode()).unwrap(), moving);
        w.flags |= FLAG_FORWARDED;
        assert!(matches!(w.check(), Err(WireError::BadFlags { .. })));
        let mut r = RequestHeader::new(Op::Read, 1);
        r.flags = FLAG_SINGLE_COPY;
        assert!(matches!(r.check(), Err(WireError::BadFlags { .. })));
        let mut m = write_req();
        m.set_secondary(Secondary::Mirror(Mirror { sds: 2, device: 3 }));
        assert_eq!(m.flags & FLAG_SINGLE_COPY, 0);
        m.check().unwrap();
    }

    #[test]
    fn ranges_must_stay_inside_the_chunk() {
        let mut h = RequestHeader::new(Op::Read, 1);
        h.offset = CHUNK_SIZE as u32 - 512;
        h.length = 1024;
        assert!(matches!(h.check(), Err(WireError::OutsideChunk { .. })));
        h.length = 512;
        assert!(h.check().is_ok());
        let mut s = RequestHeader::new(Op::Status, 1);
        s.offset = CHUNK_SIZE as u32;
        assert!(matches!(s.check(), Err(WireError::OutsideChunk { .. })));
        let mut w = write_req();
        w.offset = u32::MAX;
        assert!(matches!(w.check(), Err(WireError::OutsideChunk { .. })));
    }

    #[test]
    fn payload_length_must_match_the_op() {
        let mut w = write_req();
        w.payload_len = 100;
        assert_eq!(
            w.check(),
            Err(WireError::PayloadMismatch {
                op: Op::Write,
                len: 100,
                expected: 4096
            })
        );
        let mut r = RequestHeader::new(Op::Flush, 1);
        r.payload_len = 1;
        assert!(matches!(r.check(), Err(WireError::PayloadMismatch { .. })));
        let mut c = RequestHeader::new(Op::Control, 1);
        c.payload_len = 1000;
        assert!(c.check().is_ok());
        let mut b = c.encode();
        b[4..8].copy_from_slice(&(MAX_CONTROL_PAYLOAD + 1).to_be_bytes());
        assert!(matches!(
            request_frame(&b),
            Err(WireError::PayloadTooLarge { .. })
        ));
    }

    fn copy_req() -> (RequestHeader, CopySource) {
        let mut h = write_req();
        h.op = Op::Copy;
        h.flags = FLAG_FUA | FLAG_UNMAP;
        h.payload_len = COPY_SOURCE_LEN as u32;
        let src = CopySource {
            volume: 31,
            chunk: 32,
            epoch: 33,
            offset: 4096,
            copies: [
                Some(SourceCopy {
                    sds: 41,
                    device: 42,
                }),
                Some(SourceCopy {
                    sds: 43,
                    device: 44,
                }),
            ],
        };
        (h, src)
    }

    #[test]
    fn copy_round_trip_and_layout() {
        let (h, src) = copy_req();
        let b = h.encode();
        assert_eq!(b[2], 8);
        assert_eq!(RequestHeader::decode(&b).unwrap(), h);
        let p = src.encode();
        assert_eq!(p.len(), COPY_SOURCE_LEN);
        assert_eq!(p[7], 31);
        assert_eq!(p[15], 32);
        assert_eq!(&p[16..20], &[0, 0, 0x10, 0]);
        assert_eq!(p[31], 33);
        assert_eq!((p[39], p[47], p[55], p[63]), (41, 42, 43, 44));
        let back = CopySource::decode(&p, h.length).unwrap();
        assert_eq!(back, src);
        let order: Vec<u64> = back.copies().map(|c| c.sds).collect();
        assert_eq!(order, vec![41, 43]);
        let mut one = src;
        one.copies[1] = None;
        let back = CopySource::decode(&one.encode(), 512).unwrap();
        assert_eq!(back.copies().count(), 1);
        assert_eq!(&one.encode()[48..64], &[0u8; 16]);
    }

    #[test]
    fn copy_requests_are_checked() {
        let (mut h, src) = copy_req();
        h.payload_len = 0;
        assert!(matches!(
            h.check(),
            Err(WireError::PayloadMismatch { op: Op::Copy, .. })
        ));
        let (mut h, _) = copy_req();
        h.offset = CHUNK_SIZE as u32 - 512;
        assert!(matches!(h.check(), Err(WireError::OutsideChunk { .. })));
        let p = src.encode();
        assert!(CopySource::decode(&p[..63], 512).is_err());
        let mut bad = p;
        bad[23] = 1;
        assert!(CopySource::decode(&bad, 512).is_err());
        let mut none = src;
        none.copies = [None, None];
        assert!(CopySource::decode(&none.encode(), 512).is_err());
        assert!(CopySource::decode(&p, CHUNK_SIZE as u32 - 4095).is_err());
        assert!(CopySource::decode(&p, CHUNK_SIZE as u32 - 4096).is_ok());
    }

    #[test]
    fn atomic_requests_round_trip_and_are_checked() {
        let mut h = write_req();
        h.op = Op::Atomic;
        h.flags = FLAG_FUA | ATOMIC_COMPARE_AND_WRITE;
        h.length = 512;
        h.payload_len = 1024;
        let b = h.encode();
        assert_eq!((b[2], b[3]), (7, 0x11));
        let back = RequestHeader::decode(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.atomic_kind(), Some(AtomicKind::CompareAndWrite));
        assert!(back.fua());
        assert_eq!(back.mirror, h.mirror);

        // Compare-and-write carries compare and write data; the others one copy.
        h.payload_len = 512;
        assert!(matches!(
            h.check(),
            Err(WireError::PayloadMismatch { expected: 1024, .. })
        ));
        for kind in [AtomicKind::Or, AtomicKind::Write] {
            h.flags = kind.flags();
            assert!(h.check().is_ok());
            assert_eq!(
                RequestHeader::decode(&h.encode()).unwrap().atomic_kind(),
                Some(kind)
            );
        }
        h.flags = FLAG_FUA;
        assert_eq!(h.check(), Err(WireError::NoAtomicKind(FLAG_FUA)));
        h.flags = ATOMIC_OR | FLAG_UNMAP;
        assert!(matches!(h.check(), Err(WireError::BadFlags { .. })));
        h.flags = ATOMIC_WRITE;
        h.offset = CHUNK_SIZE as u32 - 256;
        assert!(matches!(h.check(), Err(WireError::OutsideChunk { .. })));
        assert_eq!(RequestHeader::new(Op::Write, 1).atomic_kind(), None);

        let r = ResponseHeader {
            status: Status::Ok,
            flags: FLAG_MISCOMPARE,
            payload_len: 0,
            tag: 5,
            aux: 300,
        };
        assert_eq!(ResponseHeader::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn response_limits_and_unknown_status() {
        let mut b = ResponseHeader::ok(1, 0).encode();
        b[2] = 200;
        assert_eq!(
            ResponseHeader::decode(&b),
            Err(WireError::UnknownStatus(200))
        );
        let mut b = ResponseHeader::ok(1, 0).encode();
        b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            ResponseHeader::decode(&b),
            Err(WireError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn errors_survive_the_wire() {
        let cases = [
            ChunkError::StaleEpoch {
                sent: 3,
                current: 8,
            },
            ChunkError::NoSpace,
            ChunkError::Io("disk on fire".into()),
            ChunkError::Refused("not my device".into()),
            ChunkError::Mirror {
                sds: 5,
                reason: "gone".into(),
            },
        ];
        for e in cases {
            let (h, text) = encode_error(4, &e);
            let h = ResponseHeader::decode(&h.encode()).unwrap();
            assert_eq!(h.tag, 4);
            let back = decode_error(&h, &text, 3).unwrap();
            assert_eq!(back.to_string(), e.to_string());
        }
        assert!(decode_error(&ResponseHeader::ok(1, 0), &[], 0).is_none());
    }
}
