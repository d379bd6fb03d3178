//! Ordering on a primary: a striped table of read-write locks keyed by chunk.
//!
//! An Atomic request (compare-and-write, or-write, atomic write) holds its chunk's lock
//! exclusively from reading the current bytes until both copies hold the result, and a
//! Replicate from its first read until the target holds the whole chunk; reads and the
//! primary's ordinary writes (mirrored or degraded) hold it shared, a write until both
//! copies are written. So no write slips between a compare and its write, no read sees
//! half of an atomic write, both copies apply the writes of one chunk in the same
//! order, and no write reaches only the old copies while a new one is being filled.
//! Requests are admitted (lease, epoch) only once they hold the lock (see `ops`).
//!
//! A forwarded copy (FLAG_FORWARDED) takes no lock: its primary already holds one for
//! it, and a secondary waiting on a stripe that a CAW of its own holds while that CAW
//! waits on the first SDS's forward would deadlock two primaries.
//!
//! Stripes, not one lock per chunk: a fixed table costs no allocation or map lookup per
//! request, and an uncontended shared acquisition is one compare-and-swap. Two chunks
//! that share a stripe only wait for each other when one of them runs an Atomic op.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Enough that unrelated chunks rarely share a stripe; small enough to stay in cache.
const STRIPES: usize = 1024;

#[derive(Debug)]
pub struct ChunkLocks {
    stripes: Box<[RwLock<()>]>,
}

impl Default for ChunkLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl ChunkLocks {
    fn stripe(&self, volume: u64, chunk: u64) -> &RwLock<()> {
        // Fibonacci hashing: consecutive chunks of a volume land far apart.
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let h = (volume.wrapping_mul(K) ^ chunk).wrapping_mul(K);
        &self.stripes[(h >> 54) as usize % STRIPES]
    }

    pub async fn shared(&self, volume: u64, chunk: u64) -> RwLockReadGuard<'_, ()> {
        self.stripe(volume, chunk).read().await
    }

    pub async fn exclusive(&self, volume: u64, chunk: u64) -> RwLockWriteGuard<'_, ()> {
        self.stripe(volume, chunk).write().await
    }

    /// Waits until every request holding a chunk lock when it was called has let go:
    /// each stripe is taken exclusively in turn and released at once.
    pub async fn drain(&self) {
        for s in self.stripes.iter() {
            drop(s.write().await);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    #[tokio::test]
    async fn drain_waits_for_holders() {
        let l = std::sync::Arc::new(ChunkLocks::default());
        let held = l.shared(1, 2).await;
        assert!(timeout(Duration::from_millis(50), l.drain()).await.is_err());
        drop(held);
        timeout(Duration::from_secs(1), l.drain()).await.unwrap();
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn shared_holders_coexist_and_exclude_an_atomic_op() {
        let l = ChunkLocks::default();
        let a = l.shared(1, 7).await;
        let b = timeout(SHORT, l.shared(1, 7))
            .await
            .expect("shared with shared");
        assert!(timeout(SHORT, l.exclusive(1, 7)).await.is_err());
        drop((a, b));
        let x = timeout(SHORT, l.exclusive(1, 7)).await.expect("free again");
        assert!(timeout(SHORT, l.shared(1, 7)).await.is_err());
        assert!(timeout(SHORT, l.exclusive(1, 7)).await.is_err());
        drop(x);
        drop(timeout(SHORT, l.shared(1, 7)).await.expect("released"));
    }

    #[tokio::test]
    async fn neighbouring_chunks_use_different_stripes() {
        let l = ChunkLocks::default();
        let _x = l.exclusive(3, 0).await;
        for chunk in 1..64 {
            let g = timeout(SHORT, l.exclusive(3, chunk))
                .await
                .unwrap_or_else(|_| panic!("chunk {chunk} shares chunk 0's stripe"));
            drop(g);
        }
        let distinct: std::collections::HashSet<_> = (0..4096u64)
            .map(|c| l.stripe(9, c) as *const _ as usize)
            .collect();
        assert!(distinct.len() > STRIPES * 9 / 10, "{}", distinct.len());
    }
}
