//! How the MDM talks to SDS: control messages over the chunk protocol, each bounded by
//! a timeout, one at a time or fanned out to many SDS at once. Behind a trait so tests
//! can stand in for SDS.

use crate::cluster::api::{SdsControl, SdsControlReply};
use crate::cluster::chunk::{ChunkClient, ChunkRef, Mirror};
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

/// Sends one control message to the SDS at `addr` and returns its answer, or why there
/// was none.
#[async_trait]
pub trait SdsLink: Send + Sync + 'static {
    async fn control(&self, addr: SocketAddr, msg: &SdsControl) -> Result<SdsControlReply, String>;

    /// Asks the SDS at `addr`, which holds the chunk copy `at`, to copy it whole to
    /// `target` (rebuild and rebalance); returns the bytes of data it sent.
    async fn replicate(
        &self,
        addr: SocketAddr,
        at: ChunkRef,
        target: Mirror,
    ) -> Result<u64, String>;
}

/// The real thing: the chunk protocol's control frames, and Replicate requests over
/// one pipelined client per SDS (rebuild sends thousands).
#[derive(Default)]
pub struct ChunkLink {
    clients: Mutex<HashMap<SocketAddr, Arc<ChunkClient>>>,
}

#[async_trait]
impl SdsLink for ChunkLink {
    async fn control(&self, addr: SocketAddr, msg: &SdsControl) -> Result<SdsControlReply, String> {
        ChunkClient::new(addr)
            .control(msg)
            .await
            .map_err(|e| e.to_string())
    }

    async fn replicate(
        &self,
        addr: SocketAddr,
        at: ChunkRef,
        target: Mirror,
    ) -> Result<u64, String> {
        let client = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_insert_with(|| Arc::new(ChunkClient::new(addr)))
            .clone();
        client
            .replicate(at, target)
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("SDS {sds} at {addr} did not answer within {secs} s; check that it runs and that the MDM can reach {addr}")]
    Timeout {
        sds: String,
        addr: SocketAddr,
        secs: u64,
    },
    #[error("SDS {sds} at {addr}: {reason}")]
    Failed {
        sds: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error(
        "SDS {sds} at {addr} answered {request} with {reply}; is it running a matching version?"
    )]
    Unexpected {
        sds: String,
        addr: SocketAddr,
        request: &'static str,
        reply: String,
    },
}

/// An SDS as the link needs it: its name for messages and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: u64,
    pub name: String,
    pub addr: SocketAddr,
}

impl Peer {
    /// The error for an answer that does not fit the request.
    pub fn unexpected(&self, msg: &SdsControl, reply: &SdsControlReply) -> LinkError {
        LinkError::Unexpected {
            sds: self.name.clone(),
            addr: self.addr,
            request: request_name(msg),
            reply: format!("{reply:?}").chars().take(120).collect(),
        }
    }
}

pub fn request_name(msg: &SdsControl) -> &'static str {
    match msg {
        SdsControl::Claim { .. } => "Claim",
        SdsControl::Peers { .. } => "Peers",
        SdsControl::AllocateThick { .. } => "AllocateThick",
        SdsControl::FreeVolume { .. } => "FreeVolume",
        SdsControl::Inventory => "Inventory",
        SdsControl::Ping => "Ping",
        SdsControl::FreeChunks { .. } => "FreeChunks",
        SdsControl::Dirty { .. } => "Dirty",
        SdsControl::Release => "Release",
        SdsControl::ReleaseDevice { .. } => "ReleaseDevice",
    }
}

pub async fn call(
    link: &dyn SdsLink,
    peer: &Peer,
    msg: &SdsControl,
    timeout: Duration,
) -> Result<SdsControlReply, LinkError> {
    match tokio::time::timeout(timeout, link.control(peer.addr, msg)).await {
        Err(_) => Err(LinkError::Timeout {
            sds: peer.name.clone(),
            addr: peer.addr,
            secs: timeout.as_secs().max(1),
        }),
        Ok(Err(reason)) => Err(LinkError::Failed {
            sds: peer.name.clone(),
            addr: peer.addr,
            reason,
        }),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// Checks the answer to a request whose only good reply is `Ok`.
pub fn expect_ok(
    peer: &Peer,
    msg: &SdsControl,
    answer: Result<SdsControlReply, LinkError>,
) -> Result<(), LinkError> {
    match answer? {
        SdsControlReply::Ok => Ok(()),
        other => Err(peer.unexpected(msg, &other)),
    }
}

/// Sends each SDS its message concurrently; answers come back in request order.
pub async fn fan_out(
    link: &Arc<dyn SdsLink>,
    calls: Vec<(Peer, SdsControl)>,
    timeout: Duration,
) -> Vec<(Peer, SdsControl, Result<SdsControlReply, LinkError>)> {
    let mut set = JoinSet::new();
    let n = calls.len();
    for (i, (peer, msg)) in calls.into_iter().enumerate() {
        let link = link.clone();
        set.spawn(async move {
            let r = call(link.as_ref(), &peer, &msg, timeout).await;
            (i, peer, msg, r)
        });
    }
    let mut out: Vec<Option<_>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, peer, msg, r) = done.expect("an SDS call does not panic");
        out[i] = Some((peer, msg, r));
    }
    out.into_iter()
        .map(|o| o.expect("every call answers"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Slow;

    #[async_trait]
    impl SdsLink for Slow {
        async fn control(
            &self,
            addr: SocketAddr,
            msg: &SdsControl,
        ) -> Result<SdsControlReply, String> {
            match (addr.port(), msg) {
                (1, _) => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(SdsControlReply::Ok)
                }
                (2, _) => Err("device /dev/sdb belongs to another system".into()),
                (_, SdsControl::Ping) => Ok(SdsControlReply::Ok),
                _ => Ok(SdsControlReply::Pong {
                    system_id: 1,
                    sds_id: 2,
                }),
            }
        }

        async fn replicate(&self, _: SocketAddr, _: ChunkRef, _: Mirror) -> Result<u64, String> {
            Err("not an SDS".into())
        }
    }

    fn peer(port: u16) -> Peer {
        Peer {
            id: port as u64,
            name: format!("sds{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[tokio::test]
    async fn errors_name_the_sds_and_what_went_wrong() {
        let t = Duration::from_millis(50);
        let e = call(&Slow, &peer(1), &SdsControl::Ping, t)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SDS sds1 at 127.0.0.1:1 did not answer"),
            "{e}"
        );
        let e = call(&Slow, &peer(2), &SdsControl::Ping, t)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "SDS sds2 at 127.0.0.1:2: device /dev/sdb belongs to another system"
        );
        let msg = SdsControl::FreeVolume { volume: 1 };
        let answer = call(&Slow, &peer(3), &msg, t).await;
        let e = expect_ok(&peer(3), &msg, answer).unwrap_err();
        assert!(
            e.to_string().contains("answered FreeVolume with Pong"),
            "{e}"
        );
        let answer = call(&Slow, &peer(3), &SdsControl::Ping, t).await;
        expect_ok(&peer(3), &SdsControl::Ping, answer).unwrap();
    }

    #[tokio::test]
    async fn fan_out_keeps_request_order() {
        let link: Arc<dyn SdsLink> = Arc::new(Slow);
        let calls = [1, 2, 3].map(|p| (peer(p), SdsControl::Ping)).to_vec();
        let out = fan_out(&link, calls, Duration::from_millis(50)).await;
        let ports: Vec<u16> = out.iter().map(|(p, _, _)| p.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3]);
        assert!(out[0].2.is_err() && out[1].2.is_err() && out[2].2.is_ok());
    }
}
