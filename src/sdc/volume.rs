//! A pool volume as a [`BlockBackend`]: block I/O cut into chunk I/O and sent to the
//! SDS holding each chunk's primary copy, which mirrors writes to the secondary.
//!
//! The layout is cached from the MDM. When an SDS says the cached epoch is stale, or
//! cannot be reached (it may have restarted at a new address), the layout is fetched
//! again and the piece retried once on the new route.

use super::route::{pieces, route, Piece, RouteError};
use super::sds_pool::SdsPool;
use crate::backend::{BackendError, BlockBackend, Provisioning, SgList, BLOCK_SIZE};
use crate::cluster::api::{Layout, MdmReply, MdmRequest, MdmResponse, CHUNK_SIZE};
use crate::cluster::chunk::ChunkError;
use crate::cluster::frame;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{info, warn};

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
}

impl From<VolumeError> for BackendError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Chunk {
                source: ChunkError::NoSpace,
                ..
            } => BackendError::NoSpace,
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Asks the MDM for a volume's current layout.
pub async fn fetch_layout(mdm: &str, volume: u64) -> Result<Layout, VolumeError> {
    let err = |reason: String| VolumeError::Layout {
        volume,
        mdm: mdm.to_string(),
        reason,
    };
    let resp: MdmResponse = frame::call(
        mdm,
        &MdmRequest::GetLayout { volume_id: volume },
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    match resp {
        Ok(MdmReply::Layout(l)) => Ok(l),
        Ok(other) => Err(err(format!("unexpected reply {other:?}"))),
        Err(msg) => Err(err(msg)),
    }
}

#[derive(Debug)]
struct Inner {
    id: u64,
    mdm: String,
    sds: Arc<SdsPool>,
    layout: RwLock<Arc<Layout>>,
}

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

    /// Runs one chunk operation on the chunk's current route; on a stale epoch or an
    /// unreachable SDS, refreshes the layout and retries once if the route moved.
    async fn on_chunk<T, F, Fut>(&self, chunk: u64, op: F) -> Result<T, VolumeError>
    where
        F: Fn(Arc<crate::cluster::chunk::ChunkClient>, crate::sdc::route::Route<'_>) -> Fut,
        Fut: Future<Output = Result<T, ChunkError>>,
    {
        let layout = self.layout();
        let r = route(&layout, chunk)?;
        let first = op(self.sds.client(r.primary.addr), r).await;
        let err = match first {
            Ok(v) => return Ok(v),
            Err(e @ (ChunkError::StaleEpoch { .. } | ChunkError::Unreachable { .. })) => e,
            Err(source) => {
                return Err(VolumeError::Chunk {
                    volume: self.id,
                    chunk,
                    source,
                })
            }
        };
        let before = (r.at, r.primary.addr);
        let fresh = fetch_layout(&self.mdm, self.id).await?;
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        let layout = self.layout();
        let r = route(&layout, chunk)?;
        if (r.at, r.primary.addr) == before {
            warn!(volume = %format!("{:016x}", self.id), chunk, error = %err, "chunk I/O failed and the layout has not moved");
            return Err(VolumeError::Chunk {
                volume: self.id,
                chunk,
                source: err,
            });
        }
        info!(volume = %format!("{:016x}", self.id), chunk, epoch = layout.epoch, "retrying chunk I/O on the refreshed layout");
        op(self.sds.client(r.primary.addr), r)
            .await
            .map_err(|source| VolumeError::Chunk {
                volume: self.id,
                chunk,
                source,
            })
    }
}

fn bytes_of(lba: u64, blocks: u64) -> (u64, u64) {
    (lba * BLOCK_SIZE as u64, blocks * BLOCK_SIZE as u64)
}

#[async_trait]
impl BlockBackend for PoolVolume {
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
                        async move { c.write(r.at, p.offset, seg, fua, r.mirror).await }
                    })
                    .await
            }
        })
        .await?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        let layout = self.0.layout();
        let mut addrs: Vec<_> = layout.devices.iter().map(|d| d.addr).collect();
        addrs.sort();
        addrs.dedup();
        let mut set = JoinSet::new();
        for a in addrs {
            let c = self.0.sds.client(a);
            set.spawn(async move { c.flush().await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| BackendError::Io(std::io::Error::other(e.to_string())))?
                .map_err(|e| BackendError::Io(std::io::Error::other(e.to_string())))?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        let (start, len) = bytes_of(lba, blocks);
        let unmap = unmap && self.thin();
        self.each(start, len, |inner, p| async move {
            inner
                .on_chunk(p.chunk, |c, r| async move {
                    c.write_zeroes(r.at, p.offset, p.len, unmap, r.mirror).await
                })
                .await
        })
        .await?;
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        self.write_zeroes(lba, blocks, true).await
    }

    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        let (start, _) = bytes_of(lba, 0);
        let chunk = start / CHUNK_SIZE;
        let offset = (start % CHUNK_SIZE) as u32;
        let (mapped, run) = self
            .0
            .on_chunk(chunk, |c, r| async move { c.status(r.at, offset).await })
            .await?;
        let blocks = (run as u64 / BLOCK_SIZE as u64).max(1);
        let left = self.num_blocks().saturating_sub(lba);
        let state = if mapped {
            Provisioning::Mapped
        } else {
            Provisioning::Deallocated
        };
        Ok((state, blocks.min(left)))
    }
}
