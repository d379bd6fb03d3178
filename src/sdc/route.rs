//! Routing a byte range of a volume to chunk copies: pure arithmetic over a cached
//! [`Layout`], kept apart from the I/O so it can be tested exhaustively.

use crate::cluster::api::{DeviceLoc, Layout, Protection, CHUNK_SIZE, NO_COPY};
use crate::cluster::chunk::{ChunkRef, Mirror, Secondary};

/// The part of a request that falls in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub chunk: u64,
    /// Offset inside the chunk.
    pub offset: u32,
    pub len: u32,
    /// Offset of this piece inside the request's payload.
    pub buf_offset: usize,
}

/// Cuts `[start, start+len)` at chunk boundaries.
pub fn pieces(start: u64, len: u64) -> impl Iterator<Item = Piece> {
    let end = start + len;
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let chunk = pos / CHUNK_SIZE;
        let offset = pos % CHUNK_SIZE;
        let n = (CHUNK_SIZE - offset).min(end - pos);
        let p = Piece {
            chunk,
            offset: offset as u32,
            len: n as u32,
            buf_offset: (pos - start) as usize,
        };
        pos += n;
        Some(p)
    })
}

/// One step of a copy: a range that lies inside one chunk of the source and one chunk
/// of the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPiece {
    pub src_chunk: u64,
    pub src_offset: u32,
    pub dst_chunk: u64,
    pub dst_offset: u32,
    pub len: u32,
}

/// Cuts a copy of `len` bytes from `src` to `dst` (byte addresses) at the chunk
/// boundaries of both sides, in ascending order.
pub fn copy_pieces(src: u64, dst: u64, len: u64) -> impl Iterator<Item = CopyPiece> {
    let mut done = 0;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let (s, d) = (src + done, dst + done);
        let n = (CHUNK_SIZE - s % CHUNK_SIZE)
            .min(CHUNK_SIZE - d % CHUNK_SIZE)
            .min(len - done);
        done += n;
        Some(CopyPiece {
            src_chunk: s / CHUNK_SIZE,
            src_offset: (s % CHUNK_SIZE) as u32,
            dst_chunk: d / CHUNK_SIZE,
            dst_offset: (d % CHUNK_SIZE) as u32,
            len: n as u32,
        })
    })
}

/// Where one chunk's I/O goes: the primary copy, and the secondary the primary
/// forwards writes to (missing while the chunk is degraded: writes then land on the
/// primary alone, which the MDM's rebuild later copies whole; none by design in a
/// single-copy pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub primary: &'a DeviceLoc,
    pub at: ChunkRef,
    pub secondary: Secondary,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("chunk {chunk} is past the end of the layout ({chunks} chunks); the gateway's layout is stale")]
    PastEnd { chunk: u64, chunks: usize },
    #[error("layout of volume {volume:016x} names device index {index}, which it does not list; the MDM sent a corrupt layout")]
    BadIndex { volume: u64, index: u32 },
    /// Every copy of the chunk is on a failed SDS (the MDM keeps the last one in the
    /// layout, marked down): nothing can serve it until that SDS returns.
    #[error("chunk {chunk} of volume {volume:016x} has no copy on a running SDS; bring its SDS back (scli --query_all_sds shows which is down)")]
    Unavailable { volume: u64, chunk: u64 },
}

/// The route of `chunk` in `layout`. A chunk without a secondary (`NO_COPY`) routes
/// with no mirror: degraded, or a single copy as its pool keeps; a chunk whose primary
/// is `NO_COPY` or on a down SDS has no readable
/// copy and is [`RouteError::Unavailable`], so the caller answers at once instead of
/// sending I/O that can only time out.
pub fn route(layout: &Layout, chunk: u64) -> Result<Route<'_>, RouteError> {
    let [p, s] = *layout
        .chunks
        .get(chunk as usize)
        .ok_or(RouteError::PastEnd {
            chunk,
            chunks: layout.chunks.len(),
        })?;
    let dev = |index: u32| {
        if index == NO_COPY {
            return Ok(None);
        }
        layout
            .devices
            .get(index as usize)
            .map(Some)
            .ok_or(RouteError::BadIndex {
                volume: layout.volume_id,
                index,
            })
    };
    let (primary, secondary) = (dev(p)?, dev(s)?);
    let primary = primary.filter(|d| !d.down).ok_or(RouteError::Unavailable {
        volume: layout.volume_id,
        chunk,
    })?;
    Ok(Route {
        primary,
        at: ChunkRef {
            volume: layout.volume_id,
            chunk,
            device: primary.device_id,
            epoch: layout.epoch,
        },
        secondary: {
            let mirror = secondary
                .filter(|s| s.sds_id != primary.sds_id)
                .map(|s| Mirror {
                    sds: s.sds_id,
                    device: s.device_id,
                });
            match (mirror, layout.protection) {
                (Some(m), Protection::TwoCopies) => Secondary::Mirror(m),
                (Some(m), Protection::SingleCopy) => Secondary::SingleCopyMoving(m),
                (None, Protection::TwoCopies) => Secondary::Missing,
                (None, Protection::SingleCopy) => Secondary::SingleCopy,
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cut_at_chunk_boundaries() {
        let c = CHUNK_SIZE;
        let v: Vec<Piece> = pieces(c - 512, 1024 + c).collect();
        assert_eq!(
            v,
            vec![
                Piece {
                    chunk: 0,
                    offset: (c - 512) as u32,
                    len: 512,
                    buf_offset: 0
                },
                Piece {
                    chunk: 1,
                    offset: 0,
                    len: c as u32,
                    buf_offset: 512
                },
                Piece {
                    chunk: 2,
                    offset: 0,
                    len: 512,
                    buf_offset: 512 + c as usize
                },
            ]
        );
        assert_eq!(pieces(4096, 0).count(), 0);
        let inside: Vec<Piece> = pieces(4096, 8192).collect();
        assert_eq!(inside.len(), 1);
        assert_eq!(inside[0].offset, 4096);
    }

    #[test]
    fn copy_pieces_cut_at_both_sides_boundaries() {
        let c = CHUNK_SIZE;
        // Source starts 4 KiB into chunk 0, destination 12 KiB before the end of chunk 5.
        let v: Vec<CopyPiece> = copy_pieces(4096, 6 * c - 12288, c + 8192).collect();
        assert_eq!(
            v,
            vec![
                CopyPiece {
                    src_chunk: 0,
                    src_offset: 4096,
                    dst_chunk: 5,
                    dst_offset: (c - 12288) as u32,
                    len: 12288
                },
                CopyPiece {
                    src_chunk: 0,
                    src_offset: 16384,
                    dst_chunk: 6,
                    dst_offset: 0,
                    len: (c - 16384) as u32
                },
                CopyPiece {
                    src_chunk: 1,
                    src_offset: 0,
                    dst_chunk: 6,
                    dst_offset: (c - 16384) as u32,
                    len: 12288
                },
            ]
        );
        assert_eq!(v.iter().map(|p| p.len as u64).sum::<u64>(), c + 8192);
        // Aligned alike: one piece per chunk.
        assert_eq!(copy_pieces(c, 3 * c, 2 * c).count(), 2);
        assert_eq!(copy_pieces(0, 0, 0).count(), 0);
    }

    fn layout() -> Layout {
        let loc = |sds, device, port| DeviceLoc {
            sds_id: sds,
            device_id: device,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            down: false,
        };
        Layout {
            volume_id: 9,
            epoch: 3,
            size_bytes: 2 * CHUNK_SIZE,
            thin: true,
            protection: Protection::TwoCopies,
            devices: vec![loc(1, 10, 7072), loc(2, 20, 7073)],
            chunks: vec![[0, 1], [1, 0]],
        }
    }

    #[test]
    fn routes_to_primary_with_secondary_as_mirror() {
        let l = layout();
        let r = route(&l, 1).unwrap();
        assert_eq!(r.primary.sds_id, 2);
        assert_eq!(
            r.at,
            ChunkRef {
                volume: 9,
                chunk: 1,
                device: 20,
                epoch: 3
            }
        );
        assert_eq!(
            r.secondary,
            Secondary::Mirror(Mirror { sds: 1, device: 10 })
        );
    }

    #[test]
    fn stale_or_corrupt_layouts_are_errors_not_panics() {
        let mut l = layout();
        assert!(matches!(route(&l, 2), Err(RouteError::PastEnd { .. })));
        l.chunks[0] = [0, 7];
        assert!(matches!(
            route(&l, 0),
            Err(RouteError::BadIndex { index: 7, .. })
        ));
    }

    #[test]
    fn a_degraded_chunk_routes_to_its_primary_without_a_mirror() {
        let mut l = layout();
        l.chunks[1] = [1, NO_COPY];
        let r = route(&l, 1).unwrap();
        let want = (2, 20, Secondary::Missing);
        assert_eq!((r.primary.sds_id, r.at.device, r.secondary), want);
        // The secondary's SDS being down changes nothing for the route: the MDM
        // takes it out (NO_COPY) when it commits the degraded layout.
        l.chunks[1] = [1, 0];
        l.devices[0].down = true;
        let r = route(&l, 1).unwrap();
        assert_eq!(
            r.secondary,
            Secondary::Mirror(Mirror { sds: 1, device: 10 })
        );
    }

    #[test]
    fn a_single_copy_is_never_degraded_even_while_it_moves() {
        let mut l = layout();
        l.protection = Protection::SingleCopy;
        l.chunks = vec![[0, NO_COPY], [1, 0]];
        assert_eq!(route(&l, 0).unwrap().secondary, Secondary::SingleCopy);
        // A copy being moved: the target takes every write, mirrored, still as a
        // single copy's (a failed forward marks nothing).
        let r = route(&l, 1).unwrap();
        assert_eq!(
            r.secondary,
            Secondary::SingleCopyMoving(Mirror { sds: 1, device: 10 })
        );
    }

    #[test]
    fn a_chunk_without_a_running_copy_is_unavailable() {
        let unavailable = |chunk| RouteError::Unavailable { volume: 9, chunk };
        // Primary on a down SDS (the MDM kept the chunk's last copy), with or without
        // a secondary.
        for secondary in [0, NO_COPY] {
            let mut l = layout();
            l.devices[1].down = true;
            l.chunks[1] = [1, secondary];
            assert_eq!(route(&l, 1), Err(unavailable(1)));
            // Chunk 0's primary is up: unaffected.
            assert_eq!(route(&l, 0).unwrap().primary.sds_id, 1);
        }
        // No primary at all.
        for secondary in [0, 1, NO_COPY] {
            let mut l = layout();
            l.chunks[0] = [NO_COPY, secondary];
            assert_eq!(route(&l, 0), Err(unavailable(0)));
        }
        let msg = unavailable(4).to_string();
        assert!(
            msg.contains("chunk 4 of volume 0000000000000009") && msg.contains("--query_all_sds"),
            "{msg}"
        );
    }

    #[test]
    fn every_pair_of_indices_routes_or_says_why() {
        // Devices: 0 (SDS 1), 1 (SDS 2), 2 (SDS 1 again, another device), 3 (SDS 3,
        // down); indices 4 and NO_COPY are not devices.
        let mut l = layout();
        l.devices.push(DeviceLoc {
            sds_id: 1,
            device_id: 11,
            addr: l.devices[0].addr,
            down: false,
        });
        l.devices.push(DeviceLoc {
            sds_id: 3,
            device_id: 30,
            addr: "127.0.0.1:7074".parse().unwrap(),
            down: true,
        });
        let indices = [0, 1, 2, 3, 4, NO_COPY];
        for p in indices {
            for s in indices {
                l.chunks[0] = [p, s];
                let got = route(&l, 0);
                let bad = [p, s].into_iter().find(|&i| i == 4);
                match (bad, p) {
                    (Some(index), _) => {
                        assert_eq!(got, Err(RouteError::BadIndex { volume: 9, index }))
                    }
                    (None, 3 | NO_COPY) => {
                        assert_eq!(
                            got,
                            Err(RouteError::Unavailable {
                                volume: 9,
                                chunk: 0
                            })
                        )
                    }
                    (None, _) => {
                        let r = got.unwrap();
                        let primary = &l.devices[p as usize];
                        assert_eq!(r.primary, primary);
                        assert_eq!(r.at.device, primary.device_id);
                        let mirror = match s {
                            NO_COPY => Secondary::Missing,
                            s if l.devices[s as usize].sds_id == primary.sds_id => {
                                Secondary::Missing
                            }
                            s => Secondary::Mirror(Mirror {
                                sds: l.devices[s as usize].sds_id,
                                device: l.devices[s as usize].device_id,
                            }),
                        };
                        assert_eq!(r.secondary, mirror, "[{p}, {s}]");
                    }
                }
            }
        }
    }
}
