//! What background copying has done, for queries: bytes per pool and kind, the rate
//! over the last few seconds, and the throttle a bandwidth policy sets.

use crate::cluster::api::{Policy, Progress, CHUNK_SIZE};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Rebuild (forward and backward) or rebalance (moves, draining removed SDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Rebuild,
    Rebalance,
}

/// How far back the rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Counter {
    done: u64,
    samples: VecDeque<(Instant, u64)>,
}

impl Counter {
    fn add(&mut self, bytes: u64, now: Instant) {
        self.done += bytes;
        self.samples.push_back((now, self.done));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn rate(&self, now: Instant) -> u64 {
        let Some(&(t0, d0)) = self
            .samples
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
        else {
            return 0;
        };
        let secs = now.duration_since(t0).as_secs_f64().max(1.0);
        ((self.done - d0) as f64 / secs) as u64
    }
}

/// A token bucket for `LimitBandwidth`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct Tally {
    counters: HashMap<(u64, Kind), Counter>,
    buckets: HashMap<(u64, Kind), Bucket>,
}

impl Tally {
    pub fn add(&mut self, pool: u64, kind: Kind, bytes: u64) {
        self.counters
            .entry((pool, kind))
            .or_default()
            .add(bytes, Instant::now());
    }

    pub fn report(&self, pool: u64, kind: Kind, chunks_left: u64) -> Progress {
        let now = Instant::now();
        let c = self.counters.get(&(pool, kind));
        let rate = c.map_or(0, |c| c.rate(now));
        let bytes_left = chunks_left * CHUNK_SIZE;
        Progress {
            chunks_left,
            bytes_left,
            bytes_done: c.map_or(0, |c| c.done),
            rate_bytes_per_sec: rate,
            eta_secs: (chunks_left > 0 && rate > 0).then(|| bytes_left.div_ceil(rate)),
        }
    }

    /// Whether a policy lets one more chunk copy start now; charges it if so.
    pub fn admit(&mut self, pool: u64, kind: Kind, policy: Policy) -> bool {
        let Policy::LimitBandwidth { kbps } = policy else {
            return true;
        };
        let per_sec = (kbps.max(1) * 1024) as f64;
        let now = Instant::now();
        let b = self.buckets.entry((pool, kind)).or_insert(Bucket {
            tokens: CHUNK_SIZE as f64,
            at: now,
        });
        let cap = per_sec.max(CHUNK_SIZE as f64);
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(cap);
        b.at = now;
        if b.tokens >= CHUNK_SIZE as f64 {
            b.tokens -= CHUNK_SIZE as f64;
            true
        } else {
            false
        }
    }
}

/// Chunk copies a policy lets run at once.
pub fn concurrency(policy: Policy) -> usize {
    match policy {
        Policy::NoLimit => 64,
        Policy::LimitConcurrentIo { chunks } => chunks.max(1) as usize,
        // The bucket paces them; two keep a fast limit busy.
        Policy::LimitBandwidth { .. } => 2,
        Policy::FavorApplicationIo => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_policy_admits_a_chunk_per_budget() {
        let mut t = Tally::default();
        let slow = Policy::LimitBandwidth { kbps: 1 };
        assert!(t.admit(1, Kind::Rebuild, slow));
        assert!(!t.admit(1, Kind::Rebuild, slow));
        assert!(
            t.admit(1, Kind::Rebalance, slow),
            "kinds are throttled apart"
        );
        assert!(t.admit(1, Kind::Rebuild, Policy::NoLimit));
    }

    #[test]
    fn progress_reports_bytes_rate_and_eta() {
        let mut t = Tally::default();
        t.add(1, Kind::Rebuild, 10 * CHUNK_SIZE);
        let p = t.report(1, Kind::Rebuild, 4);
        assert_eq!((p.bytes_done, p.chunks_left), (10 * CHUNK_SIZE, 4));
        assert_eq!(p.bytes_left, 4 * CHUNK_SIZE);
        let idle = t.report(1, Kind::Rebalance, 0);
        assert_eq!((idle.bytes_done, idle.eta_secs), (0, None));
    }
}
