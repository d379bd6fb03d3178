//! What a gateway shares about SDS across every volume it serves: one pipelined chunk
//! client per SDS address, so all volumes' I/O to an SDS shares its few connections,
//! and the failure reports sent to the MDM about each SDS, one at a time.

use super::single_flight::SingleFlight;
use crate::cluster::api::{fmt_id, MdmReply, MdmRequest};
use crate::cluster::chunk::ChunkClient;
use crate::cluster::mdm_client;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A verdict is reused this long by requests that fail on the same SDS after it came:
/// they failed for the reason already reported, and asking again at once would only
/// load the MDM.
const REPORT_REUSE: Duration = Duration::from_millis(250);

/// How long the MDM may take to check an SDS and commit layouts without it.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports about one SDS less than this apart belong to one failover episode, logged
/// once (at its start and when the verdict changes), not once per request.
const EPISODE: Duration = Duration::from_secs(30);

/// What the MDM said about a reported SDS: `Ok(down)`, or why it could not be asked.
pub type Verdict = Result<bool, String>;

#[derive(Debug)]
pub struct SdsPool {
    clients: DashMap<SocketAddr, Arc<ChunkClient>>,
    reports: SingleFlight<u64, Verdict>,
    /// Per SDS: when it was last reported, and the last verdict of its current failover
    /// episode (reports less than `EPISODE` apart), so each episode is logged once.
    episodes: Arc<DashMap<u64, (Instant, Option<Verdict>)>>,
}

impl Default for SdsPool {
    fn default() -> Self {
        Self {
            clients: DashMap::new(),
            reports: SingleFlight::new(REPORT_REUSE),
            episodes: Arc::default(),
        }
    }
}

impl SdsPool {
    pub fn client(&self, addr: SocketAddr) -> Arc<ChunkClient> {
        self.clients
            .entry(addr)
            .or_insert_with(|| Arc::new(ChunkClient::local_first(addr)))
            .clone()
    }

    /// Tells the MDM at `mdm` that `sds_id` failed a request, and returns its verdict
    /// (the MDM answers `down` only once layouts without the SDS are committed).
    /// Requests failing on one SDS together share one report.
    pub async fn report(&self, mdm: &str, sds_id: u64, reason: String) -> Verdict {
        let mdm = mdm.to_string();
        let episodes = self.episodes.clone();
        self.reports
            .run(sds_id, move || async move {
                let sds = fmt_id(sds_id);
                let now = Instant::now();
                let new_episode = {
                    let mut e = episodes.entry(sds_id).or_insert((now, None));
                    let fresh = e.1.is_none() || now.duration_since(e.0) > EPISODE;
                    e.0 = now;
                    if fresh {
                        e.1 = None;
                    }
                    fresh
                };
                if new_episode {
                    warn!(%sds, %reason, "SDS failed a chunk request; reporting it to the MDM");
                } else {
                    debug!(%sds, %reason, "reporting SDS failure again");
                }
                let req = MdmRequest::ReportSdsFailure { sds_id, reason };
                let verdict = match mdm_client::ask(&mdm, &req, REPORT_TIMEOUT).await {
                    Ok(MdmReply::SdsVerdict { down }) => Ok(down),
                    Ok(other) => Err(format!("the MDM at {mdm} answered {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                if let Some(mut e) = episodes.get_mut(&sds_id) {
                    if e.1.as_ref() != Some(&verdict) {
                        match &verdict {
                            Ok(true) => warn!(%sds, "the MDM declared the SDS down and moved its chunks' primaries; retrying on the new layout"),
                            Ok(false) => info!(%sds, "the SDS answers the MDM; retrying it"),
                            Err(e) => warn!(%sds, error = %e, "cannot report the SDS failure to the MDM; retrying"),
                        }
                    }
                    e.1 = Some(verdict.clone());
                }
                verdict
            })
            .await
            .unwrap_or_else(|| Err("the failure report task panicked".into()))
    }
}
