//! Admin requests (scli): each one validated, carried out on the SDS it needs, and only
//! then committed, so a request that fails anywhere leaves the cluster as it was.

use super::change::{self, ChangeError, Claim};
use super::ids::IdGen;
use super::link::{self, LinkError, Peer};
use super::model::{ModelError, Sds, State};
use super::query::{self, Observed};
use super::service::Mdm;
use super::store::StoreError;
use crate::cluster::api::{
    fmt_id, AddSds, AdminReply, AdminRequest, DeviceReport, SdsControl, SdsControlReply,
};
use std::time::Duration;
use tracing::{info, warn};

/// Claiming may format device headers.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Reserving a thick volume's slots may allocate many files' worth of space.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Freeing is best effort; a slow SDS is only logged.
const FREE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries must stay snappy with an SDS down.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not claim the devices: {0}; nothing was added")]
    Claim(LinkError),
    #[error("row {row} of the batch (SDS {sds}): {reason}; no SDS of the batch was added")]
    BatchRow {
        row: usize,
        sds: String,
        reason: String,
    },
    #[error(
        "could not reserve space for thick volume {volume}: {reason}; the volume was not {what}"
    )]
    Allocate {
        volume: String,
        what: &'static str,
        reason: LinkError,
    },
}

impl Mdm {
    pub(super) async fn admin(&self, req: AdminRequest) -> Result<AdminReply, AdminError> {
        use AdminRequest as R;
        match req {
            R::AddProtectionDomain { name } => {
                let id = self
                    .apply::<_, AdminError>(|st, ids| change::add_pd(st, ids, &name))
                    .await?;
                info!(pd = %name, id = %fmt_id(id), "protection domain added");
                Ok(created("protection domain", id, name))
            }
            R::RemoveProtectionDomain { pd } => {
                let pd = self
                    .apply::<_, AdminError>(|st, _| change::remove_pd(st, &pd))
                    .await?;
                info!(pd = %pd.name, "protection domain removed");
                Ok(AdminReply::Done(format!(
                    "removed protection domain {}",
                    pd.name
                )))
            }
            R::AddStoragePool {
                pd,
                name,
                media_type,
                protection,
            } => {
                let id = self
                    .apply::<_, AdminError>(|st, ids| {
                        change::add_pool(st, ids, &pd, &name, media_type, protection)
                    })
                    .await?;
                info!(pool = %name, id = %fmt_id(id), ?media_type, ?protection, "storage pool added");
                Ok(created("storage pool", id, name))
            }
            R::RemoveStoragePool { pd, pool } => {
                let pool = self
                    .apply::<_, AdminError>(|st, _| change::remove_pool(st, &pd, &pool))
                    .await?;
                info!(pool = %pool.name, "storage pool removed");
                Ok(AdminReply::Done(format!(
                    "removed storage pool {}",
                    pool.name
                )))
            }
            R::AddSds(req) => self.add_sds(req).await,
            R::AddSdsBatch(reqs) => self.add_sds_batch(reqs).await,
            R::RemoveSds { sds } => Ok(AdminReply::Done(self.remove_sds(&sds).await?)),
            R::RemoveSdsDevice { sds, device } => Ok(AdminReply::Done(
                self.remove_sds_device(&sds, &device).await?,
            )),
            R::SetPolicy {
                pd,
                pool,
                rebalance,
                policy,
            } => Ok(AdminReply::Done(
                self.set_policy(&pd, &pool, rebalance, policy).await?,
            )),
            R::AddSdsDevice { sds, device } => {
                let writer = self.writer.lock().await;
                let mut next = (*self.current()).clone();
                let mut ids = IdGen::new(&next);
                let claim = change::add_sds_device(&mut next, &mut ids, &sds, &device)?;
                let reports = self.claim(&next, &claim).await.map_err(AdminError::Claim)?;
                change::record_claim(&mut next, &claim, &reports)?;
                self.commit(&writer, next).await?;
                let dev = &claim.devices[0];
                info!(sds = %claim.sds.name, path = %dev.path, id = %fmt_id(dev.device_id),
                    "device added");
                let name = device.name.unwrap_or_else(|| dev.path.clone());
                Ok(created("device", dev.device_id, name))
            }
            R::AddVolume {
                pd,
                pool,
                name,
                size_bytes,
                thin,
            } => {
                let writer = self.writer.lock().await;
                let mut next = (*self.current()).clone();
                let mut ids = IdGen::new(&next);
                let (id, size) = change::add_volume(
                    &mut next,
                    &mut ids,
                    &pd,
                    &pool,
                    name.as_deref(),
                    size_bytes,
                    thin,
                )?;
                if !thin {
                    self.allocate(&next, id, 0, "created").await?;
                }
                if let Err(e) = self.commit(&writer, next.clone()).await {
                    if !thin {
                        self.free(&next, next.volumes[&id].pool, id).await;
                    }
                    return Err(e.into());
                }
                let name = next.volumes[&id].name.clone();
                info!(volume = %name, id = %fmt_id(id), size, thin, "volume added");
                Ok(AdminReply::Volume {
                    id,
                    name,
                    size_bytes: size,
                })
            }
            R::RemoveVolume { volume } => {
                let vol = self
                    .apply::<_, AdminError>(|st, _| change::remove_volume(st, &volume))
                    .await?;
                info!(volume = %vol.name, id = %fmt_id(vol.id), "volume removed");
                self.free(&self.current(), vol.pool, vol.id).await;
                Ok(AdminReply::Done(format!("removed volume {}", vol.name)))
            }
            R::ModifyVolumeCapacity { volume, size_bytes } => {
                let writer = self.writer.lock().await;
                let mut next = (*self.current()).clone();
                let (id, size, first_new) = change::grow_volume(&mut next, &volume, size_bytes)?;
                let vol = &next.volumes[&id];
                let name = vol.name.clone();
                if let Some(from) = first_new {
                    if !vol.thin {
                        // No rollback: the reservations that did succeed are for chunk
                        // indices this volume will reuse on a retry (placement is
                        // deterministic), and are freed with the volume.
                        self.allocate(&next, id, from, "grown").await?;
                    }
                    let epoch = vol.epoch;
                    self.commit(&writer, next).await?;
                    info!(volume = %name, size, epoch, "volume grown");
                }
                Ok(AdminReply::Volume {
                    id,
                    name,
                    size_bytes: size,
                })
            }
            R::RenameVolume { volume, new_name } => {
                let old = self
                    .apply::<_, AdminError>(|st, _| change::rename_volume(st, &volume, &new_name))
                    .await?;
                info!(volume = %new_name, old = %old, "volume renamed");
                Ok(AdminReply::Done(format!(
                    "renamed volume {old} to {new_name}"
                )))
            }
            R::MapVolumeToSdc { volume, sdc } => {
                let (lun, v, s) = self
                    .apply::<_, AdminError>(|st, _| {
                        let lun = change::map_volume(st, &volume, &sdc)?;
                        Ok((
                            lun,
                            st.volume(&volume)?.name.clone(),
                            st.sdc_by(&sdc)?.name.clone(),
                        ))
                    })
                    .await?;
                info!(volume = %v, sdc = %s, lun, "volume mapped");
                Ok(AdminReply::Done(format!(
                    "mapped volume {v} to SDC {s} as LUN {lun}"
                )))
            }
            R::UnmapVolumeFromSdc { volume, sdc } => {
                let (lun, v, s) = self
                    .apply::<_, AdminError>(|st, _| {
                        let lun = change::unmap_volume(st, &volume, &sdc)?;
                        Ok((
                            lun,
                            st.volume(&volume)?.name.clone(),
                            st.sdc_by(&sdc)?.name.clone(),
                        ))
                    })
                    .await?;
                info!(volume = %v, sdc = %s, lun, "volume unmapped");
                Ok(AdminReply::Done(format!(
                    "unmapped volume {v} (LUN {lun}) from SDC {s}"
                )))
            }
            R::QueryCluster => {
                let st = self.current();
                let obs = self.observe(&st, st.sds.values()).await;
                let addr = crate::cluster::frame::reachable(self.addr).to_string();
                let mut info = query::cluster(&st, addr, &obs);
                info.events = self.recovery.events();
                Ok(AdminReply::Cluster(info))
            }
            R::QueryAllSds => {
                let st = self.current();
                let obs = self.observe(&st, st.sds.values()).await;
                let all = st.sds.values().map(|s| query::sds(&st, s, &obs)).collect();
                Ok(AdminReply::AllSds(all))
            }
            R::QuerySds { sds } => {
                let st = self.current();
                let sds = st.sds_by(&sds)?;
                let obs = self.observe(&st, [sds].into_iter()).await;
                Ok(AdminReply::Sds(query::sds(&st, sds, &obs)))
            }
            R::QueryProtectionDomain { pd } => {
                let st = self.current();
                let pd = st.pd(&pd)?;
                let obs = self
                    .observe(&st, st.sds.values().filter(|s| s.pd == pd.id))
                    .await;
                let mut info = query::pd(&st, pd, &obs);
                for p in &mut info.pools {
                    (p.rebuild, p.rebalance) = self.recovery.progress(&st, p.id);
                }
                Ok(AdminReply::ProtectionDomain(info))
            }
            R::QueryStoragePool { pd, pool } => {
                let st = self.current();
                let pool = st.pool(&pd, &pool)?;
                let holders = change::pool_peers(&st, pool.id);
                let obs = self
                    .observe(&st, holders.iter().map(|p| &st.sds[&p.id]))
                    .await;
                let mut info = query::pool(&st, pool, &obs);
                (info.rebuild, info.rebalance) = self.recovery.progress(&st, pool.id);
                Ok(AdminReply::StoragePool(info))
            }
            R::QueryAllVolumes => {
                let st = self.current();
                let all = st.volumes.values().map(|v| query::volume(&st, v)).collect();
                Ok(AdminReply::AllVolumes(all))
            }
            R::QueryVolume { volume } => {
                let st = self.current();
                let v = st.volume(&volume)?;
                Ok(AdminReply::Volume1(query::volume(&st, v)))
            }
            R::QueryAllSdc => {
                let st = self.current();
                let all = st.sdc.values().map(|s| query::sdc(&st, s)).collect();
                Ok(AdminReply::AllSdc(all))
            }
            R::AddScsiInitiator { name, iqn, chap } => {
                let (id, iqn) = self
                    .apply::<_, AdminError>(|st, ids| {
                        let id = change::add_initiator(st, ids, &name, &iqn, chap.as_ref())?;
                        Ok((id, st.initiators[&id].iqn.clone()))
                    })
                    .await?;
                let chap = query::chap_mode(chap.as_ref());
                info!(initiator = %name, %iqn, id = %fmt_id(id), ?chap, "SCSI initiator added");
                Ok(created("SCSI initiator", id, name))
            }
            R::RemoveScsiInitiator { initiator } => {
                let gone = self
                    .apply::<_, AdminError>(|st, _| change::remove_initiator(st, &initiator))
                    .await?;
                let luns = gone.mappings.len();
                info!(initiator = %gone.name, iqn = %gone.iqn, luns, "SCSI initiator removed");
                Ok(AdminReply::Done(format!(
                    "Successfully removed SCSI initiator {} ({}) and its {luns} volume mapping(s)",
                    gone.name, gone.iqn
                )))
            }
            R::RenameScsiInitiator {
                initiator,
                new_name,
            } => {
                let old = self
                    .apply::<_, AdminError>(|st, _| {
                        change::rename_initiator(st, &initiator, &new_name)
                    })
                    .await?;
                info!(initiator = %new_name, old = %old, "SCSI initiator renamed");
                Ok(AdminReply::Done(format!(
                    "Successfully renamed SCSI initiator {old} to {new_name}"
                )))
            }
            R::SetScsiInitiatorChap { initiator, chap } => {
                let name = self
                    .apply::<_, AdminError>(|st, _| change::set_chap(st, &initiator, chap.as_ref()))
                    .await?;
                let mode = query::chap_mode(chap.as_ref());
                info!(initiator = %name, chap = ?mode, "SCSI initiator CHAP set");
                Ok(AdminReply::Done(match &chap {
                    Some(c) => format!(
                        "Successfully set {} CHAP for SCSI initiator {name}",
                        change::chap_words(c)
                    ),
                    None => format!("Successfully cleared CHAP for SCSI initiator {name}"),
                }))
            }
            R::MapVolumeToScsiInitiator {
                volume,
                initiator,
                lun,
                access,
            } => {
                let (lun, v, i) = self
                    .apply::<_, AdminError>(|st, _| {
                        let lun = change::map_to_initiator(st, &volume, &initiator, lun, access)?;
                        Ok((
                            lun,
                            st.volume(&volume)?.name.clone(),
                            st.initiator(&initiator)?.name.clone(),
                        ))
                    })
                    .await?;
                info!(volume = %v, initiator = %i, lun, ?access, "volume mapped to SCSI initiator");
                Ok(AdminReply::Done(format!(
                    "Successfully mapped volume {v} to SCSI initiator {i} as LUN {lun} ({access:?})"
                )))
            }
            R::UnmapVolumeFromScsiInitiator { volume, initiator } => {
                let (lun, v, i) = self
                    .apply::<_, AdminError>(|st, _| {
                        let lun = change::unmap_from_initiator(st, &volume, &initiator)?;
                        Ok((
                            lun,
                            st.volume(&volume)?.name.clone(),
                            st.initiator(&initiator)?.name.clone(),
                        ))
                    })
                    .await?;
                info!(volume = %v, initiator = %i, lun, "volume unmapped from SCSI initiator");
                Ok(AdminReply::Done(format!(
                    "Successfully unmapped volume {v} (LUN {lun}) from SCSI initiator {i}"
                )))
            }
            R::QueryAllScsiInitiators => {
                let all = query::initiators(&self.current());
                Ok(AdminReply::AllScsiInitiators(all))
            }
            R::QueryScsiInitiator { initiator } => {
                let st = self.current();
                let i = st.initiator(&initiator)?;
                Ok(AdminReply::ScsiInitiator(query::initiator(&st, i)))
            }
            R::ApplyInitiatorMap(map) => {
                let lines = self
                    .apply::<_, AdminError>(|st, ids| change::apply_map(st, ids, &map))
                    .await?;
                for line in &lines {
                    info!(change = %line, "initiator map");
                }
                info!(
                    changes = lines.len(),
                    initiators = map.initiators.len(),
                    "initiator map applied"
                );
                Ok(AdminReply::MapApplied(lines))
            }
            R::ExportInitiatorMap => Ok(AdminReply::InitiatorMap(query::initiator_map(
                &self.current(),
            ))),
        }
    }

    async fn add_sds(&self, req: AddSds) -> Result<AdminReply, AdminError> {
        let writer = self.writer.lock().await;
        let mut next = (*self.current()).clone();
        let mut ids = IdGen::new(&next);
        let claim = change::add_sds(&mut next, &mut ids, &req)?;
        let reports = self.claim(&next, &claim).await.map_err(AdminError::Claim)?;
        change::record_claim(&mut next, &claim, &reports)?;
        self.commit(&writer, next).await?;
        drop(writer);
        info!(sds = %claim.sds.name, id = %fmt_id(claim.sds.id), addr = %claim.sds.addr,
            devices = claim.devices.len(), "SDS added");
        self.push_peers();
        Ok(created("SDS", claim.sds.id, claim.sds.name))
    }

    /// All rows are validated, then all SDS claimed concurrently, then all committed.
    /// SDS claimed before another row failed keep their headers; a retry presents the
    /// same ids (see `IdGen::derived`), which they accept.
    async fn add_sds_batch(&self, reqs: Vec<AddSds>) -> Result<AdminReply, AdminError> {
        let writer = self.writer.lock().await;
        let mut next = (*self.current()).clone();
        let mut ids = IdGen::new(&next);
        let row_err = |row: usize, req: &AddSds, reason: String| AdminError::BatchRow {
            row: row + 1,
            sds: req.name.clone().unwrap_or_else(|| req.ip.clone()),
            reason,
        };
        let mut claims = Vec::with_capacity(reqs.len());
        for (row, req) in reqs.iter().enumerate() {
            let claim = change::add_sds(&mut next, &mut ids, req)
                .map_err(|e| row_err(row, req, e.to_string()))?;
            claims.push(claim);
        }
        let calls = claims
            .iter()
            .map(|c| (c.sds.clone(), c.message(next.system_id, self.addr.port())))
            .collect();
        let answers = link::fan_out(&self.link, calls, CLAIM_TIMEOUT).await;
        for (row, ((peer, msg, answer), claim)) in answers.into_iter().zip(&claims).enumerate() {
            let reports = claimed(&peer, &msg, answer)
                .map_err(|e| row_err(row, &reqs[row], e.to_string()))?;
            change::record_claim(&mut next, claim, &reports)
                .map_err(|e| row_err(row, &reqs[row], e.to_string()))?;
        }
        self.commit(&writer, next).await?;
        drop(writer);
        for c in &claims {
            info!(sds = %c.sds.name, id = %fmt_id(c.sds.id), addr = %c.sds.addr,
                devices = c.devices.len(), "SDS added");
        }
        self.push_peers();
        Ok(AdminReply::CreatedMany(
            claims.into_iter().map(|c| (c.sds.id, c.sds.name)).collect(),
        ))
    }

    async fn claim(&self, st: &State, claim: &Claim) -> Result<Vec<DeviceReport>, LinkError> {
        let msg = claim.message(st.system_id, self.addr.port());
        let answer = link::call(self.link.as_ref(), &claim.sds, &msg, CLAIM_TIMEOUT).await;
        claimed(&claim.sds, &msg, answer)
    }

    /// Reserves a thick volume's copies from chunk `from` on; if any SDS fails and this
    /// is a new volume, frees it on every SDS again.
    async fn allocate(
        &self,
        st: &State,
        volume: u64,
        from: u64,
        what: &'static str,
    ) -> Result<(), AdminError> {
        let calls = change::thick_allocations(st, volume, from);
        let answers = link::fan_out(&self.link, calls, ALLOCATE_TIMEOUT).await;
        let failed = answers
            .into_iter()
            .find_map(|(peer, msg, r)| link::expect_ok(&peer, &msg, r).err());
        let Some(reason) = failed else {
            return Ok(());
        };
        if from == 0 {
            self.free(st, st.volumes[&volume].pool, volume).await;
        }
        Err(AdminError::Allocate {
            volume: st.volumes[&volume].name.clone(),
            what,
            reason,
        })
    }

    /// Asks every SDS of the volume's pool to drop its copies; failures are logged.
    async fn free(&self, st: &State, pool: u64, volume: u64) {
        let calls = change::pool_peers(st, pool)
            .into_iter()
            .map(|p| (p, SdsControl::FreeVolume { volume }))
            .collect();
        for (peer, msg, r) in link::fan_out(&self.link, calls, FREE_TIMEOUT).await {
            if let Err(e) = link::expect_ok(&peer, &msg, r) {
                warn!(volume = %fmt_id(volume), error = %e,
                    "could not free the volume's chunks on an SDS; its space stays used");
            }
        }
    }

    /// Asks the SDS for their inventories; those that do not answer in time are
    /// reported disconnected.
    async fn observe<'a>(&self, st: &State, sds: impl Iterator<Item = &'a Sds>) -> Observed {
        let calls = sds
            .map(|s| (change::peer(s), SdsControl::Inventory))
            .collect();
        let answers = link::fan_out(&self.link, calls, INVENTORY_TIMEOUT).await;
        Observed::new(
            st,
            answers.into_iter().filter_map(|(peer, _, r)| match r {
                Ok(SdsControlReply::Inventory(inv)) => Some((peer.id, inv)),
                _ => None,
            }),
        )
    }
}

fn created(kind: &str, id: u64, name: String) -> AdminReply {
    AdminReply::Created {
        kind: kind.to_string(),
        id,
        name,
    }
}

fn claimed(
    peer: &Peer,
    msg: &SdsControl,
    answer: Result<SdsControlReply, LinkError>,
) -> Result<Vec<DeviceReport>, LinkError> {
    match answer? {
        SdsControlReply::Claimed { devices } => Ok(devices),
        other => Err(peer.unexpected(msg, &other)),
    }
}
