//! Replicate (op 9): copy one whole chunk copy of this SDS to a target SDS, for
//! rebuild, backward rebuild and rebalance (the wire format is in `wire`'s doc).
//!
//! The chunk's lock is held exclusively throughout, and the lease and epoch are
//! admitted under it (raising the mark to the MDM's new epoch): every write admitted
//! under the old layout has finished before the first byte is read, and every later
//! one either carries the new epoch (and reaches the target as a mirror write after
//! the copy is whole) or is refused. Only allocated ranges travel as data; ranges
//! never written travel as deallocations, so a thin target stays thin and a stale
//! target copy (backward rebuild) loses whatever this copy does not hold.

use super::device::{ChunkKey, Device};
use super::ops::{self, blocking, run, Answer};
use super::{Sds, SdsError};
use crate::backend::fileops::runs_inline;
use crate::backend::SgList;
use crate::cluster::api::{fmt_id, CHUNK_SIZE};
use crate::cluster::chunk::wire::{Op, RequestHeader, FLAG_FORWARDED, FLAG_FUA, FLAG_UNMAP};
use crate::cluster::chunk::{ChunkError, ChunkRef};
use std::sync::Arc;
use tracing::info;

/// Largest Write a replication sends: keeps one chunk from monopolising a connection
/// to the target and bounds the memory a replication holds.
const PIECE: u32 = 256 << 10;

/// One request of a replication: a range of the chunk, sent as data or as a
/// deallocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    offset: u32,
    len: u32,
    data: bool,
}

pub async fn replicate(sds: &Arc<Sds>, h: RequestHeader) -> Result<Answer, ChunkError> {
    let target = h
        .mirror
        .ok_or_else(|| ChunkError::Protocol("Replicate names no target".into()))?;
    let failed = |reason: String| ChunkError::Mirror {
        sds: target.sds,
        reason,
    };
    let dev = sds.store.device(h.at.device).map_err(|e| e.to_chunk())?;
    let key = (h.at.volume, h.at.chunk);
    let _exclusive = sds.locks.exclusive(h.at.volume, h.at.chunk).await;
    ops::admit(sds, h.at)?;
    let client = sds.peers.client(target.sds).ok_or_else(|| {
        failed("it is not in this SDS's peer table; the MDM must send the peer list".into())
    })?;
    let walker = dev.clone();
    let pieces = blocking(move || allocation(&walker, key)).await?;
    let pieces = split(&pieces);
    let at = ChunkRef {
        device: target.device,
        ..h.at
    };
    let mut sent = 0u64;
    for (i, p) in pieces.iter().enumerate() {
        let mut w = RequestHeader::new(if p.data { Op::Write } else { Op::WriteZeroes }, 0);
        // Layout changes elsewhere in the volume move its epoch while this chunk is
        // copied; under the exclusive lock the newest mark is as good as the one the
        // MDM sent, and the target may already have seen it.
        let epoch = sds
            .epochs
            .current(at.volume)
            .unwrap_or(at.epoch)
            .max(at.epoch);
        w.at = ChunkRef { epoch, ..at };
        w.offset = p.offset;
        w.length = p.len;
        w.flags = FLAG_FORWARDED;
        if !p.data {
            w.flags |= FLAG_UNMAP;
        }
        // The target's copy is durable once the last piece is: FUA syncs its device.
        if i + 1 == pieces.len() {
            w.flags |= FLAG_FUA;
        }
        let data = if p.data {
            let reader = dev.clone();
            let (offset, len) = (p.offset, p.len);
            let small = runs_inline(len as usize, false);
            w.payload_len = len;
            SgList::from(run(small, move || reader.read(key, offset, len)).await?)
        } else {
            SgList::new()
        };
        client.send(w, &data).await.map_err(|e| match e {
            ChunkError::StaleEpoch { .. } => e,
            other => failed(other.to_string()),
        })?;
        if p.data {
            sent += p.len as u64;
        }
    }
    blocking(move || dev.clear_dirty(key)).await?;
    info!(
        volume = %fmt_id(key.0), chunk = key.1, target = %fmt_id(target.sds),
        bytes = sent, "replicated chunk"
    );
    Ok(Answer {
        aux: sent,
        ..Answer::default()
    })
}

/// The chunk's allocation as runs covering it whole (a chunk not held here: one
/// unallocated run).
fn allocation(dev: &Device, key: ChunkKey) -> Result<Vec<Piece>, SdsError> {
    let mut runs = Vec::new();
    let mut offset = 0u32;
    while (offset as u64) < CHUNK_SIZE {
        let (mapped, len) = dev.status(key, offset)?;
        // A zero-length run would never end the walk; send the rest as data.
        let (data, len) = match len {
            0 => (true, (CHUNK_SIZE - offset as u64) as u32),
            n => (mapped, n),
        };
        runs.push(Piece { offset, len, data });
        offset += len;
    }
    Ok(runs)
}

/// Cuts data runs into pieces of at most [`PIECE`] bytes; deallocations go whole.
fn split(runs: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::new();
    for r in runs {
        if !r.data {
            out.push(*r);
            continue;
        }
        let mut at = r.offset;
        let end = r.offset + r.len;
        while at < end {
            let len = PIECE.min(end - at);
            out.push(Piece {
                offset: at,
                len,
                data: true,
            });
            at += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_are_cut_into_pieces_and_holes_go_whole() {
        let hole = |offset, len| Piece {
            offset,
            len,
            data: false,
        };
        let data = |offset, len| Piece {
            offset,
            len,
            data: true,
        };
        let runs = [
            data(0, 4096),
            hole(4096, 600 << 10),
            data(4096 + (600 << 10), 1 << 19),
        ];
        let start = 4096 + (600 << 10);
        assert_eq!(
            split(&runs),
            vec![
                data(0, 4096),
                hole(4096, 600 << 10),
                data(start, PIECE),
                data(start + PIECE, 1 << 18),
            ]
        );
        assert_eq!(split(&[hole(0, 1 << 20)]), vec![hole(0, 1 << 20)]);
    }
}
