//! Keeping every chunk's copies (two, or one in a single-copy pool): failure detection
//! (heartbeats, leases, failure reports), and the background copying that heals and
//! evens out pools (rebuild, backward rebuild, rebalance, draining a removed SDS).
//!
//! `plan` (pure) picks the copies to make; `driver` runs them against the SDS and
//! commits the layouts; `membership` handles SDS coming, failing, returning and
//! leaving; `liveness` and `progress` hold what is measured.

mod driver;
mod liveness;
mod membership;
pub mod plan;
mod progress;

pub use driver::run;
pub use progress::Kind;

use super::change::ChunkId;
use liveness::Liveness;
use progress::Tally;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::{mpsc, Notify};

/// Events kept for `--query_cluster`.
const EVENTS_KEPT: usize = 100;

/// A Replicate that finished: the chunk, its target device, bytes sent or the error.
#[derive(Debug)]
struct Done {
    pool: u64,
    chunk: ChunkId,
    target: u64,
    result: Result<u64, String>,
}

#[derive(Debug, Default)]
struct Tasks {
    /// Replicates in flight, with their kind.
    running: HashMap<ChunkId, (u64, Kind)>,
    /// Copies given back by a returning SDS, until their primary says whether it
    /// wrote them meanwhile.
    checking: HashSet<ChunkId>,
    /// Failed copies wait before they are tried again.
    retry_after: HashMap<ChunkId, Instant>,
    /// Moves in progress: the device whose copy is freed once the new one is whole.
    moving: HashMap<ChunkId, u64>,
    /// SDS being brought back (one return at a time per SDS).
    returning: HashSet<u64>,
    /// Silent SDS being probed.
    probing: HashSet<u64>,
    /// SDS being declared down: their heartbeats get no lease meanwhile, so none can
    /// carry the old epochs past the commit.
    declaring: HashSet<u64>,
    /// Some copies may be left over (moved, replaced by rebuild): sweep when idle.
    sweep: bool,
    /// Per volume, the epoch fences raised SDS marks to that no commit has reached yet
    /// (the driver's next commit reaches it).
    owed: BTreeMap<u64, u64>,
}

pub struct Recovery {
    liveness: Liveness,
    tasks: Mutex<Tasks>,
    tally: Mutex<Tally>,
    events: Mutex<VecDeque<String>>,
    started: Instant,
    wake: Notify,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Done>>,
}

impl Default for Recovery {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            liveness: Liveness::default(),
            tasks: Mutex::new(Tasks::default()),
            tally: Mutex::new(Tally::default()),
            events: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            wake: Notify::new(),
            done_tx,
            done_rx: tokio::sync::Mutex::new(done_rx),
        }
    }
}

impl Recovery {
    /// Logs an event at INFO (WARN for failures) and keeps it for `--query_cluster`.
    fn event(&self, warn: bool, text: String) {
        if warn {
            tracing::warn!("{text}");
        } else {
            tracing::info!("{text}");
        }
        let mut e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.push_back(format!(
            "+{:.1}s {text}",
            self.started.elapsed().as_secs_f64()
        ));
        while e.len() > EVENTS_KEPT {
            e.pop_front();
        }
    }

    pub fn events(&self) -> Vec<String> {
        let e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().cloned().collect()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuild and rebalance progress of a pool, for queries.
    pub fn progress(
        &self,
        st: &super::model::State,
        pool: u64,
    ) -> (crate::cluster::api::Progress, crate::cluster::api::Progress) {
        let moving: HashSet<ChunkId> = self.tasks().moving.keys().copied().collect();
        let down = super::change::down_devices(st);
        let mut rebuild_left = 0;
        let mut moving_left = 0;
        // A single-copy pool only ever moves copies: nothing in it is rebuild work.
        let single = st.protection(pool) == crate::cluster::api::Protection::SingleCopy;
        for v in st.volumes.values().filter(|v| v.pool == pool) {
            for (c, &[p, s]) in v.chunks.iter().enumerate() {
                let key = (v.id, c as u64);
                let syncing = v.syncing.contains(&key.1);
                if moving.contains(&key) || single && syncing {
                    moving_left += 1;
                } else if down.contains(&v.devices[p as usize]) || single {
                    // No running copy to rebuild from (failed), or nothing missing.
                } else if s == crate::cluster::api::NO_COPY || syncing {
                    rebuild_left += 1;
                }
            }
        }
        let rebalance_left = moving_left + plan::moves_left(st, pool);
        let t = self.tally();
        (
            t.report(pool, Kind::Rebuild, rebuild_left),
            t.report(pool, Kind::Rebalance, rebalance_left),
        )
    }

    /// Asks the driver to look again now (an SDS failed, returned, was added...).
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}
