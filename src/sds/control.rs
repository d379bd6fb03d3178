//! The MDM's control messages (`Control` frames). Applied one at a time under the
//! state lock, on a blocking thread: they do file I/O and are rare.

use super::claim::{self, Claim};
use super::{state, Sds, SdsError};
use crate::cluster::api::{fmt_id, SdsControl, SdsControlReply, SdsInventory};
use std::net::SocketAddr;
use tracing::info;

impl Sds {
    /// Applies one control message from the connection with `peer`.
    pub(super) fn control(
        &self,
        msg: SdsControl,
        peer: SocketAddr,
    ) -> Result<SdsControlReply, SdsError> {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match msg {
            SdsControl::Claim {
                system_id,
                sds_id,
                sds_name,
                mdm_port,
                devices,
            } => claim::claim(
                self,
                &mut current,
                Claim {
                    system_id,
                    sds_id,
                    sds_name,
                    mdm_addr: SocketAddr::new(peer.ip(), mdm_port),
                    devices,
                },
            ),
            SdsControl::Peers { peers } => {
                let s = current.as_mut().ok_or(SdsError::NotClaimed)?;
                if s.peers == peers {
                    // The MDM repeats the table often (on every heartbeat today): an
                    // unchanged table costs no state write.
                    return Ok(SdsControlReply::Ok);
                }
                let mut next = s.clone();
                next.peers.clone_from(&peers);
                state::save(&self.data_dir, &next)?;
                *s = next;
                self.peers.set(&peers);
                info!(peers = peers.len(), "peer table updated");
                Ok(SdsControlReply::Ok)
            }
            SdsControl::AllocateThick { volume, chunks } => {
                self.store.allocate_thick(volume, &chunks)?;
                info!(volume = %fmt_id(volume), chunks = chunks.len(), "reserved thick chunks");
                Ok(SdsControlReply::Ok)
            }
            SdsControl::FreeVolume { volume } => {
                let freed = self.store.free_volume(volume)?;
                self.epochs.forget(volume);
                info!(volume = %fmt_id(volume), freed, "freed volume");
                Ok(SdsControlReply::Ok)
            }
            SdsControl::Inventory => {
                let (system_id, sds_id) = ids(&current);
                Ok(SdsControlReply::Inventory(SdsInventory {
                    system_id,
                    sds_id,
                    devices: self.store.inventory(),
                }))
            }
            SdsControl::FreeChunks { chunks } => {
                let freed = self.store.free_chunks(&chunks)?;
                info!(asked = chunks.len(), freed, "freed chunk copies");
                Ok(SdsControlReply::Ok)
            }
            SdsControl::Dirty { volume, .. } => {
                Ok(SdsControlReply::Dirty(self.store.dirty(volume)))
            }
            SdsControl::Release => self.release(&mut current),
            SdsControl::ReleaseDevice { device } => self.release_device(&mut current, device),
            SdsControl::Ping => {
                let (system_id, sds_id) = ids(&current);
                Ok(SdsControlReply::Pong { system_id, sds_id })
            }
        }
    }
}

impl Sds {
    /// `Release`: stop heartbeating and serving, make every device blank again (its
    /// header zeroed, so it can be added to a system anew; the chunk data stays but
    /// belongs to no one), forget the claim and the devices. The SDS runs on bare and
    /// can be claimed again. Repeating it is harmless.
    fn release(&self, current: &mut Option<state::SdsState>) -> Result<SdsControlReply, SdsError> {
        self.heartbeat.stop();
        self.lease.revoke();
        for dev in self.store.all() {
            dev.wipe_header()?;
        }
        state::remove(&self.data_dir)?;
        let devices = self.store.clear();
        self.peers.set(&[]);
        self.epochs.clear();
        if let Some(s) = current.take() {
            info!(system = %fmt_id(s.system_id), sds = %fmt_id(s.sds_id), devices = devices.len(), "released by the MDM; running bare");
        }
        Ok(SdsControlReply::Ok)
    }
}

impl Sds {
    /// `ReleaseDevice`: stop using one device, make it blank again (header zeroed) and
    /// forget it here and in the state file. Unknown devices are already released.
    fn release_device(
        &self,
        current: &mut Option<state::SdsState>,
        device: u64,
    ) -> Result<SdsControlReply, SdsError> {
        let s = current.as_mut().ok_or(SdsError::NotClaimed)?;
        let mut next = s.clone();
        next.devices.retain(|d| d.id != device);
        if next != *s {
            state::save(&self.data_dir, &next)?;
            *s = next;
        }
        if let Some(dev) = self.store.remove(device) {
            // A failed device may not take the wipe; it is forgotten either way.
            if let Err(e) = dev.wipe_header() {
                tracing::warn!(path = %dev.path, error = %e, "could not blank a released device");
            }
            info!(path = %dev.path, device = %fmt_id(device), "device released by the MDM");
        }
        Ok(SdsControlReply::Ok)
    }
}

/// (system id, SDS id), both 0 while the SDS is unclaimed.
fn ids(s: &Option<state::SdsState>) -> (u64, u64) {
    s.as_ref().map_or((0, 0), |s| (s.system_id, s.sds_id))
}
