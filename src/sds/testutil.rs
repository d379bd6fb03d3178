//! Test helpers for code that runs real SDS: a fake MDM granting leases, and waiting
//! for an SDS to hold one. An SDS serves no chunk data without a lease, so every test
//! doing I/O against one needs an MDM answering its heartbeats.

use crate::cluster::api::{MdmReply, MdmRequest, MdmResponse};
use crate::cluster::chunk::{ChunkClient, ChunkError, ChunkRef};
use crate::cluster::frame;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake MDM answers; changed by tests while it runs.
#[derive(Debug, Clone)]
pub struct MdmScript {
    pub lease_ms: u64,
    pub epochs: Vec<(u64, u64)>,
    /// Drop every connection unanswered (an MDM that is down or cut off).
    pub silent: bool,
}

/// A stand-in MDM on loopback answering `SdsHeartbeat` with `Lease`, as the real one
/// does; nothing else. It runs until the test's runtime ends (dropping it does not
/// stop it), so a test may let it go once its SDS holds a lease.
pub struct FakeMdm {
    pub port: u16,
    script: Arc<Mutex<MdmScript>>,
}

impl FakeMdm {
    pub async fn start(lease_ms: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(MdmScript {
            lease_ms,
            epochs: Vec::new(),
            silent: false,
        }));
        let shared = script.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let script = shared.clone();
                tokio::spawn(async move {
                    while let Ok(Some(req)) = frame::read::<_, MdmRequest>(&mut s).await {
                        assert!(matches!(req, MdmRequest::SdsHeartbeat { .. }), "{req:?}");
                        let now = script.lock().unwrap().clone();
                        if now.silent {
                            return;
                        }
                        let lease = MdmReply::Lease {
                            lease_ms: now.lease_ms,
                            epochs: now.epochs,
                        };
                        if frame::write(&mut s, &MdmResponse::Ok(lease)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, script }
    }

    pub fn script(&self) -> std::sync::MutexGuard<'_, MdmScript> {
        self.script.lock().unwrap()
    }
}

/// Waits (up to 5 s) until the SDS serves data again, i.e. holds a lease.
pub async fn until_served(c: &ChunkClient, device: u64) {
    let probe = ChunkRef {
        volume: u64::MAX,
        chunk: 0,
        device,
        epoch: 0,
    };
    for _ in 0..250 {
        match c.status(probe, 0).await {
            Err(ChunkError::Fenced(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return,
        }
    }
    panic!("the SDS got no lease within 5 s");
}
