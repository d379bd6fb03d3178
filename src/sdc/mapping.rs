//! The gateway's SDC role: register with the MDM, then follow the volumes mapped to
//! this gateway and keep the exported LUN map in step with them.

use super::sds_pool::SdsPool;
use super::volume::{fetch_layout, PoolVolume, VolumeError};
use crate::backend::BlockBackend;
use crate::cluster::api::{MappedView, MappedVolume, MdmReply, MdmRequest};
use crate::cluster::mdm_client::{self, MdmCallError};
use crate::iscsi::target::Target;
use crate::scsi::{Identity, LogicalUnit, LunMap};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum SdcError {
    #[error("{0}; check --mdm and that the MDM runs")]
    Mdm(MdmCallError),
    #[error("the MDM at {mdm} answered out of turn: {reply}")]
    Unexpected { mdm: String, reply: String },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// A registered gateway and the pool volumes it currently exports.
#[derive(Debug)]
pub struct Sdc {
    pub id: u64,
    pub system_id: u64,
    mdm: String,
    sds: Arc<SdsPool>,
    volumes: HashMap<u64, (PoolVolume, Arc<LogicalUnit>)>,
}

async fn ask(mdm: &str, req: &MdmRequest, timeout: Duration) -> Result<MdmReply, SdcError> {
    mdm_client::ask(mdm, req, timeout)
        .await
        .map_err(SdcError::Mdm)
}

fn unexpected(mdm: &str, reply: MdmReply) -> SdcError {
    SdcError::Unexpected {
        mdm: mdm.to_string(),
        reply: format!("{reply:?}"),
    }
}

impl Sdc {
    /// Registers this gateway under `name` (created on first contact, refreshed after).
    pub async fn register(mdm: &str, name: &str, ip: &str) -> Result<Sdc, SdcError> {
        let req = MdmRequest::RegisterSdc {
            name: name.to_string(),
            ip: ip.to_string(),
        };
        match ask(mdm, &req, Duration::from_secs(10)).await? {
            MdmReply::Registered { sdc_id, system_id } => {
                info!(sdc = name, id = %format!("{sdc_id:016x}"), mdm, "registered with the MDM as an SDC");
                Ok(Sdc {
                    id: sdc_id,
                    system_id,
                    mdm: mdm.to_string(),
                    sds: Arc::new(SdsPool::default()),
                    volumes: HashMap::new(),
                })
            }
            other => Err(unexpected(mdm, other)),
        }
    }

    /// Waits (long poll) for the mapping generation to pass `since`.
    pub async fn watch(&self, since: u64) -> Result<MappedView, SdcError> {
        let req = MdmRequest::WatchMappings {
            sdc_id: self.id,
            since,
        };
        match ask(&self.mdm, &req, Duration::from_secs(60)).await? {
            MdmReply::Mappings(v) => Ok(v),
            other => Err(unexpected(&self.mdm, other)),
        }
    }

    /// Brings the exported volumes in line with `view` and returns the LUN map. Units
    /// of volumes that stay mapped are kept, so their state (unit attentions, ...)
    /// survives the update.
    pub async fn apply(&mut self, view: &MappedView) -> Result<LunMap, SdcError> {
        let mut next = HashMap::new();
        let mut luns = LunMap::new();
        for v in &view.volumes {
            let entry = match self.volumes.remove(&v.id) {
                Some((vol, unit)) => {
                    if vol.epoch() != v.epoch || vol.num_blocks() * 512 != v.size_bytes {
                        vol.set_layout(fetch_layout(&self.mdm, v.id).await?);
                        info!(volume = %v.name, epoch = v.epoch, size = v.size_bytes, "layout refreshed");
                    }
                    (vol, unit)
                }
                None => self.open(v).await?,
            };
            if let Some(lun) = v.lun {
                luns.insert(lun, entry.1.clone());
            }
            next.insert(v.id, entry);
        }
        for (_, (_, unit)) in self.volumes.drain() {
            info!(serial = %unit.identity().serial, "volume unmapped from this gateway");
        }
        self.volumes = next;
        Ok(luns)
    }

    async fn open(&self, v: &MappedVolume) -> Result<(PoolVolume, Arc<LogicalUnit>), SdcError> {
        let layout = fetch_layout(&self.mdm, v.id).await?;
        let vol = PoolVolume::new(layout, self.mdm.clone(), self.sds.clone());
        let id = Identity::from_volume_id(&v.name, v.id);
        let unit = Arc::new(LogicalUnit::new(Arc::new(vol.clone()), id, false));
        info!(volume = %v.name, lun = v.lun, size = v.size_bytes, thin = v.thin, "pool volume online");
        Ok((vol, unit))
    }

    /// Follows the MDM's mappings for as long as the gateway runs, installing each new
    /// LUN map on `targets`. MDM outages are retried; the last map stays in force.
    pub async fn follow(mut self, mut since: u64, targets: Vec<Arc<Target>>) {
        loop {
            let step = async {
                let view = self.watch(since).await?;
                let luns = self.apply(&view).await?;
                Ok::<_, SdcError>((view.generation, luns))
            };
            match step.await {
                Ok((generation, luns)) => {
                    if generation != since {
                        let luns = Arc::new(luns);
                        for t in &targets {
                            t.set_luns(luns.clone());
                        }
                        since = generation;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot follow the MDM's mappings; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
