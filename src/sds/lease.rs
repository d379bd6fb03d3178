//! The lease: this SDS may serve chunk data only while the MDM keeps answering its
//! heartbeats. A lease granted to a heartbeat runs from the instant that heartbeat was
//! *sent* (never from when the answer arrived), so it always ends no later than the
//! MDM believes.
//!
//! Why: the MDM declares an SDS down only after missing its heartbeats for longer than
//! the lease, so by the time the MDM commits layouts without this SDS, this SDS has
//! stopped serving and a gateway with an old layout cannot use its copies. And a
//! restarted or partition-healed SDS serves nothing until the MDM has answered, which
//! also hands it every volume's current epoch (`epoch`), so it cannot serve a copy the
//! MDM has replaced meanwhile.
//!
//! The check is one clock read and one atomic load per request.

use crate::cluster::chunk::ChunkError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug)]
pub struct Lease {
    /// The zero of the nanosecond clock below.
    base: Instant,
    /// End of the lease in nanoseconds after `base`; 0 = no lease.
    until: AtomicU64,
    /// Whether the last state logged was "held": logs only the transitions.
    held: AtomicBool,
    /// The MDM heartbeated to (for the refusal text); `None` while unclaimed. Also
    /// since when this SDS has had no lease, if it never had one.
    mdm: Mutex<(Option<String>, u64)>,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
            held: AtomicBool::new(false),
            mdm: Mutex::new((None, 0)),
        }
    }
}

impl Lease {
    /// Admits a data request, or refuses it with an error telling the admin why.
    pub fn check(&self) -> Result<(), ChunkError> {
        let now = self.now();
        let until = self.until.load(Ordering::Acquire);
        if now < until {
            return Ok(());
        }
        let (mdm, since) = self.mdm.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mdm) = mdm else {
            return Err(ChunkError::Fenced(
                "this SDS has not been claimed by an MDM (or was released); add it with scli --add_sds".into(),
            ));
        };
        if self.held.swap(false, Ordering::AcqRel) {
            warn!(%mdm, "lease from the MDM lapsed; refusing chunk I/O until the MDM answers a heartbeat");
        }
        let without = Duration::from_nanos(now - until.max(since));
        Err(ChunkError::Fenced(format!(
            "no lease from the MDM at {mdm} for {} ms; check that the MDM runs and this SDS can reach it",
            without.as_millis()
        )))
    }

    /// Heartbeats now go to `mdm`; a lease already held stays valid.
    pub fn heartbeat_to(&self, mdm: &str) {
        let mut m = self.mdm.lock().unwrap_or_else(|p| p.into_inner());
        if m.0.is_none() {
            m.1 = self.now();
        }
        m.0 = Some(mdm.to_string());
    }

    /// The MDM answered the heartbeat sent at `sent` with a lease of `lease_ms`.
    pub fn renew(&self, sent: Instant, lease_ms: u64) {
        let start = sent.saturating_duration_since(self.base).as_nanos() as u64;
        let end = start.saturating_add(lease_ms.saturating_mul(1_000_000));
        self.until.fetch_max(end, Ordering::AcqRel);
        if end > self.now() && !self.held.swap(true, Ordering::AcqRel) {
            let mdm = self.mdm.lock().unwrap_or_else(|p| p.into_inner()).0.clone();
            info!(
                mdm = mdm.unwrap_or_default(),
                lease_ms, "holding a lease from the MDM; serving chunk I/O"
            );
        }
    }

    /// Notices a lapse between requests, so it is logged when it happens.
    pub fn observe(&self) {
        if self.now() >= self.until.load(Ordering::Acquire) {
            let _ = self.check();
        }
    }

    /// Drops the lease and the MDM (the SDS was released).
    pub fn revoke(&self) {
        self.until.store(0, Ordering::Release);
        self.held.store(false, Ordering::Release);
        *self.mdm.lock().unwrap_or_else(|p| p.into_inner()) = (None, 0);
    }

    fn now(&self) -> u64 {
        // Never 0, so "no lease" (0) is always over.
        self.base.elapsed().as_nanos() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced(r: Result<(), ChunkError>) -> String {
        match r {
            Err(ChunkError::Fenced(m)) => m,
            other => panic!("expected fencing, got {other:?}"),
        }
    }

    #[test]
    fn no_lease_until_answered_then_until_it_runs_out() {
        let l = Lease::default();
        assert!(fenced(l.check()).contains("not been claimed"));
        l.heartbeat_to("10.0.0.1:6611");
        let m = fenced(l.check());
        assert!(m.contains("MDM at 10.0.0.1:6611") && m.contains("check that the MDM runs"));
        l.renew(Instant::now(), 60_000);
        l.check().unwrap();
        // A lease counts from when its heartbeat was sent, not when it was answered.
        let l = Lease::default();
        l.heartbeat_to("m:1");
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        l.renew(sent, 20);
        assert!(fenced(l.check()).contains("ms"));
        // A shorter, older answer never cuts a lease short.
        l.renew(Instant::now(), 60_000);
        l.renew(sent, 20);
        l.check().unwrap();
        l.revoke();
        assert!(fenced(l.check()).contains("not been claimed"));
    }
}
