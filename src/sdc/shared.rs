//! A pool volume's shared SCSI state as one gateway holds it.
//!
//! The MDM owns the state (reservations) and orders every change; this gateway keeps
//! the last copy it saw for the per-command conflict check, writes through the MDM
//! with compare-and-swap, and follows the changes other gateways make with a long
//! poll whose next request acknowledges the last answer (see `mdm::scsi_hub`), so a
//! change is in force here before the command that made it elsewhere completes.

use crate::cluster::api::{MdmReply, MdmRequest, VolumeScsi};
use crate::cluster::mdm_client;
use crate::scsi::shared::{SharedError, SharedEvent, SharedStore, Sinks, UnitSink};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// An update waits for the other gateways up to 5 s at the MDM; allow for that.
const STORE_TIMEOUT: Duration = Duration::from_secs(15);
/// A watch is held open up to about 20 s.
const WATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The stores of the volumes this gateway serves, by volume id.
pub type Stores = Arc<Mutex<HashMap<u64, Arc<ClusterStore>>>>;

#[derive(Debug)]
pub struct ClusterStore {
    volume_id: u64,
    sdc_id: u64,
    mdm: String,
    cur: Mutex<(u64, Bytes)>,
    sinks: Sinks,
}

fn unavailable(e: impl std::fmt::Display) -> SharedError {
    SharedError::Unavailable(e.to_string())
}

impl ClusterStore {
    /// Starts from the MDM's current state, so the gateway never serves the volume
    /// without knowing its reservations.
    pub async fn open(mdm: &str, sdc_id: u64, volume_id: u64) -> Result<Self, SharedError> {
        let req = MdmRequest::GetScsiState { volume_id };
        let state = match mdm_client::ask(mdm, &req, STORE_TIMEOUT).await {
            Ok(MdmReply::ScsiState { state, .. }) => state,
            Ok(other) => return Err(unavailable(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(unavailable(e)),
        };
        Ok(Self {
            volume_id,
            sdc_id,
            mdm: mdm.to_string(),
            cur: Mutex::new((state.version, Bytes::from(state.state))),
            sinks: Sinks::default(),
        })
    }

    /// Takes the MDM's state if it is newer than ours (answers can cross).
    pub fn update(&self, s: VolumeScsi) {
        let mut cur = self.cur.lock().unwrap_or_else(|e| e.into_inner());
        if s.version > cur.0 {
            *cur = (s.version, Bytes::from(s.state));
        }
    }

    /// Hands events from another gateway to this gateway's units of the volume.
    pub fn deliver(&self, events: &[SharedEvent]) {
        self.sinks.deliver(events);
    }

    async fn ask(&self, req: MdmRequest) -> Result<MdmReply, SharedError> {
        mdm_client::ask(&self.mdm, &req, STORE_TIMEOUT)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl SharedStore for ClusterStore {
    fn load(&self) -> (u64, Bytes) {
        self.cur.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn store(
        &self,
        version: u64,
        state: Bytes,
        events: Vec<SharedEvent>,
    ) -> Result<u64, SharedError> {
        let state = String::from_utf8(state.to_vec())
            .map_err(|_| unavailable("the SCSI engine produced a state that is not UTF-8"))?;
        let req = MdmRequest::StoreScsiState {
            volume_id: self.volume_id,
            sdc_id: self.sdc_id,
            version,
            state,
            events: events.clone(),
        };
        match self.ask(req).await? {
            MdmReply::ScsiState { stored, state } => {
                let now = state.version;
                self.update(state);
                if stored {
                    self.sinks.deliver(&events);
                    Ok(now)
                } else {
                    Err(SharedError::Conflict(now))
                }
            }
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    async fn publish(&self, events: Vec<SharedEvent>) -> Result<(), SharedError> {
        self.sinks.deliver(&events);
        let req = MdmRequest::PublishScsiEvents {
            volume_id: self.volume_id,
            sdc_id: self.sdc_id,
            events,
        };
        match self.ask(req).await? {
            MdmReply::Ok => Ok(()),
            other => Err(unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    fn attach(&self, sink: UnitSink) {
        self.sinks.attach(sink);
    }
}

/// Follows the shared SCSI state of this gateway's volumes for as long as it runs.
pub async fn follow(mdm: String, sdc_id: u64, stores: Stores) {
    // Past any generation: the first answer comes at once and carries no old events.
    let mut since = u64::MAX;
    loop {
        let req = MdmRequest::WatchScsi { sdc_id, since };
        match mdm_client::ask(&mdm, &req, WATCH_TIMEOUT).await {
            Ok(MdmReply::ScsiView(view)) => {
                let stores = stores.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for v in view.volumes {
                    if let Some(s) = stores.get(&v.volume_id) {
                        s.update(v);
                    }
                }
                for (volume, ev) in &view.events {
                    if let Some(s) = stores.get(volume) {
                        s.deliver(std::slice::from_ref(ev));
                    }
                }
                since = view.generation;
            }
            Ok(other) => {
                warn!(reply = ?other, "the MDM answered a shared SCSI state watch out of turn");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot follow shared SCSI state (reservations); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
