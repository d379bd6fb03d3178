//! How a change to a volume's shared SCSI state reaches every gateway before the
//! command that made it completes.
//!
//! A host that reserves a volume through one gateway must be fenced on the others
//! by the time its PERSISTENT RESERVE OUT returns, and a LUN reset through one gateway
//! must show as a unit attention on the others. The state itself is durable in the
//! MDM's `State`; this hub holds what is not: the recent events in order, and how far
//! each gateway has read. Gateways long-poll with `WatchScsi { since }`; asking with
//! `since` = g acknowledges everything up to g. A change is answered once every
//! gateway serving the volume that is alive (it polled recently) has acknowledged it,
//! or after [`ACK_WAIT`]: a gateway that cannot be reached for that long is not going
//! to answer its hosts either, and waiting forever would hang every host on one dead
//! gateway.

use crate::scsi::shared::SharedEvent;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long a change waits for the other gateways to confirm it.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// Events kept for gateways that are between two polls; one that falls further
/// behind gets the current states but misses older unit attentions.
const LOG_LEN: usize = 4096;

#[derive(Debug)]
struct Entry {
    generation: u64,
    volume: u64,
    origin: u64,
    events: Vec<SharedEvent>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    acked: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<Entry>,
    gateways: HashMap<u64, Seen>,
}

#[derive(Debug)]
pub struct ScsiHub {
    generation: watch::Sender<u64>,
    log: Mutex<Log>,
    acked: Notify,
    /// A gateway whose last poll started longer ago than this is presumed dead.
    live: Duration,
}

impl ScsiHub {
    /// `watch_wait` is how long a poll may be held open; a live gateway polls again
    /// within it.
    pub fn new(watch_wait: Duration) -> Self {
        Self {
            generation: watch::Sender::new(0),
            log: Mutex::new(Log::default()),
            acked: Notify::new(),
            live: watch_wait + Duration::from_secs(10),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Appends a change of `volume` made through gateway `origin`; returns its
    /// generation.
    pub fn record(&self, volume: u64, origin: u64, events: Vec<SharedEvent>) -> u64 {
        let mut log = self.log();
        let generation = self.generation() + 1;
        if log.entries.len() == LOG_LEN {
            log.entries.pop_front();
        }
        log.entries.push_back(Entry {
            generation,
            volume,
            origin,
            events,
        });
        self.generation.send_replace(generation);
        generation
    }

    /// Gateway `sdc` polls having applied everything up to `since`. A `since` past
    /// the current generation comes from before an MDM restart and acknowledges
    /// nothing.
    pub fn ack(&self, sdc: u64, since: u64) {
        let acked = if since > self.generation() { 0 } else { since };
        self.log().gateways.insert(
            sdc,
            Seen {
                acked,
                at: Instant::now(),
            },
        );
        self.acked.notify_waiters();
    }

    /// Events after `since` that gateway `sdc` did not make itself, for the volumes
    /// `serves` accepts, oldest first.
    pub fn events_since(
        &self,
        sdc: u64,
        since: u64,
        serves: impl Fn(u64) -> bool,
    ) -> Vec<(u64, SharedEvent)> {
        self.log()
            .entries
            .iter()
            .filter(|e| e.generation > since && e.origin != sdc && serves(e.volume))
            .flat_map(|e| e.events.iter().map(|ev| (e.volume, ev.clone())))
            .collect()
    }

    /// Gateways among `who` that are alive and have not acknowledged `generation`.
    fn lagging(&self, generation: u64, who: &[u64]) -> Vec<u64> {
        let log = self.log();
        who.iter()
            .copied()
            .filter(|sdc| {
                log.gateways
                    .get(sdc)
                    .is_some_and(|s| s.at.elapsed() < self.live && s.acked < generation)
            })
            .collect()
    }

    /// Waits until every live gateway of `who` has acknowledged `generation`, at most
    /// `wait`; returns those that did not.
    pub async fn wait_acked(&self, generation: u64, who: &[u64], wait: Duration) -> Vec<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.acked.notified();
            let lagging = self.lagging(generation, who);
            if lagging.is_empty() {
                return lagging;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.lagging(generation, who);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::shared::SharedEvent;
    use std::sync::Arc;

    fn reset() -> SharedEvent {
        SharedEvent::Reset { asc: 0x2903 }
    }

    #[test]
    fn a_gateway_gets_the_events_of_others_for_its_volumes_only() {
        let hub = ScsiHub::new(Duration::from_secs(20));
        let g1 = hub.record(7, 1, vec![reset()]);
        hub.record(8, 1, vec![reset()]);
        hub.record(7, 2, vec![reset()]);
        assert_eq!(g1, 1);
        assert_eq!(hub.events_since(2, 0, |v| v == 7), vec![(7, reset())]);
        assert_eq!(hub.events_since(2, 1, |v| v == 7), vec![]);
        assert_eq!(hub.events_since(3, 1, |_| true).len(), 2);
    }

    #[tokio::test]
    async fn a_change_waits_for_live_gateways_only() {
        let hub = Arc::new(ScsiHub::new(Duration::from_secs(20)));
        hub.ack(2, 0);
        let g = hub.record(7, 1, vec![reset()]);
        // Gateway 3 never polled: nobody waits for it.
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait_acked(g, &[2, 3], Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        hub.ack(2, g);
        assert_eq!(waiter.await.unwrap(), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn a_silent_gateway_is_named_after_the_wait() {
        let hub = ScsiHub::new(Duration::from_secs(20));
        hub.ack(2, 0);
        let g = hub.record(7, 1, vec![]);
        assert_eq!(
            hub.wait_acked(g, &[2], Duration::from_millis(30)).await,
            vec![2]
        );
    }

    #[test]
    fn a_poll_from_before_a_restart_acknowledges_nothing() {
        let hub = ScsiHub::new(Duration::from_secs(20));
        hub.ack(2, 57);
        let g = hub.record(7, 1, vec![]);
        assert_eq!(hub.lagging(g, &[2]), vec![2]);
    }
}
