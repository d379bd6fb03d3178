//! At most one request of a kind in flight per key, its answer shared by everyone
//! who asked meanwhile. When an SDS fails, thousands of in-flight chunk requests
//! fail together; this turns them into one failure report to the MDM per SDS and
//! one layout fetch per volume, instead of a storm.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

enum Slot<V> {
    Running(watch::Receiver<Option<V>>),
    /// The last answer, reused by callers within `reuse_for` of it.
    Done(V, Instant),
}

pub struct SingleFlight<K, V> {
    slots: Arc<Mutex<HashMap<K, Slot<V>>>>,
    reuse_for: Duration,
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight")
            .field("reuse_for", &self.reuse_for)
            .finish_non_exhaustive()
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// `reuse_for`: how long a finished request's answer still serves new callers
    /// (zero: only callers who came while it ran share it).
    pub fn new(reuse_for: Duration) -> Self {
        Self {
            slots: Arc::default(),
            reuse_for,
        }
    }

    /// The answer of the request for `key` in flight, or of a new one made by
    /// `start`. The request runs as a task of its own, so it completes (and its
    /// answer is kept) even if every caller gives up waiting. `None` if it panicked.
    pub async fn run<F, Fut>(&self, key: K, start: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match slots.get(&key) {
                Some(Slot::Done(v, at)) if at.elapsed() < self.reuse_for => return Some(v.clone()),
                // A closed channel without an answer: its task panicked; start anew.
                Some(Slot::Running(rx)) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    slots.insert(key.clone(), Slot::Running(rx.clone()));
                    let fut = start();
                    let slots = self.slots.clone();
                    tokio::spawn(async move {
                        let v = fut.await;
                        slots
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, Slot::Done(v.clone(), Instant::now()));
                        let _ = tx.send(Some(v));
                    });
                    rx
                }
            }
        };
        let v = rx.wait_for(Option::is_some).await.ok()?;
        v.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_request_and_later_ones_reuse_it_briefly() {
        let flight = Arc::new(SingleFlight::<u64, usize>::new(Duration::from_millis(200)));
        let calls = Arc::new(AtomicUsize::new(0));
        let ask = |flight: Arc<SingleFlight<u64, usize>>, key, calls: Arc<AtomicUsize>| async move {
            flight
                .run(key, || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    calls.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let waiters: Vec<_> = (0..100)
            .map(|_| tokio::spawn(ask(flight.clone(), 1, calls.clone())))
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(1));
        }
        // Just after: the answer is reused. Another key has its own request.
        assert_eq!(ask(flight.clone(), 1, calls.clone()).await, Some(1));
        assert_eq!(ask(flight.clone(), 2, calls.clone()).await, Some(2));
        // Once it is old, a new request is made.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(ask(flight.clone(), 1, calls.clone()).await, Some(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_request_survives_its_callers_and_a_panic_is_not_kept() {
        let flight = SingleFlight::<u8, u8>::new(Duration::from_secs(60));
        let slow = flight.run(1, || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        });
        assert!(tokio::time::timeout(Duration::from_millis(5), slow)
            .await
            .is_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
        // It finished anyway; its answer is there for the next caller.
        assert_eq!(flight.run(1, || async { 8 }).await, Some(7));
        assert_eq!(
            flight.run(2, || async { panic!("lost the MDM") }).await,
            None
        );
        assert_eq!(flight.run(2, || async { 9 }).await, Some(9));
    }
}
