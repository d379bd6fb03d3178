//! A pool volume as a [`BlockBackend`]: block I/O cut into chunk I/O and sent to the
//! SDS holding each chunk's primary copy, which mirrors writes to the secondary.
//!
//! The layout is cached from the MDM. A failed chunk request fails over within
//! [`FAILOVER_DEADLINE`] (see [`failover`] for which errors are retried): a stale
//! epoch refetches the layout; an SDS that does not serve is reported to the MDM,
//! which commits layouts without it if it is down, and the request follows the
//! refetched layout, or waits and tries again if the layout has not moved.

use super::failover::{self, Backoff, Next, FAILOVER_DEADLINE};
use super::route::{copy_pieces, pieces, route, CopyPiece, Piece, RouteError};
use super::sds_pool::SdsPool;
use super::single_flight::SingleFlight;
use crate::backend::{
    copy_through, overlapping, AtomicOp, AtomicOutcome, BackendError, BlockBackend, Provisioning,
    SgList, BLOCK_SIZE,
};
use crate::cluster::api::{Layout, MdmReply, MdmRequest, CHUNK_SIZE};
use crate::cluster::chunk::wire::{AtomicKind, CopySource, SourceCopy};
use crate::cluster::chunk::ChunkError;
use crate::cluster::mdm_client;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot fetch the layout of volume {volume:016x} from the MDM at {mdm}: {reason}")]
    Layout {
        volume: u64,
        mdm: String,
        reason: String,
    },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("volume {volume:016x}, chunk {chunk}: {source}")]
    Chunk {
        volume: u64,
        chunk: u64,
        source: ChunkError,
    },
    #[error("flushing SDS {sds:016x} failed: {source}")]
    Flush { sds: u64, source: ChunkError },
}

impl From<VolumeError> for BackendError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Chunk {
                source: ChunkError::NoSpace,
                ..
            } => BackendError::NoSpace,
            e @ VolumeError::Route(RouteError::Unavailable { .. }) => {
                BackendError::Unavailable(e.to_string())
            }
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Asks the MDM for a volume's current layout.
pub async fn fetch_layout(mdm: &str, volume: u64) -> Result<Layout, VolumeError> {
    ask_layout(mdm, volume)
        .await
        .map_err(|reason| VolumeError::Layout {
            volume,
            mdm: mdm.to_string(),
            reason,
        })
}

/// [`fetch_layout`] with the reason of a failure alone.
async fn ask_layout(mdm: &str, volume: u64) -> Result<Layout, String> {
    let req = MdmRequest::GetLayout { volume_id: volume };
    match mdm_client::ask(mdm, &req, Duration::from_secs(30)).await {
        Ok(MdmReply::Layout(l)) => Ok(l),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug)]
struct Inner {
    id: u64,
    mdm: String,
    sds: Arc<SdsPool>,
    layout: RwLock<Arc<Layout>>,
    /// The layout fetch in flight, shared by every request that needs it.
    fetch: SingleFlight<(), Result<Arc<Layout>, String>>,
}

/// Chunks past the first whose allocation one [`BlockBackend::allocation_status`]
/// call asks for, all at once.
const STATUS_LOOKAHEAD: u64 = 128;

/// A pool volume seen from a gateway. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PoolVolume(Arc<Inner>);

impl PoolVolume {
    pub fn new(layout: Layout, mdm: String, sds: Arc<SdsPool>) -> Self {
        Self(Arc::new(Inner {
            id: layout.volume_id,
            mdm,
            sds,
            layout: RwLock::new(Arc::new(layout)),
            fetch: SingleFlight::new(Duration::ZERO),
        }))
    }

    pub fn epoch(&self) -> u64 {
        self.0.layout().epoch
    }

    /// Installs a newer layout (the MDM moved the epoch or resized the volume).
    pub fn set_layout(&self, layout: Layout) {
        *self.0.layout.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(layout);
    }

    /// Runs `op` on every piece of `[start, start+len)`, concurrently when there are
    /// several, and returns the results in piece order.
    async fn each<T, F, Fut>(&self, start: u64, len: u64, op: F) -> Result<Vec<T>, VolumeError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>, Piece) -> Fut,
        Fut: Future<Output = Result<T, VolumeError>> + Send + 'static,
    {
        let all: Vec<Piece> = pieces(start, len).collect();
        if all.len() == 1 {
            return Ok(vec![op(self.0.clone(), all[0]).await?]);
        }
        let mut set = JoinSet::new();
        for (i, p) in all.iter().enumerate() {
            let fut = op(self.0.clone(), *p);
            set.spawn(async move { (i, fut.await) });
        }
        let mut out: Vec<Option<T>> = (0..all.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (i, r) = joined.map_err(|e| VolumeError::Layout {
                volume: self.0.id,
                mdm: self.0.mdm.clone(),
                reason: format!("I/O task failed: {e}"),
            })?;
            out[i] = Some(r?);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Inner {
    fn layout(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs one chunk operation on the chunk's current route, failing over as
    /// [`failover::next`] says until [`FAILOVER_DEADLINE`].
    async fn on_chunk<T, F, Fut>(&self, chunk: u64, op: F) -> Result<T, VolumeError>
    where
        F: Fn(Arc<crate::cluster::chunk::ChunkClient>, crate::sdc::route::Route<'_>) -> Fut,
        Fut: Future<Output = Result<T, ChunkError>>,
    {
        self.on_chunk_retrying(chunk, true, op).await
    }

    /// [`Inner::on_chunk`] for an operation that is not idempotent when `idempotent`
    /// is false (compare-and-write): only refusals made before executing anything are
    /// retried (see [`failover::next`]).
    async fn on_chunk_retrying<T, F, Fut>(
        &self,
        chunk: u64,
        idempotent: bool,
        op: F,
    ) -> Result<T, VolumeError>
    where
        F: Fn(Arc<crate::cluster::chunk::ChunkClient>, crate::sdc::route::Route<'_>) -> Fut,
        Fut: Future<Output = Result<T, ChunkError>>,
    {
        let mut retry = Retry::new();
        loop {
            let layout = self.layout();
            let r = route(&layout, chunk)?;
            let client = self.sds.client(r.primary.addr);
            let (primary, epoch) = (r.primary.sds_id, layout.epoch);
            let err = match retry.bounded(client.addr(), op(client.clone(), r)).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            self.recover(
                &mut retry,
                chunk,
                err,
                primary,
                idempotent,
                &[(self, epoch)],
            )
            .await?;
        }
    }

    /// After a chunk request routed with `routed` (each volume involved and the
    /// epoch it was routed with) failed with `err` at the SDS `primary`: reports,
    /// refetches and waits as [`failover::next`] says. `Ok` means try again now, on
    /// the then current layout.
    async fn recover(
        &self,
        retry: &mut Retry,
        chunk: u64,
        err: ChunkError,
        primary: u64,
        idempotent: bool,
        routed: &[(&Inner, u64)],
    ) -> Result<(), VolumeError> {
        let give_up = |source| VolumeError::Chunk {
            volume: self.id,
            chunk,
            source,
        };
        let retrying = match failover::next(&err, primary, idempotent) {
            Next::Fail => return Err(give_up(err)),
            Next::Refetch => true,
            Next::Report { sds, retry: again } => {
                let verdict = retry
                    .within(self.sds.report(&self.mdm, sds, err.to_string()))
                    .await;
                debug!(volume = %format!("{:016x}", self.id), chunk, error = %err, ?verdict, "chunk request failed; SDS reported");
                again
            }
        };
        let mut moved = false;
        for (vol, epoch) in routed {
            if let Some(Ok(())) = retry.within(vol.refresh(*epoch)).await {
                moved |= vol.layout().epoch > *epoch;
            }
        }
        if !retrying || retry.expired() {
            return Err(give_up(err));
        }
        if !moved {
            retry.pause().await;
            if retry.expired() {
                return Err(give_up(err));
            }
        }
        Ok(())
    }
}

/// One request's failover: its deadline, and its wait before retrying a route that
/// did not move.
struct Retry {
    deadline: Instant,
    backoff: Backoff,
}

impl Retry {
    fn new() -> Self {
        Self {
            deadline: Instant::now() + FAILOVER_DEADLINE,
            backoff: Backoff::default(),
        }
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// `fut`, or `None` once the deadline has passed.
    async fn within<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout_at(self.deadline, fut).await.ok()
    }

    /// A chunk request to the SDS at `addr`, cut off at the deadline (it may have
    /// started just before it): the initiator must have its answer in time.
    async fn bounded<T>(
        &self,
        addr: std::net::SocketAddr,
        fut: impl Future<Output = Result<T, ChunkError>>,
    ) -> Result<T, ChunkError> {
        self.within(fut).await.unwrap_or_else(|| {
            Err(ChunkError::Unreachable {
                addr,
                reason: format!(
                    "no answer within the {} s failover deadline",
                    FAILOVER_DEADLINE.as_secs()
                ),
            })
        })
    }

    /// Waits the next backoff step, never past the deadline.
    async fn pause(&mut self) {
        let until = (Instant::now() + self.backoff.step()).min(self.deadline);
        tokio::time::sleep_until(until).await;
    }
}

/// Copy pieces (up to one chunk each) in flight at once for one EXTENDED COPY segment.
const COPY_PARALLEL: usize = 32;

impl Inner {
    /// Makes sure the installed layout is the MDM's latest if it is no newer than
    /// `routed` (the epoch a failed request was routed with): fetches it, one fetch
    /// per volume at a time, unless another request already installed a newer one.
    async fn refresh(&self, routed: u64) -> Result<(), VolumeError> {
        if self.layout().epoch > routed {
            return Ok(());
        }
        let (mdm, id) = (self.mdm.clone(), self.id);
        let fresh = self
            .fetch
            .run((), move || async move {
                ask_layout(&mdm, id).await.map(Arc::new)
            })
            .await
            .unwrap_or_else(|| Err("the layout fetch task panicked".into()))
            .map_err(|reason| VolumeError::Layout {
                volume: self.id,
                mdm: self.mdm.clone(),
                reason,
            })?;
        let mut cur = self.layout.write().unwrap_or_else(|p| p.into_inner());
        if fresh.epoch > cur.epoch {
            info!(volume = %format!("{:016x}", self.id), from = cur.epoch, to = fresh.epoch, "installed the volume's new layout");
        }
        if fresh.epoch >= cur.epoch {
            *cur = fresh;
        }
        Ok(())
    }

    /// One Copy request to the primary SDS of the destination chunk (this volume's),
    /// naming both copies of the source chunk (of `src`), failing over like
    /// [`Inner::on_chunk`] (both layouts are refetched).
    async fn copy_piece(&self, src: &Inner, p: CopyPiece, unmap: bool) -> Result<(), VolumeError> {
        let mut retry = Retry::new();
        loop {
            let (dl, sl) = (self.layout(), src.layout());
            let d = route(&dl, p.dst_chunk)?;
            let s = route(&sl, p.src_chunk)?;
            let source = CopySource {
                volume: sl.volume_id,
                chunk: p.src_chunk,
                epoch: sl.epoch,
                offset: p.src_offset,
                copies: [
                    Some(SourceCopy {
                        sds: s.primary.sds_id,
                        device: s.primary.device_id,
                    }),
                    // Not the secondary: it may be a copy still being filled (rebuild
                    // or a move), which the layout does not tell apart. A failed
                    // primary is reported and the piece retried on the new layout.
                    None,
                ],
            };
            let client = self.sds.client(d.primary.addr);
            let copy = client.copy(
                d.at,
                p.dst_offset,
                p.len,
                &source,
                false,
                unmap,
                d.secondary,
            );
            let err = match retry.bounded(client.addr(), copy).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let routed = [(self, dl.epoch), (src, sl.epoch)];
            let routed = if src.id == self.id {
                &routed[..1]
            } else {
                &routed[..]
            };
            self.recover(&mut retry, p.dst_chunk, err, d.primary.sds_id, true, routed)
                .await?;
        }
    }

    /// Makes every acknowledged write of the volume durable: flushes every running SDS
    /// of its layout. An SDS that fails is reported, and the flush repeated on the
    /// refetched layout's SDS (its chunks' surviving copies are elsewhere), until
    /// [`FAILOVER_DEADLINE`].
    async fn flush(&self) -> Result<(), VolumeError> {
        let mut retry = Retry::new();
        loop {
            let layout = self.layout();
            let mut sds: Vec<_> = layout
                .devices
                .iter()
                .filter(|d| !d.down)
                .map(|d| (d.sds_id, d.addr))
                .collect();
            sds.sort();
            sds.dedup();
            let mut set = JoinSet::new();
            for (id, addr) in sds {
                let c = self.sds.client(addr);
                let deadline = retry.deadline;
                set.spawn(async move {
                    let r = Retry {
                        deadline,
                        backoff: Backoff::default(),
                    };
                    (id, r.bounded(addr, c.flush()).await)
                });
            }
            let mut failed = Vec::new();
            while let Some(joined) = set.join_next().await {
                let (id, r) = joined.map_err(|e| VolumeError::Layout {
                    volume: self.id,
                    mdm: self.mdm.clone(),
                    reason: format!("flush task failed: {e}"),
                })?;
                if let Err(e) = r {
                    failed.push((id, e));
                }
            }
            let Some((id, err)) = failed.pop() else {
                return Ok(());
            };
            // Every other failed SDS is reported too; the last one goes through the
            // common path (report, refetch, wait or give up).
            for (other, e) in failed {
                if failover::next(&e, other, true) == Next::Fail {
                    return Err(VolumeError::Flush {
                        sds: other,
                        source: e,
                    });
                }
                retry
                    .within(self.sds.report(&self.mdm, other, e.to_string()))
                    .await;
            }
            if failover::next(&err, id, true) == Next::Fail {
                return Err(VolumeError::Flush {
                    sds: id,
                    source: err,
                });
            }
            self.recover(&mut retry, 0, err, id, true, &[(self, layout.epoch)])
                .await
                .map_err(|e| match e {
                    VolumeError::Chunk { source, .. } => VolumeError::Flush { sds: id, source },
                    other => other,
                })?;
        }
    }
}

impl PoolVolume {
    /// EXTENDED COPY between pool volumes: every piece is one Copy request to the SDS
    /// holding the destination chunk's primary, which reads the source from its own
    /// device or a peer SDS; no data passes through the gateway. Overlapping ranges of
    /// one volume run one piece at a time in memmove order.
    async fn copy_between(
        &self,
        from: &PoolVolume,
        dst_lba: u64,
        src_lba: u64,
        blocks: u64,
    ) -> Result<(), VolumeError> {
        let (src, len) = bytes_of(src_lba, blocks);
        let (dst, _) = bytes_of(dst_lba, 0);
        let same = from.0.id == self.0.id;
        let unmap = self.thin();
        let mut order: Vec<CopyPiece> = copy_pieces(src, dst, len).collect();
        if overlapping(same, src_lba, dst_lba, blocks) {
            if dst > src {
                order.reverse();
            }
            for p in order {
                self.0.copy_piece(&from.0, p, unmap).await?;
            }
            return Ok(());
        }
        let mut set = JoinSet::new();
        let mut next = order.into_iter();
        loop {
            while set.len() < COPY_PARALLEL {
                let Some(p) = next.next() else { break };
                let (d, s) = (self.0.clone(), from.0.clone());
                set.spawn(async move { d.copy_piece(&s, p, unmap).await });
            }
            let Some(joined) = set.join_next().await else {
                return Ok(());
            };
            joined.map_err(|e| VolumeError::Layout {
                volume: self.0.id,
                mdm: self.0.mdm.clone(),
                reason: format!("copy task failed: {e}"),
            })??;
        }
    }

    /// The allocation of `count` chunks from `first`, each from its offset 0, with one
    /// StatusMany per SDS holding their primaries, all at once. `None` if any of them
    /// fails: the caller asks chunk by chunk instead.
    async fn status_ahead(&self, first: u64, count: u64) -> Option<Vec<(bool, u32)>> {
        let layout = self.0.layout();
        // Per SDS: where each answer goes in the result, and what to ask.
        type Asks = (Vec<usize>, Vec<(u64, u64)>);
        let mut groups: HashMap<SocketAddr, Asks> = HashMap::new();
        for (i, chunk) in (first..first + count).enumerate() {
            let r = route(&layout, chunk).ok()?;
            let group = groups.entry(r.primary.addr).or_default();
            group.0.push(i);
            group.1.push((chunk, r.at.device));
        }
        let mut asks = JoinSet::new();
        for (addr, (slots, entries)) in groups {
            let client = self.0.sds.client(addr);
            let (volume, epoch) = (layout.volume_id, layout.epoch);
            asks.spawn(async move { (slots, client.status_many(volume, epoch, &entries).await) });
        }
        let mut out = vec![(false, 0); count as usize];
        while let Some(joined) = asks.join_next().await {
            let (slots, runs) = joined.ok()?;
            let runs = runs
                .map_err(|e| debug!(volume = self.0.id, error = %e, "StatusMany failed; asking chunk by chunk"))
                .ok()?;
            for (i, run) in slots.into_iter().zip(runs) {
                out[i] = run;
            }
        }
        Some(out)
    }
}

fn bytes_of(lba: u64, blocks: u64) -> (u64, u64) {
    (lba * BLOCK_SIZE as u64, blocks * BLOCK_SIZE as u64)
}

#[async_trait]
impl BlockBackend for PoolVolume {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    /// SDS to SDS when the source is a pool volume too; through the gateway otherwise.
    async fn copy_from(
        &self,
        dst_lba: u64,
        src: &dyn BlockBackend,
        src_lba: u64,
        blocks: u64,
    ) -> Result<(), BackendError> {
        match src.as_any().downcast_ref::<PoolVolume>() {
            Some(from) => Ok(self.copy_between(from, dst_lba, src_lba, blocks).await?),
            None => copy_through(self, dst_lba, src, src_lba, blocks, false).await,
        }
    }

    fn num_blocks(&self) -> u64 {
        self.0.layout().size_bytes / BLOCK_SIZE as u64
    }

    fn thin(&self) -> bool {
        self.0.layout().thin
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BackendError> {
        let (start, len) = bytes_of(lba, blocks as u64);
        let parts = self
            .each(start, len, |inner, p| async move {
                inner
                    .on_chunk(p.chunk, |c, r| async move {
                        c.read(r.at, p.offset, p.len).await
                    })
                    .await
            })
            .await?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    async fn write(&self, lba: u64, data: SgList, fua: bool) -> Result<(), BackendError> {
        let (start, len) = bytes_of(lba, data.len() as u64 / BLOCK_SIZE as u64);
        let data = Arc::new(data);
        self.each(start, len, |inner, p| {
            let data = data.clone();
            async move {
                let seg = data.slice(p.buf_offset, p.len as usize);
                inner
                    .on_chunk(p.chunk, |c, r| {
                        let seg = seg.clone();
                        async move { c.write(r.at, p.offset, seg, fua, r.secondary).await }
                    })
                    .await
            }
        })
        .await?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(self.0.flush().await?)
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        let (start, len) = bytes_of(lba, blocks);
        let unmap = unmap && self.thin();
        self.each(start, len, |inner, p| async move {
            inner
                .on_chunk(p.chunk, |c, r| async move {
                    c.write_zeroes(r.at, p.offset, p.len, unmap, r.secondary)
                        .await
                })
                .await
        })
        .await?;
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        self.write_zeroes(lba, blocks, true).await
    }

    /// ORWRITE is cut at chunk boundaries, each piece ORed atomically by its primary.
    /// COMPARE AND WRITE and WRITE ATOMIC must lie in one chunk (the Block Limits page
    /// keeps them there): a chunk's primary is the one place that can order them
    /// against every gateway's writes.
    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        fua: bool,
    ) -> Result<AtomicOutcome, BackendError> {
        let blocks = op.len() as u64 / BLOCK_SIZE as u64;
        let (start, len) = bytes_of(lba, blocks);
        if len == 0 {
            return Ok(AtomicOutcome::Done);
        }
        let (kind, payload) = match op {
            AtomicOp::Or(data) => {
                let data = Arc::new(data);
                self.each(start, len, |inner, p| {
                    let data = data.clone();
                    async move {
                        let seg = data.slice(p.buf_offset, p.len as usize);
                        inner
                            .on_chunk(p.chunk, |c, r| {
                                let seg = seg.clone();
                                async move {
                                    c.atomic(r.at, p.offset, AtomicKind::Or, seg, fua, r.secondary)
                                        .await
                                }
                            })
                            .await
                    }
                })
                .await?;
                return Ok(AtomicOutcome::Done);
            }
            AtomicOp::CompareAndWrite { compare, write } => {
                let mut both = compare;
                for seg in write.segments() {
                    both.push(seg.clone());
                }
                (AtomicKind::CompareAndWrite, both)
            }
            AtomicOp::Write(data) => (AtomicKind::Write, data),
        };
        let mut all = pieces(start, len);
        let (Some(p), None) = (all.next(), all.next()) else {
            return Err(BackendError::NotAtomic { lba, blocks });
        };
        let idempotent = kind != AtomicKind::CompareAndWrite;
        let miscompare = self
            .0
            .on_chunk_retrying(p.chunk, idempotent, |c, r| {
                let payload = payload.clone();
                async move {
                    c.atomic(r.at, p.offset, kind, payload, fua, r.secondary)
                        .await
                }
            })
            .await?;
        Ok(match miscompare {
            Some(offset) => AtomicOutcome::Miscompare { offset },
            None => AtomicOutcome::Done,
        })
    }

    /// A run that reaches the end of its chunk goes on through the next chunks in the
    /// same state, asked for [`STATUS_LOOKAHEAD`] at once: merging a long run then
    /// costs round trips side by side instead of one after another.
    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        let (start, _) = bytes_of(lba, 0);
        let chunk = start / CHUNK_SIZE;
        let offset = (start % CHUNK_SIZE) as u32;
        let (mapped, run) = self
            .0
            .on_chunk(chunk, |c, r| async move { c.status(r.at, offset).await })
            .await?;
        let mut run = u64::from(run);
        let size = self.0.layout().size_bytes;
        let next = (chunk + 1) * CHUNK_SIZE;
        if u64::from(offset) + run >= CHUNK_SIZE && next < size {
            let len = (STATUS_LOOKAHEAD * CHUNK_SIZE).min(size - next);
            let ahead = match self.status_ahead(chunk + 1, len.div_ceil(CHUNK_SIZE)).await {
                Some(runs) => Ok(runs),
                // An SDS that cannot answer StatusMany (or failed): chunk by chunk,
                // with the usual failover.
                None => {
                    self.each(next, len, |inner, p| async move {
                        inner
                            .on_chunk(p.chunk, |c, r| async move { c.status(r.at, 0).await })
                            .await
                    })
                    .await
                }
            };
            // The look-ahead only lengthens the answer: failing, it leaves the first
            // chunk's run, which is already right.
            for (m, r) in ahead.unwrap_or_default() {
                if m != mapped {
                    break;
                }
                run += u64::from(r);
                if u64::from(r) < CHUNK_SIZE {
                    break;
                }
            }
        }
        let blocks = (run / BLOCK_SIZE as u64).max(1);
        let left = self.num_blocks().saturating_sub(lba);
        let state = if mapped {
            Provisioning::Mapped
        } else {
            Provisioning::Deallocated
        };
        Ok((state, blocks.min(left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::api::{
        ClaimDevice, DeviceLoc, Protection, SdsControl, SdsControlReply, NO_COPY,
    };
    use crate::cluster::chunk::wire::{CopySource, SourceCopy};
    use crate::cluster::chunk::{ChunkClient, ChunkRef};
    use crate::sds::{self, SdsHandle, SdsOptions};

    const MIB: u64 = 1 << 20;

    async fn sds_node(dir: &tempfile::TempDir, id: u64) -> SdsHandle {
        let dev = dir.path().join(format!("dev{id}"));
        std::fs::File::create(&dev)
            .unwrap()
            .set_len(32 * MIB)
            .unwrap();
        let h = sds::start(SdsOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join(format!("sds{id}")),
            mdm: None,
            local_socket: true,
        })
        .await
        .unwrap();
        // The SDS serves data only under a lease from an MDM.
        let mdm = sds::testutil::FakeMdm::start(600_000).await;
        let c = ChunkClient::new(h.addr);
        c.control(&SdsControl::Claim {
            system_id: 1,
            sds_id: id,
            sds_name: format!("s{id}"),
            mdm_port: mdm.port,
            devices: vec![ClaimDevice {
                device_id: id * 10,
                path: dev.display().to_string(),
                pool_id: 5,
            }],
        })
        .await
        .unwrap();
        sds::testutil::until_served(&c, id * 10).await;
        h
    }

    /// Two SDS that know each other and a 4-chunk thin volume alternating primaries.
    async fn setup(dir: &tempfile::TempDir) -> (PoolVolume, Vec<SdsHandle>) {
        let a = sds_node(dir, 1).await;
        let b = sds_node(dir, 2).await;
        let peers = vec![(1, a.addr), (2, b.addr)];
        for h in [&a, &b] {
            ChunkClient::new(h.addr)
                .control(&SdsControl::Peers {
                    peers: peers.clone(),
                })
                .await
                .unwrap();
        }
        let layout = Layout {
            volume_id: 42,
            epoch: 1,
            size_bytes: 4 * MIB,
            thin: true,
            protection: Protection::TwoCopies,
            devices: vec![
                DeviceLoc {
                    sds_id: 1,
                    device_id: 10,
                    addr: a.addr,
                    down: false,
                },
                DeviceLoc {
                    sds_id: 2,
                    device_id: 20,
                    addr: b.addr,
                    down: false,
                },
            ],
            chunks: vec![[0, 1], [1, 0], [0, 1], [1, 0]],
        };
        let vol = PoolVolume::new(layout, "127.0.0.1:1".into(), Arc::new(SdsPool::default()));
        (vol, vec![a, b])
    }

    /// Chunk 1 of `volume` as both of its copies hold it (devices 10 on the first
    /// SDS, 20 on the second), checked equal.
    async fn chunk_1_copies(nodes: &[SdsHandle], volume: u64) -> Bytes {
        let at = |device| ChunkRef {
            volume,
            chunk: 1,
            device,
            epoch: 1,
        };
        let a = ChunkClient::new(nodes[0].addr)
            .read(at(10), 0, MIB as u32)
            .await
            .unwrap();
        let b = ChunkClient::new(nodes[1].addr)
            .read(at(20), 0, MIB as u32)
            .await
            .unwrap();
        assert_eq!(a, b, "the two copies of chunk 1 differ");
        a
    }

    #[tokio::test]
    async fn io_spans_chunks_and_lands_on_both_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, nodes) = setup(&dir).await;
        assert_eq!(vol.num_blocks(), 4 * MIB / 512);
        // 1.5 MiB from 0.75 MiB: three pieces over chunks 0, 1 and 2... (0.75..2.25 MiB)
        let data: Vec<u8> = (0..3 * MIB / 2).map(|i| (i % 253) as u8).collect();
        let lba = 3 * MIB / 4 / 512;
        vol.write(lba, SgList::from(data.clone()), true)
            .await
            .unwrap();
        let back = vol.read(lba, (data.len() / 512) as u32).await.unwrap();
        assert_eq!(&back[..], &data[..]);
        vol.flush().await.unwrap();
        // Chunk 1's secondary (SDS 1) holds the same bytes as its primary (SDS 2).
        let p = chunk_1_copies(&nodes, 42).await;
        assert_eq!(&p[..], &data[(MIB / 4) as usize..(MIB / 4 + MIB) as usize]);
    }

    #[tokio::test]
    async fn thin_chunks_read_zero_until_written_and_unmap_deallocates() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, _nodes) = setup(&dir).await;
        assert!(vol.thin());
        // One answer covers every chunk in the same state, not just the first.
        let (state, run) = vol.allocation_status(0).await.unwrap();
        assert_eq!(state, Provisioning::Deallocated);
        assert_eq!(run, 4 * MIB / 512);
        let zero = vol.read(2048, 8).await.unwrap();
        assert!(zero.iter().all(|b| *b == 0));
        vol.write(2048, SgList::from(vec![7u8; 4096]), false)
            .await
            .unwrap();
        assert_eq!(
            vol.allocation_status(2048).await.unwrap(),
            (Provisioning::Mapped, 8)
        );
        // The run from chunk 0 stops where chunk 1's mapped blocks begin; the run
        // after them reaches the end of the volume.
        assert_eq!(
            vol.allocation_status(0).await.unwrap(),
            (Provisioning::Deallocated, 2048)
        );
        assert_eq!(
            vol.allocation_status(2056).await.unwrap(),
            (Provisioning::Deallocated, 4 * 2048 - 2056)
        );
        vol.unmap(2048, 2048).await.unwrap();
        assert_eq!(
            vol.allocation_status(2048).await.unwrap().0,
            Provisioning::Deallocated
        );
        assert!(vol.read(2048, 8).await.unwrap().iter().all(|b| *b == 0));
    }

    /// A second 4-chunk thin volume on the same two SDS, primaries the other way round.
    fn second_volume(vol: &PoolVolume) -> PoolVolume {
        let mut l = (*vol.0.layout()).clone();
        l.volume_id = 43;
        l.chunks = vec![[1, 0], [0, 1], [1, 0], [0, 1]];
        PoolVolume::new(l, "127.0.0.1:1".into(), vol.0.sds.clone())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[tokio::test]
    async fn copy_between_pool_volumes_runs_on_the_sds_and_keeps_thin_chunks_unallocated() {
        let dir = tempfile::tempdir().unwrap();
        let (src, nodes) = setup(&dir).await;
        let dst = second_volume(&src);
        // 1.5 MiB written from 0.25 MiB: chunks 0 and 1 of the source; 2 and 3 stay
        // unwritten.
        let data = pattern(3 * MIB as usize / 2, 5);
        src.write(512, SgList::from(data.clone()), false)
            .await
            .unwrap();
        // Copy 3 MiB from 0.25 MiB to 0.75 MiB - 4 KiB: pieces cut at both sides'
        // chunk boundaries.
        let blocks = 3 * MIB / 512;
        let dst_lba = (3 * MIB / 4 - 4096) / 512;
        dst.copy_from(dst_lba, &src, 512, blocks).await.unwrap();
        let back = dst.read(dst_lba, data.len() as u32 / 512).await.unwrap();
        assert_eq!(&back[..], &data[..]);
        // The part copied from never-written source chunks reads as zeros and did not
        // allocate destination chunk 3 (it lies wholly in that part).
        let (state, _) = dst.allocation_status(3 * MIB / 512).await.unwrap();
        assert_eq!(state, Provisioning::Deallocated);
        let tail = dst
            .read(dst_lba + data.len() as u64 / 512, 2048)
            .await
            .unwrap();
        assert!(tail.iter().all(|b| *b == 0));
        // Both copies of destination chunk 1 hold the same bytes.
        let p = chunk_1_copies(&nodes, 43).await;
        let from = (MIB / 4 + 4096) as usize;
        assert_eq!(&p[..], &data[from..from + MIB as usize]);
    }

    #[tokio::test]
    async fn overlapping_copy_within_a_pool_volume_is_a_memmove() {
        for (from, to) in [(0u64, 1u64), (1, 0), (0, 2048 + 7), (2048 + 7, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let (vol, _nodes) = setup(&dir).await;
            let blocks = 2 * MIB / 512;
            let data = pattern(2 * MIB as usize, from as u8);
            vol.write(from, SgList::from(data.clone()), false)
                .await
                .unwrap();
            vol.copy_from(to, &vol, from, blocks).await.unwrap();
            let back = vol.read(to, blocks as u32).await.unwrap();
            assert!(back[..] == data[..], "{from} -> {to}");
        }
    }

    #[tokio::test]
    async fn copy_falls_back_to_the_other_source_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (src, nodes) = setup(&dir).await;
        let dst = second_volume(&src);
        let data = pattern(MIB as usize, 9);
        src.write(0, SgList::from(data.clone()), false)
            .await
            .unwrap();
        // Source chunk 0: primary device 10 on SDS 1, secondary device 20 on SDS 2.
        // Named first: an SDS nobody knows; the destination primary (SDS 2 for
        // chunk 0 of volume 43) falls back to the second copy, its own device.
        let source = CopySource {
            volume: 42,
            chunk: 0,
            epoch: 1,
            offset: 0,
            copies: [
                Some(SourceCopy {
                    sds: 99,
                    device: 990,
                }),
                Some(SourceCopy { sds: 2, device: 20 }),
            ],
        };
        let at = ChunkRef {
            volume: 43,
            chunk: 0,
            device: 20,
            epoch: 1,
        };
        let mirror = crate::cluster::chunk::Secondary::Mirror(crate::cluster::chunk::Mirror {
            sds: 1,
            device: 10,
        });
        ChunkClient::new(nodes[1].addr)
            .copy(at, 0, MIB as u32, &source, true, true, mirror)
            .await
            .unwrap();
        assert_eq!(&dst.read(0, 2048).await.unwrap()[..], &data[..]);
        // With no readable copy at all the copy fails and says why.
        let mut none = source;
        none.copies[1] = None;
        let e = ChunkClient::new(nodes[1].addr)
            .copy(at, 0, 4096, &none, false, false, mirror)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no copy of source chunk"), "{e}");
        // A stale source epoch is reported as such, for the gateway to refetch.
        let mut future = src.0.layout().as_ref().clone();
        future.epoch = 5;
        src.set_layout(future);
        src.write(0, SgList::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        let mut stale = source;
        stale.copies[0] = None;
        stale.copies.swap(0, 1);
        let e = ChunkClient::new(nodes[1].addr)
            .copy(at, 0, 4096, &stale, false, false, mirror)
            .await
            .unwrap_err();
        assert!(matches!(e, ChunkError::StaleEpoch { .. }), "{e}");
    }

    #[tokio::test]
    async fn copy_from_another_kind_of_volume_goes_through_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let (dst, _nodes) = setup(&dir).await;
        let mem = crate::backend::MemoryBackend::new(8192);
        let data = pattern(MIB as usize + 4096, 3);
        mem.write(8, SgList::from(data.clone()), false)
            .await
            .unwrap();
        dst.copy_from(100, &mem, 8, data.len() as u64 / 512)
            .await
            .unwrap();
        let back = dst.read(100, data.len() as u32 / 512).await.unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[tokio::test]
    async fn atomic_ops_go_to_the_primary_or_are_refused_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, nodes) = setup(&dir).await;
        // Block 2047 is the last of chunk 0 (primary SDS 1), 2048 the first of chunk 1.
        vol.write(2047, SgList::from(vec![0x0F; 1024]), false)
            .await
            .unwrap();
        let caw = |compare: u8, write: u8| AtomicOp::CompareAndWrite {
            compare: vec![compare; 512].into(),
            write: vec![write; 512].into(),
        };
        let r = vol.atomic(2048, caw(0x0F, 0x10), true).await.unwrap();
        assert_eq!(r, AtomicOutcome::Done);
        let r = vol.atomic(2048, caw(0x0F, 0x11), false).await.unwrap();
        assert_eq!(r, AtomicOutcome::Miscompare { offset: 0 });
        // ORWRITE across the chunk boundary: each chunk ORed at its own primary.
        vol.atomic(2047, AtomicOp::Or(vec![0x40; 1024].into()), false)
            .await
            .unwrap();
        let d = vol.read(2047, 2).await.unwrap();
        assert!(d[..512].iter().all(|&b| b == 0x4F) && d[512..].iter().all(|&b| b == 0x50));
        // The secondary of chunk 1 (SDS 1) has the result too.
        let s = ChunkClient::new(nodes[0].addr)
            .read(
                ChunkRef {
                    volume: 42,
                    chunk: 1,
                    device: 10,
                    epoch: 1,
                },
                0,
                512,
            )
            .await
            .unwrap();
        assert_eq!(s, vec![0x50; 512]);
        // A compare-and-write or atomic write spanning two chunks cannot be atomic.
        let span = AtomicOp::Write(vec![1; 1024].into());
        let e = vol.atomic(2047, span, false).await.unwrap_err();
        assert!(
            matches!(
                e,
                BackendError::NotAtomic {
                    lba: 2047,
                    blocks: 2
                }
            ),
            "{e}"
        );
        assert_eq!(vol.read(2047, 1).await.unwrap(), vec![0x4F; 512]);
    }

    #[tokio::test]
    async fn a_full_pool_is_no_space_not_a_medium_error() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, _nodes) = setup(&dir).await;
        // 32 MiB devices hold fewer than 32 chunks; a 64-chunk layout overflows them.
        let mut l = (*vol.0.layout()).clone();
        l.size_bytes = 64 * MIB;
        l.chunks = (0..64)
            .map(|i| if i % 2 == 0 { [0, 1] } else { [1, 0] })
            .collect();
        vol.set_layout(l);
        let mut last = Ok(());
        for c in 0..64u64 {
            last = vol
                .write(c * 2048, SgList::from(vec![1u8; 512]), false)
                .await;
            if last.is_err() {
                break;
            }
        }
        assert!(matches!(last, Err(BackendError::NoSpace)), "{last:?}");
    }

    /// A stand-in MDM on a real port: answers GetLayout with its current layout and
    /// ReportSdsFailure with `down`, first switching to `after_report` if set.
    struct FakeMdm {
        addr: String,
        state: Arc<std::sync::Mutex<MdmState>>,
    }

    struct MdmState {
        layout: Layout,
        after_report: Option<Layout>,
        down: bool,
        reports: Vec<u64>,
    }

    impl FakeMdm {
        async fn start(layout: Layout, after_report: Option<Layout>, down: bool) -> FakeMdm {
            use crate::cluster::api::MdmResponse;
            use crate::cluster::frame;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let state = Arc::new(std::sync::Mutex::new(MdmState {
                layout,
                after_report,
                down,
                reports: Vec::new(),
            }));
            let st = state.clone();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let st = st.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(req)) = frame::read::<_, MdmRequest>(&mut s).await {
                            let reply = {
                                let mut st = st.lock().unwrap();
                                match req {
                                    MdmRequest::GetLayout { .. } => {
                                        MdmReply::Layout(st.layout.clone())
                                    }
                                    MdmRequest::ReportSdsFailure { sds_id, .. } => {
                                        st.reports.push(sds_id);
                                        if let Some(next) = st.after_report.take() {
                                            st.layout = next;
                                        }
                                        MdmReply::SdsVerdict { down: st.down }
                                    }
                                    other => panic!("unexpected {other:?}"),
                                }
                            };
                            let resp: MdmResponse = Ok(reply);
                            if frame::write(&mut s, &resp).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            FakeMdm { addr, state }
        }

        fn reports(&self) -> Vec<u64> {
            self.state.lock().unwrap().reports.clone()
        }
    }

    /// `vol`'s layout after the MDM declared SDS 1 down: every chunk's copy on SDS 2
    /// is its primary, with no secondary; chunks in `lost` have their only copy on SDS 1.
    fn without_sds_1(vol: &PoolVolume, lost: &[usize]) -> Layout {
        let mut l = (*vol.0.layout()).clone();
        l.epoch += 1;
        l.devices[0].down = true;
        for (i, c) in l.chunks.iter_mut().enumerate() {
            *c = if lost.contains(&i) {
                [0, NO_COPY]
            } else {
                [1, NO_COPY]
            };
        }
        l
    }

    /// Chunks of volume 42 `node` holds, and those it marked dirty.
    async fn held_and_dirty(node: &SdsHandle) -> (Vec<u64>, Vec<u64>) {
        let c = ChunkClient::new(node.addr);
        let SdsControlReply::Inventory(inv) = c.control(&SdsControl::Inventory).await.unwrap()
        else {
            panic!("no inventory")
        };
        let held = inv.devices.iter().flat_map(|d| &d.chunks);
        let held = held.filter(|c| c.0 == 42).map(|c| c.1).collect();
        let ask = SdsControl::Dirty {
            volume: 42,
            epoch: 0,
        };
        let SdsControlReply::Dirty(dirty) = c.control(&ask).await.unwrap() else {
            panic!("no dirty list")
        };
        (held, dirty)
    }

    #[tokio::test]
    async fn single_copy_writes_are_not_degraded_and_unmap_frees_their_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, nodes) = setup(&dir).await;
        // Chunks 0 and 1 keep a single copy by design; chunks 2 and 3 are degraded
        // chunks of a two-copy pool, for contrast.
        let mut l = (*vol.0.layout()).clone();
        l.chunks = vec![[0, NO_COPY], [1, NO_COPY], [0, NO_COPY], [1, NO_COPY]];
        l.protection = Protection::SingleCopy;
        vol.set_layout(l.clone());
        let data = pattern(2 * MIB as usize, 3);
        vol.write(0, SgList::from(data.clone()), false)
            .await
            .unwrap();
        assert_eq!(vol.read(0, 2 * 2048).await.unwrap(), Bytes::from(data));
        // An ORWRITE is a single-copy write too, at the primary.
        vol.atomic(2047, AtomicOp::Or(vec![0x40; 1024].into()), false)
            .await
            .unwrap();
        l.protection = Protection::TwoCopies;
        vol.set_layout(l);
        vol.write(2 * 2048, SgList::from(pattern(2 * MIB as usize, 4)), false)
            .await
            .unwrap();
        assert_eq!(held_and_dirty(&nodes[0]).await, (vec![0, 2], vec![2]));
        assert_eq!(held_and_dirty(&nodes[1]).await, (vec![1, 3], vec![3]));
        // A whole-chunk UNMAP frees a single copy's slot; a degraded chunk keeps its
        // slot (and mark) for the copy that may return.
        vol.unmap(2 * 2048, 2048).await.unwrap();
        let mut l = (*vol.0.layout()).clone();
        l.protection = Protection::SingleCopy;
        vol.set_layout(l);
        vol.unmap(0, 2048).await.unwrap();
        assert_eq!(held_and_dirty(&nodes[0]).await, (vec![2], vec![2]));
    }

    /// The same volume, asking `mdm` for its layouts.
    fn served_by(vol: &PoolVolume, mdm: &FakeMdm) -> PoolVolume {
        PoolVolume::new(
            (*vol.0.layout()).clone(),
            mdm.addr.clone(),
            vol.0.sds.clone(),
        )
    }

    #[tokio::test]
    async fn a_dead_primary_is_reported_once_and_io_follows_the_new_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, mut nodes) = setup(&dir).await;
        let data = pattern(4 * MIB as usize, 1);
        vol.write(0, SgList::from(data.clone()), false)
            .await
            .unwrap();
        let mdm = FakeMdm::start(
            (*vol.0.layout()).clone(),
            Some(without_sds_1(&vol, &[])),
            true,
        )
        .await;
        let vol = served_by(&vol, &mdm);
        nodes.remove(0).stop();
        // Many requests fail on SDS 1 at once (chunks 0 and 2 have their primary
        // there): one report, then all of them go to the copies on SDS 2.
        let mut set = JoinSet::new();
        for i in 0..32u64 {
            let vol = vol.clone();
            let lba = (i % 4) * 2048 + i;
            let old = data[lba as usize * 512..][..512].to_vec();
            set.spawn(async move {
                if i % 2 == 0 {
                    vol.write(lba, SgList::from(vec![i as u8; 512]), false)
                        .await?;
                    Ok::<_, BackendError>((lba, true))
                } else {
                    Ok((lba, vol.read(lba, 1).await? == old))
                }
            });
        }
        while let Some(r) = set.join_next().await {
            let (lba, ok) = r.unwrap().unwrap();
            assert!(ok, "block {lba} read back wrong");
        }
        assert_eq!(mdm.reports(), vec![1]);
        assert_eq!(vol.epoch(), 2);
        for i in (0..32u64).step_by(2) {
            let lba = (i % 4) * 2048 + i;
            assert_eq!(vol.read(lba, 1).await.unwrap(), vec![i as u8; 512]);
        }
        // SYNCHRONIZE CACHE skips the down SDS.
        vol.flush().await.unwrap();
    }

    #[tokio::test]
    async fn compare_and_write_on_a_dead_primary_fails_but_the_next_one_is_routed_anew() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, mut nodes) = setup(&dir).await;
        vol.write(0, SgList::from(vec![5u8; 512]), false)
            .await
            .unwrap();
        let mdm = FakeMdm::start(
            (*vol.0.layout()).clone(),
            Some(without_sds_1(&vol, &[])),
            true,
        )
        .await;
        let vol = served_by(&vol, &mdm);
        nodes.remove(0).stop();
        let caw = || AtomicOp::CompareAndWrite {
            compare: vec![5u8; 512].into(),
            write: vec![6u8; 512].into(),
        };
        // It may have executed before the SDS died: not repeated, but reported.
        let e = vol.atomic(0, caw(), false).await.unwrap_err();
        assert!(matches!(e, BackendError::Io(_)), "{e}");
        assert_eq!((mdm.reports(), vol.epoch()), (vec![1], 2));
        assert_eq!(
            vol.atomic(0, caw(), false).await.unwrap(),
            AtomicOutcome::Done
        );
        assert_eq!(vol.read(0, 1).await.unwrap(), vec![6u8; 512]);
    }

    #[tokio::test]
    async fn a_chunk_whose_last_copy_is_down_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, mut nodes) = setup(&dir).await;
        // Chunk 0 lost both copies' SDS but the first; it stays on SDS 1, marked down.
        let mdm = FakeMdm::start(
            (*vol.0.layout()).clone(),
            Some(without_sds_1(&vol, &[0])),
            true,
        )
        .await;
        let vol = served_by(&vol, &mdm);
        nodes.remove(0).stop();
        let t = Instant::now();
        let e = vol.read(0, 1).await.unwrap_err();
        assert!(matches!(e, BackendError::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains("chunk 0 of volume 000000000000002a"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Known unavailable now: no more reports, no waiting.
        let e = vol
            .write(0, SgList::from(vec![1u8; 512]), false)
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::Unavailable(_)), "{e}");
        assert_eq!(mdm.reports(), vec![1]);
        // Chunk 2 (primary on SDS 1 too) has its copy on SDS 2.
        vol.read(2 * 2048, 1).await.unwrap();
    }

    #[tokio::test]
    async fn an_sds_that_comes_back_is_retried_after_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, mut nodes) = setup(&dir).await;
        vol.write(0, SgList::from(vec![3u8; 512]), false)
            .await
            .unwrap();
        // The MDM finds SDS 1 alive (it restarts) and changes nothing.
        let mdm = FakeMdm::start((*vol.0.layout()).clone(), None, false).await;
        let vol = served_by(&vol, &mdm);
        let a = nodes.remove(0);
        let addr = a.addr;
        a.stop();
        let data_dir = dir.path().join("sds1");
        let back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            sds::start(SdsOptions {
                listen: addr,
                data_dir,
                mdm: None,
                local_socket: true,
            })
            .await
            .unwrap()
        });
        assert_eq!(vol.read(0, 1).await.unwrap(), vec![3u8; 512]);
        assert!(!mdm.reports().is_empty());
        assert!(mdm.reports().iter().all(|&s| s == 1));
        assert_eq!(vol.epoch(), 1);
        back.await.unwrap().stop();
    }
}
