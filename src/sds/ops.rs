//! Executing one chunk request: admission (the lease, then the epoch), the chunk lock
//! (`locks`), the device operation on a blocking thread, and for a primary write the
//! forward to the mirror SDS, run concurrently; dirty marking of writes the mirror did
//! not get.
//!
//! Admission comes *after* the chunk lock for every op of a primary that takes one
//! (shared: Read, Write and WriteZeroes, Copy's destination; exclusive: Atomic,
//! Replicate). Replicate raises the epoch under the exclusive lock, so a write that
//! was admitted under the old epoch has finished (on every copy of the old layout)
//! before the new copy is filled, and one still waiting for the lock is refused
//! rather than writing only the old copies after it.

use super::device::{ChunkKey, Device};
use super::{Sds, SdsError};
use crate::backend::fileops::runs_inline;
use crate::backend::{AtomicOp, SgList};
use crate::cluster::api::{fmt_id, SdsControl};
use crate::cluster::chunk::arena::{Dest, Mapping};
use crate::cluster::chunk::wire::{
    decode_status_entries, encode_status_runs, AtomicKind, CopySource, Op, RequestHeader,
    SourceCopy, FLAG_FORWARDED, FLAG_FUA, FLAG_IN_ARENA, FLAG_MAPPED, FLAG_MISCOMPARE,
    FLAG_SINGLE_COPY,
};
use crate::cluster::chunk::{ChunkError, ChunkRef, Mirror};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// A successful reply: response flags, aux field and payload.
#[derive(Debug, Default)]
pub struct Answer {
    pub flags: u8,
    pub aux: u64,
    pub payload: Bytes,
}

impl Answer {
    pub(super) fn data(payload: Bytes) -> Self {
        Self {
            payload,
            ..Self::default()
        }
    }
}

/// Where a request came from: the TCP peer (none on the local socket), and the shared
/// memory that connection lent for reads, if any.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    pub peer: Option<SocketAddr>,
    pub arena: Option<Arc<Mapping>>,
}

pub async fn execute(
    sds: &Arc<Sds>,
    h: RequestHeader,
    payload: Bytes,
    origin: &Origin,
) -> Result<Answer, ChunkError> {
    match h.op {
        Op::Control => match origin.peer {
            Some(peer) => control(sds, payload, peer).await,
            // The SDS learns its MDM's address from where control messages come from.
            None => Err(ChunkError::Refused(
                "control messages must come over TCP, from the MDM's address".into(),
            )),
        },
        Op::Attach => Err(ChunkError::Refused(
            "Attach is only valid as the first request on the SDS's local socket".into(),
        )),
        Op::Flush => {
            let sds = sds.clone();
            blocking(move || sds.store.sync_all()).await?;
            Ok(Answer::default())
        }
        Op::StatusMany => {
            admit(sds, h.at)?;
            let (sds, volume) = (sds.clone(), h.at.volume);
            let entries = decode_status_entries(&payload);
            // Hundreds of lseeks: off the async worker, so other requests go on.
            let runs = blocking(move || {
                entries
                    .into_iter()
                    .map(|(chunk, device)| sds.store.device(device)?.status((volume, chunk), 0))
                    .collect::<Result<Vec<_>, SdsError>>()
            })
            .await?;
            Ok(Answer::data(encode_status_runs(&runs).into()))
        }
        Op::Read | Op::Write | Op::WriteZeroes | Op::Status | Op::Atomic => {
            // Refused early too: a fenced SDS answers at once rather than after a lock.
            sds.lease.check()?;
            let dev = sds.store.device(h.at.device).map_err(|e| e.to_chunk())?;
            let key = (h.at.volume, h.at.chunk);
            match h.op {
                Op::Read => {
                    // Checked before the lock: a bad range is the client's mistake.
                    let dest = match (h.arena, &origin.arena) {
                        (None, _) => None,
                        (Some(at), Some(map)) => {
                            Some(map.dest(at, h.length as usize).ok_or_else(|| {
                                ChunkError::Protocol(format!(
                                    "arena range {at}+{} lies outside the {} bytes lent",
                                    h.length,
                                    map.size()
                                ))
                            })?)
                        }
                        (Some(_), None) => {
                            return Err(ChunkError::Protocol(
                                "ARENA read on a connection that lent no shared memory".into(),
                            ))
                        }
                    };
                    let _order = sds.locks.shared(h.at.volume, h.at.chunk).await;
                    admit(sds, h.at)?;
                    if let Some(dest) = dest {
                        return read_to_arena(dev, key, h, dest).await;
                    }
                    let small = runs_inline(h.length as usize, false);
                    let cached = match small {
                        true => None,
                        false => dev
                            .read_cached(key, h.offset, h.length)
                            .map_err(device_error)?,
                    };
                    let data = match cached {
                        Some(data) => data,
                        None => run(small, move || dev.read(key, h.offset, h.length)).await?,
                    };
                    Ok(Answer::data(data))
                }
                Op::Status => {
                    admit(sds, h.at)?;
                    // Two lseeks on extents the kernel has cached: cheaper than the
                    // hand-off, and GET LBA STATUS sends these by the hundred.
                    let (mapped, run) = run(true, move || dev.status(key, h.offset)).await?;
                    Ok(Answer {
                        flags: if mapped { FLAG_MAPPED } else { 0 },
                        aux: run as u64,
                        payload: Bytes::new(),
                    })
                }
                Op::Atomic => atomic(sds, h, dev, key, payload).await,
                _ => {
                    // A primary's write (naming a mirror, or degraded) is ordered against
                    // Atomic ops and Replicate; a forwarded copy is ordered by its
                    // primary (see `locks`).
                    let _order = match h.forwarded() {
                        false => Some(sds.locks.shared(h.at.volume, h.at.chunk).await),
                        true => None,
                    };
                    admit(sds, h.at)?;
                    write_copies(sds, h, dev, key, SgList::from(payload)).await?;
                    Ok(Answer::default())
                }
            }
        }
        Op::Copy => copy(sds, h, payload).await,
        Op::Replicate => super::replicate::replicate(sds, h).await,
    }
}

/// A Read into the client's shared memory, under the chunk lock the caller holds:
/// cached data inline (the copy is the only one the read costs), the rest on a
/// blocking thread. The reply carries no data.
async fn read_to_arena(
    dev: Arc<Device>,
    key: ChunkKey,
    h: RequestHeader,
    mut dest: Dest,
) -> Result<Answer, ChunkError> {
    let small = runs_inline(h.length as usize, false);
    let cached = dev
        .read_to(key, h.offset, &mut dest, !small)
        .map_err(device_error)?;
    if !cached {
        blocking(move || dev.read_to(key, h.offset, &mut dest, false)).await?;
    }
    Ok(Answer {
        flags: FLAG_IN_ARENA,
        ..Answer::default()
    })
}

/// Admits a data request: this SDS holds a lease, and the request's epoch is not
/// older than the volume's mark (raising it if newer).
pub(super) fn admit(sds: &Sds, at: ChunkRef) -> Result<(), ChunkError> {
    sds.lease.check()?;
    sds.epochs.admit(at.volume, at.epoch)
}

/// Writes (or zeroes) the local copy and, when the request names a mirror, forwards
/// the same request there concurrently; both must succeed. A primary write without a
/// mirror (degraded) marks the chunk dirty before its data is written; one whose
/// forward failed marks it before answering: either way the local copy holds a write
/// the other copy lacks, which is what the MDM asks for when that copy returns. A
/// single copy (SINGLE_COPY) has no other copy to lack anything: nothing is marked,
/// even when its forward to a move's target fails (that target is dropped from the
/// layout, or the write retried to it).
async fn write_copies(
    sds: &Sds,
    h: RequestHeader,
    dev: Arc<Device>,
    key: ChunkKey,
    data: SgList,
) -> Result<(), ChunkError> {
    let degraded = h.mirror.is_none() && !h.forwarded() && !h.single_copy();
    let forward = data.clone();
    let small = runs_inline(h.length as usize, h.fua());
    let local_dev = dev.clone();
    let local = run(small, move || {
        if h.op == Op::Write {
            local_dev.write(key, h.offset, &data, h.fua(), degraded)
        } else {
            local_dev.write_zeroes(key, h.offset, h.length, h.unmap(), h.fua(), degraded)
        }
    });
    match h.mirror {
        None => local.await,
        Some(m) => {
            let (l, r) = tokio::join!(local, mirror(sds, h, forward, m));
            l?;
            if let Err(e) = r {
                if h.single_copy() {
                    return Err(e);
                }
                if let Err(mark) = blocking(move || dev.mark_dirty(key, true)).await {
                    tracing::error!(volume = %fmt_id(key.0), chunk = key.1, error = %mark, "cannot mark a chunk dirty after its mirror failed; a returning mirror may miss this write");
                }
                return Err(e);
            }
            Ok(())
        }
    }
}

/// An Atomic request: under the chunk's exclusive lock, read the range, compute the
/// result (or find the miscompare) and write it to both copies as an ordinary mirrored
/// Write with the request's epoch and FUA. The lock is held until the mirror has
/// answered, so the two copies see Atomic ops and the writes between them in the same
/// order.
async fn atomic(
    sds: &Sds,
    h: RequestHeader,
    dev: Arc<Device>,
    key: ChunkKey,
    payload: Bytes,
) -> Result<Answer, ChunkError> {
    let kind = h
        .atomic_kind()
        .ok_or_else(|| ChunkError::Protocol("Atomic request without a kind".into()))?;
    let len = h.length as usize;
    let _exclusive = sds.locks.exclusive(h.at.volume, h.at.chunk).await;
    admit(sds, h.at)?;
    let result = match kind {
        AtomicKind::Write => payload,
        AtomicKind::CompareAndWrite | AtomicKind::Or => {
            let op = if kind == AtomicKind::Or {
                AtomicOp::Or(payload.into())
            } else {
                AtomicOp::CompareAndWrite {
                    compare: payload.slice(..len).into(),
                    write: payload.slice(len..).into(),
                }
            };
            let reader = dev.clone();
            let small = runs_inline(len, false);
            let current = run(small, move || reader.read(key, h.offset, h.length)).await?;
            match op.apply(&current) {
                Ok(new) => Bytes::from(new),
                Err(offset) => {
                    return Ok(Answer {
                        flags: FLAG_MISCOMPARE,
                        aux: offset,
                        payload: Bytes::new(),
                    })
                }
            }
        }
    };
    let write = RequestHeader {
        op: Op::Write,
        flags: h.flags & (FLAG_FUA | FLAG_SINGLE_COPY),
        payload_len: h.length,
        ..h
    };
    write_copies(sds, write, dev, key, SgList::from(result)).await?;
    Ok(Answer::default())
}

/// Copy (op 8): this SDS holds the destination's primary copy. Reads the source range
/// from whichever source copy answers first in the given order (its own device, or a
/// peer), then stores it like a mirrored Write; a never-written source range becomes
/// a WriteZeroes, so a thin destination is not allocated for it.
async fn copy(sds: &Arc<Sds>, h: RequestHeader, payload: Bytes) -> Result<Answer, ChunkError> {
    let src =
        CopySource::decode(&payload, h.length).map_err(|e| ChunkError::Protocol(e.to_string()))?;
    // Early, so a stale or fenced copy reads no source; checked again under the lock.
    admit(sds, h.at)?;
    let dev = sds.store.device(h.at.device).map_err(|e| e.to_chunk())?;
    // The source is read before the destination's lock is taken: a copy never holds
    // two chunk locks at once, so two copies in opposite directions cannot deadlock.
    let data = read_source(sds, &src, h.length).await?;
    let key = (h.at.volume, h.at.chunk);
    let mut w = h;
    let data = match data {
        Some(data) => {
            w.op = Op::Write;
            w.flags = h.flags & (FLAG_FUA | FLAG_SINGLE_COPY);
            w.payload_len = h.length;
            SgList::from(data)
        }
        None => {
            w.op = Op::WriteZeroes;
            w.payload_len = 0;
            SgList::new()
        }
    };
    // Ordered against Atomic ops and Replicate on the destination chunk like any
    // primary write.
    let _order = sds.locks.shared(h.at.volume, h.at.chunk).await;
    admit(sds, h.at)?;
    write_copies(sds, w, dev, key, data).await?;
    Ok(Answer::default())
}

/// The source range's data, or `None` when it was never written (reads as zeros).
/// Tries each source copy in turn; a stale epoch ends the attempt at once (the sender
/// must refetch its layouts), any other failure moves on to the next copy.
async fn read_source(
    sds: &Arc<Sds>,
    src: &CopySource,
    len: u32,
) -> Result<Option<Bytes>, ChunkError> {
    let mut failures = Vec::new();
    for copy in src.copies() {
        match read_copy(sds, src, copy, len).await {
            Ok(v) => return Ok(v),
            Err(e @ ChunkError::StaleEpoch { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(sds = %fmt_id(copy.sds), device = %fmt_id(copy.device), error = %e, "copy source unreadable");
                failures.push(format!("SDS {}: {e}", fmt_id(copy.sds)));
            }
        }
    }
    Err(ChunkError::Io(format!(
        "no copy of source chunk {} of volume {} could be read ({})",
        src.chunk,
        fmt_id(src.volume),
        failures.join("; ")
    )))
}

async fn read_copy(
    sds: &Arc<Sds>,
    src: &CopySource,
    copy: SourceCopy,
    len: u32,
) -> Result<Option<Bytes>, ChunkError> {
    let key = (src.volume, src.chunk);
    let offset = src.offset;
    if let Some(dev) = sds.store.get(copy.device) {
        // Two copies of a chunk never share an SDS: a device of ours is that copy.
        // Read like a Read: not in the middle of an Atomic op on the chunk.
        let _order = sds.locks.shared(src.volume, src.chunk).await;
        let src_at = ChunkRef {
            volume: src.volume,
            chunk: src.chunk,
            device: copy.device,
            epoch: src.epoch,
        };
        admit(sds, src_at)?;
        return blocking(move || {
            let (mapped, run) = dev.status(key, offset)?;
            if !mapped && run >= len {
                return Ok(None);
            }
            dev.read(key, offset, len).map(Some)
        })
        .await;
    }
    let client = sds.peers.client(copy.sds).ok_or_else(|| {
        ChunkError::Refused(format!(
            "SDS {} is not in this SDS's peer table; the MDM must send the peer list",
            fmt_id(copy.sds)
        ))
    })?;
    let at = ChunkRef {
        volume: src.volume,
        chunk: src.chunk,
        device: copy.device,
        epoch: src.epoch,
    };
    let (mapped, run) = client.status(at, offset).await?;
    if !mapped && run >= len {
        return Ok(None);
    }
    client.read(at, offset, len).await.map(Some)
}

/// Sends the same write to the mirror SDS for the second copy. A stale epoch there is
/// reported as such (the sender must refetch its layout); any other failure is a
/// mirror failure, for the MDM to resolve.
async fn mirror(sds: &Sds, h: RequestHeader, data: SgList, m: Mirror) -> Result<(), ChunkError> {
    let failed = |reason: String| ChunkError::Mirror { sds: m.sds, reason };
    let client = sds.peers.client(m.sds).ok_or_else(|| {
        failed("it is not in this SDS's peer table; the MDM must send the peer list".into())
    })?;
    let mut fwd = h;
    fwd.mirror = None;
    fwd.flags = h.flags & !FLAG_SINGLE_COPY | FLAG_FORWARDED;
    fwd.at = ChunkRef {
        device: m.device,
        ..h.at
    };
    client.send(fwd, &data).await.map_err(|e| match e {
        ChunkError::StaleEpoch { .. } => e,
        other => failed(other.to_string()),
    })
}

async fn control(sds: &Arc<Sds>, payload: Bytes, peer: SocketAddr) -> Result<Answer, ChunkError> {
    let msg: SdsControl = serde_json::from_slice(&payload)
        .map_err(|e| ChunkError::Protocol(format!("unreadable control message: {e}")))?;
    if let SdsControl::Dirty { volume, epoch } = msg {
        // A barrier before the answer: with the mark raised, no write routed by an
        // older layout is admitted any more, and every one admitted before has set
        // its chunk's bit by the time its lock is let go.
        sds.epochs.raise(volume, epoch);
        sds.locks.drain().await;
    }
    let sds = sds.clone();
    let reply = tokio::task::spawn_blocking(move || sds.control(msg, peer))
        .await
        .map_err(|e| ChunkError::Io(format!("control task failed: {e}")))?
        .map_err(|e| {
            tracing::warn!(error = %e, %peer, "control request refused");
            e.to_string()
        });
    let body = serde_json::to_vec(&reply).expect("control replies always serialize");
    Ok(Answer::data(body.into()))
}

/// Runs device work inline when `small`, else on a blocking thread.
pub(super) async fn run<T: Send + 'static>(
    small: bool,
    f: impl FnOnce() -> Result<T, SdsError> + Send + 'static,
) -> Result<T, ChunkError> {
    if small {
        return f().map_err(device_error);
    }
    blocking(f).await
}

fn device_error(e: SdsError) -> ChunkError {
    if matches!(e, SdsError::DeviceIo { .. }) {
        tracing::warn!(error = %e, "device I/O failed");
    }
    e.to_chunk()
}

/// Runs device work on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SdsError> + Send + 'static,
) -> Result<T, ChunkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ChunkError::Io(format!("device task failed: {e}")))?
        .map_err(device_error)
}
