//! The block backend: the few operations the SCSI engine needs from a volume.
//!
//! Shaped for a volume whose I/O crosses a network (the pool volume client of a
//! later issue): every call is async and payloads travel as [`Bytes`] segments so
//! data received from a socket reaches the device without being copied.

mod file;
pub(crate) mod fileops;
mod memory;

pub use file::FileBackend;
pub use memory::MemoryBackend;

use async_trait::async_trait;
use bytes::{Buf, Bytes};

/// Logical block size exposed to initiators. ESXi is only reliable with 512.
pub const BLOCK_SIZE: u32 = 512;

/// A scatter/gather list of payload segments, as they came off the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SgList {
    segments: Vec<Bytes>,
    len: usize,
}

impl SgList {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, seg: Bytes) {
        if !seg.is_empty() {
            self.len += seg.len();
            self.segments.push(seg);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[Bytes] {
        &self.segments
    }

    /// The first `len` bytes (cheap: segments are reference counted).
    pub fn prefix(&self, len: usize) -> SgList {
        self.slice(0, len)
    }

    /// Bytes `[start, start+len)`, clamped to what is present; no payload copy.
    pub fn slice(&self, start: usize, len: usize) -> SgList {
        let mut out = SgList::new();
        let mut skip = start;
        let mut want = len;
        for seg in &self.segments {
            if want == 0 {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let take = (seg.len() - skip).min(want);
            out.push(seg.slice(skip..skip + take));
            want -= take;
            skip = 0;
        }
        out
    }

    /// Gathers the segments into one buffer. Copies unless there is a single segment,
    /// so keep it for small parameter lists (MODE SELECT, UNMAP, ...), not payloads.
    pub fn to_bytes(&self) -> Bytes {
        match self.segments.len() {
            0 => Bytes::new(),
            1 => self.segments[0].clone(),
            _ => {
                let mut v = Vec::with_capacity(self.len);
                for s in &self.segments {
                    v.extend_from_slice(s);
                }
                Bytes::from(v)
            }
        }
    }
}

impl From<Bytes> for SgList {
    fn from(b: Bytes) -> Self {
        let mut s = SgList::new();
        s.push(b);
        s
    }
}

impl From<Vec<u8>> for SgList {
    fn from(v: Vec<u8>) -> Self {
        Bytes::from(v).into()
    }
}

/// Copies an [`SgList`] into a contiguous slice (used by backends that must gather).
pub fn copy_into(src: &SgList, dst: &mut [u8]) {
    let mut off = 0;
    for seg in src.segments() {
        let mut s = seg.clone();
        let n = s.remaining().min(dst.len() - off);
        s.copy_to_slice(&mut dst[off..off + n]);
        off += n;
    }
}

/// Provisioning state of a block range, for GET LBA STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    Mapped,
    Deallocated,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device failed an I/O; the initiator sees a MEDIUM ERROR.
    #[error("device I/O failed: {0}; check the backing file or device and its filesystem")]
    Io(#[from] std::io::Error),
    /// The backing store is full (thin volume); the initiator sees
    /// SPACE ALLOCATION FAILED WRITE PROTECT.
    #[error("no space left for this volume's data; grow the pool or free space")]
    NoSpace,
    /// The range lies past the end of the volume. The SCSI engine checks ranges first,
    /// so this indicates a bug in a caller.
    #[error("block range {lba}+{blocks} is beyond the end of the volume")]
    OutOfRange { lba: u64, blocks: u64 },
    /// An atomic operation over a range the backend cannot make atomic (it spans two
    /// chunks). The SCSI engine keeps requests inside the advertised limits, so this
    /// too indicates a bug in a caller.
    #[error("block range {lba}+{blocks} cannot be written atomically: it spans two chunks")]
    NotAtomic { lba: u64, blocks: u64 },
    /// No copy of the data is on a running server (every copy's SDS is down). The
    /// initiator sees a MEDIUM ERROR at once rather than a command that hangs until it
    /// aborts; the data comes back with its server. The text says which and what to do.
    #[error("{0}")]
    Unavailable(String),
}

/// A read-modify-write the backend performs atomically: no other atomic operation and
/// no ordinary write to the range comes between its read and its write, on any gateway.
#[derive(Debug, Clone)]
pub enum AtomicOp {
    /// COMPARE AND WRITE: write `write` only if the range holds exactly `compare`
    /// (both `blocks * BLOCK_SIZE` bytes).
    CompareAndWrite { compare: SgList, write: SgList },
    /// ORWRITE: the range becomes its current bytes ORed with these.
    Or(SgList),
    /// WRITE ATOMIC: all of the data or none of it, never a mix with another write.
    Write(SgList),
}

impl AtomicOp {
    /// Bytes of the range the operation covers.
    pub fn len(&self) -> usize {
        match self {
            AtomicOp::CompareAndWrite { write, .. } => write.len(),
            AtomicOp::Or(d) | AtomicOp::Write(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the operation to `current`, the range's bytes read under the lock: the
    /// bytes to write, or the offset of the first byte that differs from the compare
    /// data. The one definition every backend (and the SDS) uses.
    pub fn apply(&self, current: &[u8]) -> Result<Vec<u8>, u64> {
        let mut out = vec![0u8; self.len()];
        match self {
            AtomicOp::CompareAndWrite { compare, write } => {
                let mut off = 0usize;
                for seg in compare.segments() {
                    // Bytes missing from `current` differ too.
                    let here = current.get(off..).unwrap_or_default();
                    if let Some(i) = (0..seg.len()).position(|i| here.get(i) != Some(&seg[i])) {
                        return Err((off + i) as u64);
                    }
                    off += seg.len();
                }
                copy_into(write, &mut out);
            }
            AtomicOp::Or(d) => {
                copy_into(d, &mut out);
                for (o, c) in out.iter_mut().zip(current) {
                    *o |= c;
                }
            }
            AtomicOp::Write(d) => copy_into(d, &mut out),
        }
        Ok(out)
    }
}

/// How an [`AtomicOp`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOutcome {
    Done,
    /// COMPARE AND WRITE found different bytes and wrote nothing; `offset` is the byte
    /// offset of the first difference from the start of the range.
    Miscompare {
        offset: u64,
    },
}

/// What a volume must provide. Ranges are in logical blocks of [`BLOCK_SIZE`] and are
/// already validated against [`BlockBackend::num_blocks`] by the caller.
#[async_trait]
pub trait BlockBackend: Send + Sync + std::fmt::Debug {
    /// Size in logical blocks.
    fn num_blocks(&self) -> u64;

    /// Whether unmapped ranges are released (thin) and read back as zeros.
    fn thin(&self) -> bool;

    /// Whether I/O mostly completes without waiting (cached or in memory): the
    /// transport then runs a command where it receives it rather than as a task of its
    /// own. A backend whose every I/O waits on the network says no: starting its
    /// commands inline only moved their wakeups to other threads (pool QD1 reads took
    /// half as long again).
    fn completes_inline(&self) -> bool {
        false
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BackendError>;

    /// Writes `data` (exactly `blocks * BLOCK_SIZE` bytes) at `lba`. With `fua` the data
    /// is durable when this returns.
    async fn write(&self, lba: u64, data: SgList, fua: bool) -> Result<(), BackendError>;

    /// Makes every completed write durable.
    async fn flush(&self) -> Result<(), BackendError>;

    /// Zeroes a range; with `unmap` the backend may deallocate it instead.
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError>;

    /// Deallocates a range; later reads return zeros.
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError>;

    /// Performs `op` on the range starting at `lba` atomically (see [`AtomicOp`]); with
    /// `fua` the result is durable when this returns. A backend may refuse a range it
    /// cannot make atomic with [`BackendError::NotAtomic`]; ORWRITE ranges of any
    /// length are accepted (each chunk is ORed atomically).
    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        fua: bool,
    ) -> Result<AtomicOutcome, BackendError>;

    /// Provisioning state at `lba` and how many blocks from there share it.
    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError>;

    /// Copies `blocks` blocks at `src_lba` of `src` to `dst_lba` of this volume (EXTENDED
    /// COPY). The result is that of reading the whole source range and then writing it,
    /// even when `src` is this volume and the ranges overlap. Not durable until a flush.
    ///
    /// The default moves the data through this process in pieces of [`COPY_PIECE`]
    /// bytes; a volume that can make its storage copy by itself overrides it.
    async fn copy_from(
        &self,
        dst_lba: u64,
        src: &dyn BlockBackend,
        src_lba: u64,
        blocks: u64,
    ) -> Result<(), BackendError> {
        let same = std::ptr::addr_eq(self as *const Self, src as *const dyn BlockBackend);
        copy_through(self, dst_lba, src, src_lba, blocks, same).await
    }

    /// The concrete volume, so an override of [`BlockBackend::copy_from`] can tell
    /// whether the source is a volume of its own kind.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Bytes the default [`BlockBackend::copy_from`] reads and writes at a time.
pub const COPY_PIECE: u64 = 1 << 20;

/// Pieces of `[0, blocks)` of at most `per` blocks in the order a copy must run them:
/// when source and destination are one volume and overlap, a piece must be read before
/// a later piece overwrites it, so a copy towards higher addresses runs backwards (as
/// memmove does). Each item is (offset in blocks, blocks).
pub fn copy_order(
    src_lba: u64,
    dst_lba: u64,
    blocks: u64,
    per: u64,
    same: bool,
) -> impl Iterator<Item = (u64, u64)> {
    let n = blocks.div_ceil(per.max(1));
    let backwards = same && dst_lba > src_lba && dst_lba < src_lba.saturating_add(blocks);
    (0..n).map(move |i| {
        let i = if backwards { n - 1 - i } else { i };
        let off = i * per;
        (off, per.min(blocks - off))
    })
}

/// Whether the two ranges of one volume overlap, so pieces must run one at a time.
pub fn overlapping(same: bool, src_lba: u64, dst_lba: u64, blocks: u64) -> bool {
    same && src_lba < dst_lba.saturating_add(blocks) && dst_lba < src_lba.saturating_add(blocks)
}

/// The default copy: pieces read from `src` and written to `dst` by this process, a
/// few at a time (one at a time when the ranges overlap). A piece the source reports
/// deallocated is zeroed (unmapped on a thin destination) instead of read.
pub async fn copy_through<D: BlockBackend + ?Sized>(
    dst: &D,
    dst_lba: u64,
    src: &dyn BlockBackend,
    src_lba: u64,
    blocks: u64,
    same: bool,
) -> Result<(), BackendError> {
    /// Pieces in flight when the ranges do not overlap.
    const PARALLEL: usize = 4;
    let per = COPY_PIECE / BLOCK_SIZE as u64;
    let serial = overlapping(same, src_lba, dst_lba, blocks);
    let piece = |(off, n): (u64, u64)| async move {
        let from = src_lba + off;
        if src.thin() {
            let (state, run) = src.allocation_status(from).await?;
            if state == Provisioning::Deallocated && run >= n {
                return dst.write_zeroes(dst_lba + off, n, dst.thin()).await;
            }
        }
        let data = src.read(from, n as u32).await?;
        dst.write(dst_lba + off, SgList::from(data), false).await
    };
    let mut order = copy_order(src_lba, dst_lba, blocks, per, same);
    if serial {
        for p in order {
            piece(p).await?;
        }
        return Ok(());
    }
    // A small window of pieces in flight, without spawning (the backends are borrowed).
    let mut running = Vec::new();
    loop {
        while running.len() < PARALLEL {
            match order.next() {
                Some(p) => running.push(Box::pin(piece(p))),
                None => break,
            }
        }
        if running.is_empty() {
            return Ok(());
        }
        let (done, i) = first_done(&mut running).await;
        drop(running.swap_remove(i));
        done?;
    }
}

/// Polls every future until one completes; returns its output and index.
async fn first_done<F: std::future::Future + Unpin>(futs: &mut [F]) -> (F::Output, usize) {
    std::future::poll_fn(|cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((v, i));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_order_runs_backwards_only_for_an_overlapping_copy_upwards() {
        let fwd: Vec<_> = copy_order(0, 10, 25, 10, false).collect();
        assert_eq!(fwd, vec![(0, 10), (10, 10), (20, 5)]);
        let back: Vec<_> = copy_order(0, 10, 25, 10, true).collect();
        assert_eq!(back, vec![(20, 5), (10, 10), (0, 10)]);
        // Downwards, or upwards past the end of the source: forwards.
        assert_eq!(copy_order(10, 0, 25, 10, true).next(), Some((0, 10)));
        assert_eq!(copy_order(0, 25, 25, 10, true).next(), Some((0, 10)));
        assert_eq!(copy_order(0, 0, 0, 10, true).count(), 0);
    }

    #[test]
    fn overlap_needs_the_same_volume() {
        assert!(overlapping(true, 0, 24, 25));
        assert!(overlapping(true, 24, 0, 25));
        assert!(!overlapping(true, 0, 25, 25));
        assert!(!overlapping(false, 0, 1, 25));
        assert!(!overlapping(true, u64::MAX - 1, 0, 2));
    }
}
