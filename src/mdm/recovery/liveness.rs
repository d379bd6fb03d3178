//! When each SDS last heartbeated, and the timing rule that makes leases safe.
//!
//! An SDS may serve chunk I/O for `LEASE` after it *sent* a heartbeat the MDM answered.
//! The MDM declares a silent SDS down only `DOWN_AFTER` after it last *received* one,
//! which is later than the send, and `DOWN_AFTER` > `LEASE`: by the time layouts move
//! on without an SDS, that SDS has stopped serving, even if it is alive behind a
//! partition.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LEASE: Duration = Duration::from_millis(3000);
pub const DOWN_AFTER: Duration = Duration::from_millis(4500);

#[derive(Debug)]
pub struct Liveness {
    /// The MDM's own start stands in for SDS not heard from since: none is declared
    /// down by silence before `DOWN_AFTER` has passed after a restart.
    started: Instant,
    last: Mutex<HashMap<u64, Instant>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl Liveness {
    /// Records a heartbeat; true for the first from `sds` since the MDM started.
    pub fn beat(&self, sds: u64) -> bool {
        self.lock().insert(sds, Instant::now()).is_none()
    }

    /// How long since `sds` was last heard from.
    pub fn silence(&self, sds: u64) -> Duration {
        let last = self.lock().get(&sds).copied().unwrap_or(self.started);
        last.elapsed()
    }

    /// Heard from since the MDM started, and not for longer than `DOWN_AFTER`.
    pub fn silent(&self, sds: u64) -> bool {
        self.lock()
            .get(&sds)
            .is_some_and(|t| t.elapsed() > DOWN_AFTER)
    }

    /// Not heard from at all since the MDM started `DOWN_AFTER` ago: it died while the
    /// MDM was away, or never ran; the driver probes it.
    pub fn unheard(&self, sds: u64) -> bool {
        self.started.elapsed() > DOWN_AFTER && !self.lock().contains_key(&sds)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_down_deadline_outlasts_the_lease() {
        const { assert!(DOWN_AFTER.as_millis() > LEASE.as_millis() + 1000) };
        let l = Liveness::default();
        assert!(!l.silent(7), "nobody is silent right after a start");
        assert!(!l.unheard(7));
        l.beat(7);
        assert!(l.silence(7) < Duration::from_secs(1));
    }
}
