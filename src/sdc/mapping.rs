//! The gateway's SDC role: register with the MDM, then follow the volumes mapped to
//! this gateway and keep the exported LUN map in step with them.

use super::sds_pool::SdsPool;
use super::shared::{self, ClusterStore, Stores};
use super::volume::{fetch_layout, PoolVolume, VolumeError};
use crate::backend::{BlockBackend, BLOCK_SIZE};
use crate::cluster::api::{AccessMode, MappedView, MappedVolume, MdmReply, MdmRequest};
use crate::cluster::mdm_client::{self, MdmCallError};
use crate::iscsi::login::ChapSecrets;
use crate::iscsi::target::{Access, InitiatorAccess, Target};
use crate::scsi::shared::{SharedError, SharedStore};
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
    #[error(transparent)]
    Shared(#[from] SharedError),
}

/// A pool volume this gateway serves, with its logical units: one read-write, and a
/// write-protected one for read-only mappings, both over the same volume and identity.
#[derive(Debug)]
struct Served {
    vol: PoolVolume,
    rw: Arc<LogicalUnit>,
    ro: Arc<LogicalUnit>,
}

impl Served {
    fn unit(&self, access: AccessMode) -> Arc<LogicalUnit> {
        match access {
            AccessMode::ReadWrite => self.rw.clone(),
            AccessMode::ReadOnly => self.ro.clone(),
        }
    }
}

/// A registered gateway and the pool volumes it currently exports.
#[derive(Debug)]
pub struct Sdc {
    pub id: u64,
    pub system_id: u64,
    /// The MDM's number for this gateway (portal group tag, ALUA target port group and
    /// relative target port); 0 from an MDM too old to give one.
    pub number: u16,
    mdm: String,
    sds: Arc<SdsPool>,
    volumes: HashMap<u64, Served>,
    /// Shared SCSI state of the served volumes, also reached by the task that follows
    /// the MDM's changes to it.
    stores: Stores,
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
            MdmReply::Registered {
                sdc_id,
                system_id,
                number,
            } => {
                info!(sdc = name, id = %format!("{sdc_id:016x}"), number, mdm, "registered with the MDM as an SDC");
                Ok(Sdc {
                    id: sdc_id,
                    system_id,
                    number,
                    mdm: mdm.to_string(),
                    sds: Arc::new(SdsPool::default()),
                    volumes: HashMap::new(),
                    stores: Stores::default(),
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

    /// Brings the served volumes in line with `view` and returns who sees what. Units
    /// of volumes that stay are kept, so their state (unit attentions, ...) survives;
    /// a volume whose size changed tells every nexus of its units (CAPACITY DATA HAS
    /// CHANGED). Every unit learns which gateways serve its volume (ALUA port groups).
    pub async fn apply(&mut self, view: &MappedView) -> Result<Access, SdcError> {
        let mut next = HashMap::new();
        for v in &view.volumes {
            let served = match self.volumes.remove(&v.id) {
                Some(s) => {
                    let old_size = s.vol.num_blocks() * BLOCK_SIZE as u64;
                    if s.vol.epoch() != v.epoch || old_size != v.size_bytes {
                        s.vol.set_layout(fetch_layout(&self.mdm, v.id).await?);
                        info!(volume = %v.name, epoch = v.epoch, size = v.size_bytes, "layout refreshed");
                    }
                    if s.vol.num_blocks() * BLOCK_SIZE as u64 != old_size {
                        s.rw.capacity_changed();
                        s.ro.capacity_changed();
                    }
                    s
                }
                None => self.open(v).await?,
            };
            served.rw.ports().set(v.gateways.clone());
            next.insert(v.id, served);
        }
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in self.volumes.drain() {
            stores.remove(&id);
            info!(serial = %s.rw.identity().serial, "volume no longer served by this gateway");
        }
        drop(stores);
        self.volumes = next;
        let shared: LunMap = view
            .volumes
            .iter()
            .filter_map(|v| Some((v.lun?, self.volumes[&v.id].rw.clone())))
            .collect();
        let initiators = view
            .initiators
            .iter()
            .map(|i| {
                let luns: LunMap = i
                    .luns
                    .iter()
                    .filter_map(|&(lun, vol, access)| {
                        Some((lun, self.volumes.get(&vol)?.unit(access)))
                    })
                    .collect();
                let chap = i.chap.as_ref().map(|c| ChapSecrets {
                    username: c.username.clone(),
                    secret: c.secret.clone(),
                    mutual: c.mutual.clone(),
                });
                (
                    i.iqn.clone(),
                    InitiatorAccess {
                        chap,
                        luns: Arc::new(luns),
                    },
                )
            })
            .collect();
        Ok(Access {
            shared: Arc::new(shared),
            initiators,
        })
    }

    async fn open(&self, v: &MappedVolume) -> Result<Served, SdcError> {
        let layout = fetch_layout(&self.mdm, v.id).await?;
        let vol = PoolVolume::new(layout, self.mdm.clone(), self.sds.clone());
        let id = Identity::from_volume_id(&v.name, v.id);
        let backend: Arc<dyn crate::backend::BlockBackend> = Arc::new(vol.clone());
        let store = Arc::new(ClusterStore::open(&self.mdm, self.id, v.id).await?);
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(v.id, store.clone());
        let shared: Arc<dyn SharedStore> = store;
        let rw = Arc::new(LogicalUnit::new(backend, id, false, shared));
        let ro = Arc::new(rw.twin(true));
        info!(volume = %v.name, sdc_lun = ?v.lun, size = v.size_bytes, thin = v.thin, "pool volume online");
        Ok(Served { vol, rw, ro })
    }

    /// Follows the MDM's mappings for as long as the gateway runs, installing each new
    /// LUN map on `targets`. MDM outages are retried; the last map stays in force.
    pub async fn follow(mut self, mut since: u64, targets: Vec<Arc<Target>>) {
        tokio::spawn(shared::follow(
            self.mdm.clone(),
            self.id,
            self.stores.clone(),
        ));
        loop {
            let step = async {
                let view = self.watch(since).await?;
                let access = self.apply(&view).await?;
                Ok::<_, SdcError>((view.generation, access))
            };
            match step.await {
                Ok((generation, access)) => {
                    if generation != since {
                        for t in &targets {
                            t.set_access(access.clone());
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
