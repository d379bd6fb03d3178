//! What a gateway does when a chunk request fails: pure decisions (which error is
//! retried, who is reported to the MDM, how long to wait), kept apart from the I/O
//! so every case can be tested as a table.

use crate::cluster::chunk::ChunkError;
use std::time::Duration;

/// How long one request may spend failing over before its error reaches the
/// initiator. Below the command timeouts initiators commonly use (30 s for Linux's
/// SCSI disk timeout and ESXi), so the initiator gets an answer, not an abort
/// followed by a reset, and within it the MDM has time to declare an SDS down (a
/// chunk request times out after 8 s, see `cluster::chunk`) and commit new layouts.
pub const FAILOVER_DEADLINE: Duration = Duration::from_secs(25);

/// The first wait before retrying a route that did not move; doubled up to
/// [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What to do after a chunk request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The SDS refused an old epoch: fetch the layout and retry at once.
    Refetch,
    /// An SDS did not serve the request: tell the MDM (which checks it and, if it is
    /// down, commits layouts without it), fetch the layout and, if `retry`, try again.
    /// Without `retry` the request ends with its error once the MDM has been told.
    Report { sds: u64, retry: bool },
    /// Not a matter of routing (a device I/O error, a full pool, a refusal): the
    /// error goes to the initiator.
    Fail,
}

/// Decides what follows `err`, for a request sent to the SDS `primary_sds`.
/// `idempotent` is false for compare-and-write: an SDS that did not answer, or a
/// primary whose mirror failed, may already have executed it (a repeat would
/// miscompare against its own result), so only refusals made before executing
/// anything (a stale epoch, a fenced SDS) are retried.
pub fn next(err: &ChunkError, primary_sds: u64, idempotent: bool) -> Next {
    match err {
        ChunkError::StaleEpoch { .. } => Next::Refetch,
        ChunkError::Fenced(_) => Next::Report {
            sds: primary_sds,
            retry: true,
        },
        ChunkError::Unreachable { .. } => Next::Report {
            sds: primary_sds,
            retry: idempotent,
        },
        ChunkError::Mirror { sds, .. } => Next::Report {
            sds: *sds,
            retry: idempotent,
        },
        // A device failing I/O: its SDS tells the MDM (heartbeats list failed
        // devices), which moves the layout off it; the report makes it look now.
        ChunkError::Io(_) => Next::Report {
            sds: primary_sds,
            retry: idempotent,
        },
        ChunkError::NoSpace | ChunkError::Refused(_) | ChunkError::Protocol(_) => Next::Fail,
    }
}

/// Waits between retries of a route that did not move: short at first (a restarted
/// SDS or a new lease is usually a moment away), then no more than once a second.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before the next retry.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_next_step() {
        let unreachable = ChunkError::Unreachable {
            addr: "127.0.0.1:7072".parse().unwrap(),
            reason: "no answer within 8 s".into(),
        };
        let mirror = ChunkError::Mirror {
            sds: 7,
            reason: "connection refused".into(),
        };
        let stale = ChunkError::StaleEpoch {
            sent: 1,
            current: 2,
        };
        let fenced = ChunkError::Fenced("no lease".into());
        let report = |sds, retry| Next::Report { sds, retry };
        // (error, next when idempotent, next for compare-and-write); primary SDS 3.
        let table = [
            (stale, Next::Refetch, Next::Refetch),
            (fenced, report(3, true), report(3, true)),
            (unreachable, report(3, true), report(3, false)),
            (mirror, report(7, true), report(7, false)),
            (ChunkError::NoSpace, Next::Fail, Next::Fail),
            (
                ChunkError::Io("EIO".into()),
                report(3, true),
                report(3, false),
            ),
            (ChunkError::Refused("no".into()), Next::Fail, Next::Fail),
            (ChunkError::Protocol("bad".into()), Next::Fail, Next::Fail),
        ];
        for (err, idempotent, caw) in table {
            assert_eq!(next(&err, 3, true), idempotent, "{err}");
            assert_eq!(next(&err, 3, false), caw, "{err} (compare-and-write)");
        }
    }

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        // Retrying until the deadline stays well within it: no wait is longer than
        // a second.
        assert!(BACKOFF_MAX < FAILOVER_DEADLINE);
    }
}
