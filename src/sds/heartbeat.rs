//! Heartbeats: a claimed SDS tells the MDM every `HEARTBEAT_EVERY_MS` that it is alive
//! and where it listens (`SdsHeartbeat`), for as long as it runs; each answer
//! (`Lease`) raises the volumes' epoch marks and then renews the lease (`lease`), in
//! that order, so the SDS never serves under a lease with marks older than the MDM's.
//!
//! Started when the SDS starts already claimed and right after a successful claim;
//! stopped by `Release` (and when the SDS stops). One connection to the MDM, reopened
//! after any failure; a failure is logged at WARN once, then every `WARN_EVERY`th
//! time, since the lease's own WARN already says the SDS stopped serving.

use super::epoch::Epochs;
use super::lease::Lease;
use super::store::Store;
use crate::cluster::api::{fmt_id, MdmReply, MdmRequest, MdmResponse, HEARTBEAT_EVERY_MS};
use crate::cluster::frame::{self, FrameError};
use crate::cluster::mdm_client;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

/// Failures logged at WARN: the first, then one in this many (ten seconds apart).
const WARN_EVERY: u32 = 20;
/// How long to wait for an answer before the first lease says how long leases are: an
/// answer later than the lease it grants is worthless anyway.
const DEFAULT_WAIT: Duration = Duration::from_secs(3);

/// Who this SDS is, as heartbeats say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub mdm: String,
    pub system_id: u64,
    pub sds_id: u64,
    pub listen: SocketAddr,
}

/// The heartbeat task of this SDS, if one runs.
#[derive(Debug)]
pub struct Heartbeat {
    lease: Arc<Lease>,
    epochs: Arc<Epochs>,
    /// Where failed devices are found, to report them.
    store: Arc<Store>,
    task: Mutex<Option<(Identity, JoinHandle<()>)>>,
}

impl Heartbeat {
    pub fn new(lease: Arc<Lease>, epochs: Arc<Epochs>, store: Arc<Store>) -> Self {
        Self {
            lease,
            epochs,
            store,
            task: Mutex::new(None),
        }
    }

    /// Heartbeats as `who` from now on; a task already heartbeating as `who` goes on.
    /// Needs a tokio runtime (also from its blocking threads, where controls run).
    pub fn start(&self, who: Identity) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, h)) = task.as_ref() {
            if *current == who && !h.is_finished() {
                return;
            }
        }
        if let Some((_, h)) = task.take() {
            h.abort();
        }
        self.lease.heartbeat_to(&who.mdm);
        info!(mdm = %who.mdm, sds = %fmt_id(who.sds_id), "heartbeating to the MDM");
        let h = tokio::spawn(run(
            who.clone(),
            self.lease.clone(),
            self.epochs.clone(),
            self.store.clone(),
        ));
        *task = Some((who, h));
    }

    /// Stops heartbeating; the lease runs out on its own (`Lease::revoke` ends it now).
    pub fn stop(&self) {
        if let Some((_, h)) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
    }
}

async fn run(who: Identity, lease: Arc<Lease>, epochs: Arc<Epochs>, store: Arc<Store>) {
    let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_EVERY_MS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn = None;
    let mut addr = None;
    let mut wait = DEFAULT_WAIT;
    let mut failures = 0u32;
    loop {
        tick.tick().await;
        lease.observe();
        let advertised = match addr {
            Some(a) => a,
            None => *addr.insert(advertised(who.listen, &who.mdm).await),
        };
        let req = MdmRequest::SdsHeartbeat {
            sds_id: who.sds_id,
            system_id: who.system_id,
            addr: advertised,
            failed_devices: store.failed(),
        };
        let sent = Instant::now();
        let problem = match beat(&mut conn, &who.mdm, &req, wait).await {
            Ok(Ok(MdmReply::Lease {
                lease_ms,
                epochs: marks,
            })) => {
                for (volume, epoch) in marks {
                    epochs.raise(volume, epoch);
                }
                lease.renew(sent, lease_ms);
                wait = Duration::from_millis(lease_ms.max(HEARTBEAT_EVERY_MS));
                if failures > 0 {
                    debug!(failures, "heartbeats answered again");
                }
                failures = 0;
                continue;
            }
            Ok(Ok(other)) => format!("unexpected answer {other:?}"),
            Ok(Err(refusal)) => format!("the MDM refused: {refusal}"),
            Err(e) => {
                conn = None;
                addr = None;
                e.to_string()
            }
        };
        failures += 1;
        if failures == 1 || failures.is_multiple_of(WARN_EVERY) {
            warn!(mdm = %who.mdm, failures, error = %problem, "heartbeat to the MDM failed; retrying");
        } else {
            debug!(mdm = %who.mdm, failures, error = %problem, "heartbeat failed");
        }
    }
}

/// One heartbeat round trip on the kept connection (opened if needed).
async fn beat(
    conn: &mut Option<TcpStream>,
    mdm: &str,
    req: &MdmRequest,
    wait: Duration,
) -> Result<MdmResponse, FrameError> {
    let work = async {
        let s = match conn {
            Some(s) => s,
            None => conn.insert(frame::connect(mdm).await?),
        };
        frame::exchange(s, req).await
    };
    tokio::time::timeout(wait, work)
        .await
        .map_err(|_| FrameError::Timeout(mdm.to_string()))?
}

/// The address the MDM should use for this SDS. A wildcard listener is announced with
/// the local IP of the route to the MDM (a connected UDP socket sends nothing but
/// picks that IP).
async fn advertised(listen: SocketAddr, mdm: &str) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    match mdm_client::local_ip_towards(mdm).await {
        Some(ip) => SocketAddr::new(ip, listen.port()),
        None => frame::reachable(listen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wildcard_listener_is_announced_on_the_route_to_the_mdm() {
        let specific: SocketAddr = "10.1.2.3:7072".parse().unwrap();
        assert_eq!(advertised(specific, "127.0.0.1:6611").await, specific);
        let any: SocketAddr = "0.0.0.0:7072".parse().unwrap();
        let a = advertised(any, "127.0.0.1:6611").await;
        assert_eq!(a, "127.0.0.1:7072".parse().unwrap());
    }

    /// Answers every heartbeat with a lease naming one epoch, on one connection.
    #[tokio::test]
    async fn answers_raise_epochs_then_renew_the_lease() {
        let mdm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mdm_addr = mdm.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = mdm.accept().await.unwrap();
            let mut beats = 0;
            while let Some(req) = frame::read::<_, MdmRequest>(&mut s).await.unwrap() {
                assert!(matches!(req, MdmRequest::SdsHeartbeat { sds_id: 2, .. }));
                beats += 1;
                let lease = MdmReply::Lease {
                    lease_ms: 5000,
                    epochs: vec![(7, 9)],
                };
                frame::write(&mut s, &MdmResponse::Ok(lease)).await.unwrap();
                if beats == 3 {
                    return beats;
                }
            }
            beats
        });
        let lease = Arc::new(Lease::default());
        let epochs = Arc::new(Epochs::default());
        let hb = Heartbeat::new(lease.clone(), epochs.clone(), Arc::default());
        hb.start(Identity {
            mdm: mdm_addr,
            system_id: 1,
            sds_id: 2,
            listen: "127.0.0.1:7072".parse().unwrap(),
        });
        // Three heartbeats on one connection: about a second.
        assert_eq!(server.await.unwrap(), 3);
        lease.check().unwrap();
        assert!(epochs.admit(7, 8).is_err());
        hb.stop();
    }
}
