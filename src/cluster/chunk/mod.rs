//! The chunk I/O protocol on the SDS port (7072): binary, tagged and pipelined, so a
//! gateway keeps many requests in flight on a few connections. Spoken by gateways to
//! SDS, by a primary SDS to the secondary it forwards writes to, and (as `Control`
//! frames carrying JSON) by the MDM to SDS.
//!
//! [`wire`] is the pure header codec, [`io`] moves messages over a stream, `conn` is
//! one pipelined connection and [`ChunkClient`] a pool of them for one SDS.

pub mod arena;
mod client;
mod conn;
pub(crate) mod io;
pub mod local;
pub mod wire;

pub use client::ChunkClient;

use std::net::SocketAddr;

/// Which chunk copy a request is for, and the layout epoch it was routed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub volume: u64,
    pub chunk: u64,
    /// Device on the receiving SDS that holds (or will hold) the copy.
    pub device: u64,
    pub epoch: u64,
}

/// Where the receiving (primary) SDS forwards a write for the second copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    pub sds: u64,
    pub device: u64,
}

/// What the receiving primary does with a write besides storing its own copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secondary {
    /// Forwards it to this copy and answers once both are written.
    Mirror(Mirror),
    /// The chunk has lost its second copy (degraded): the primary marks the chunk
    /// dirty, so that copy can catch up if its SDS returns.
    Missing,
    /// The chunk's pool keeps a single copy: nothing is missing and nothing is
    /// marked (a dirty mark would only keep a whole-chunk UNMAP from freeing the
    /// slot, since a dirty chunk keeps its slot until replicated).
    SingleCopy,
    /// The chunk's pool keeps a single copy, and a move is filling its new one here:
    /// forwarded like a mirror write, but a failed forward marks nothing either (the
    /// target is dropped from the layout, or the write retried to it).
    SingleCopyMoving(Mirror),
}

impl Secondary {
    pub fn mirror(self) -> Option<Mirror> {
        match self {
            Secondary::Mirror(m) | Secondary::SingleCopyMoving(m) => Some(m),
            Secondary::Missing | Secondary::SingleCopy => None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    #[error("layout epoch {sent} is older than the SDS's {current}; refetch the layout")]
    StaleEpoch { sent: u64, current: u64 },
    #[error("no free space on the SDS device for a new chunk; add devices to the pool")]
    NoSpace,
    #[error("SDS device I/O failed: {0}")]
    Io(String),
    #[error("cannot reach SDS at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("mirror copy on SDS {sds:016x} failed: {reason}")]
    Mirror { sds: u64, reason: String },
    #[error("SDS refused the request: {0}")]
    Refused(String),
    #[error("chunk protocol error: {0}")]
    Protocol(String),
    /// The SDS holds no current lease from the MDM (cut off from it, or just
    /// restarted): it serves nothing until the MDM has told it the current epochs.
    #[error("SDS is fenced: {0}")]
    Fenced(String),
}
