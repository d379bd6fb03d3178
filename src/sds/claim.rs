//! Taking ownership of devices for an MDM (`SdsControl::Claim`).
//!
//! Every device of one claim is checked before any is written, so a refused device
//! leaves the others untouched. A device already carrying this SDS's header for the
//! same device id is accepted as is (the MDM may repeat a claim it did not see
//! answered). If formatting fails half way, the devices already formatted carry our
//! header but are not recorded; repeating the claim accepts them.
//!
//! A successful claim starts the heartbeats (the claim names the MDM's port; its IP
//! is the claiming connection's peer).

use super::device::{Device, Probe};
use super::format::{Header, Owner};
use super::state::{self, DeviceRecord, SdsState};
use super::{Sds, SdsError};
use crate::cluster::api::{fmt_id, ClaimDevice, DeviceReport, SdsControlReply};
use std::collections::HashSet;
use std::net::SocketAddr;
use tracing::info;

/// What the claim asks of the SDS.
pub struct Claim {
    pub system_id: u64,
    pub sds_id: u64,
    pub sds_name: String,
    /// The MDM, as reached from here: the claiming connection's peer IP and the MDM
    /// port the claim names.
    pub mdm_addr: SocketAddr,
    pub devices: Vec<ClaimDevice>,
}

enum Plan {
    /// Already one of our devices.
    Have(DeviceReport),
    Format(Probe, Header),
    Load(Probe, Header),
}

pub fn claim(
    sds: &Sds,
    current: &mut Option<SdsState>,
    c: Claim,
) -> Result<SdsControlReply, SdsError> {
    if let Some(s) = current.as_ref() {
        if (s.system_id, s.sds_id) != (c.system_id, c.sds_id) {
            return Err(SdsError::AlreadyClaimed {
                system: fmt_id(s.system_id),
                sds: fmt_id(s.sds_id),
            });
        }
    }
    check_unique(&c.devices)?;
    let plans = c
        .devices
        .iter()
        .map(|d| plan(sds, &c, d))
        .collect::<Result<Vec<_>, _>>()?;

    let mut reports = Vec::new();
    let mut opened = Vec::new();
    for (plan, d) in plans.into_iter().zip(&c.devices) {
        let dev = match plan {
            Plan::Have(report) => {
                reports.push(report);
                continue;
            }
            Plan::Format(probe, header) => Device::format(probe, header)?,
            Plan::Load(probe, header) => Device::load(probe, header)?,
        };
        reports.push(dev.report());
        opened.push((dev, d.pool_id));
    }

    let mut next = current.clone().unwrap_or_else(|| SdsState {
        system_id: c.system_id,
        sds_id: c.sds_id,
        name: String::new(),
        mdm_addr: String::new(),
        devices: Vec::new(),
        peers: Vec::new(),
    });
    next.name = c.sds_name.clone();
    next.mdm_addr = c.mdm_addr.to_string();
    next.devices
        .extend(opened.iter().map(|(dev, pool)| DeviceRecord {
            id: dev.id,
            path: dev.path.clone(),
            pool: *pool,
        }));
    state::save(&sds.data_dir, &next)?;
    // Serving needs a lease: heartbeat to the claiming MDM at once.
    sds.start_heartbeat(&next);
    *current = Some(next);
    info!(
        system = %fmt_id(c.system_id), sds = %fmt_id(c.sds_id), name = %c.sds_name,
        mdm = %c.mdm_addr, new_devices = opened.len(), "claimed"
    );
    for (dev, _) in opened {
        sds.store.add(dev);
    }
    Ok(SdsControlReply::Claimed { devices: reports })
}

fn plan(sds: &Sds, c: &Claim, d: &ClaimDevice) -> Result<Plan, SdsError> {
    if let Some(dev) = sds.store.get(d.device_id) {
        if dev.path == d.path {
            return Ok(Plan::Have(dev.report()));
        }
        return Err(SdsError::DeviceIdInUse {
            device: fmt_id(d.device_id),
            path: dev.path.clone(),
        });
    }
    if let Some(dev) = sds.store.all().into_iter().find(|x| x.path == d.path) {
        return Err(SdsError::PathInUse {
            path: d.path.clone(),
            device: fmt_id(dev.id),
        });
    }
    let probe = Probe::open(&d.path)?;
    match probe.header {
        None => {
            let owner = Owner {
                system_id: c.system_id,
                sds_id: c.sds_id,
                device_id: d.device_id,
                pool_id: d.pool_id,
            };
            let header = Header::for_capacity(owner, probe.capacity).map_err(|source| {
                SdsError::TooSmall {
                    path: d.path.clone(),
                    source,
                }
            })?;
            Ok(Plan::Format(probe, header))
        }
        Some(h) if h.system_id != c.system_id => Err(SdsError::ForeignSystem {
            path: d.path.clone(),
            system: fmt_id(h.system_id),
        }),
        Some(h) if (h.sds_id, h.device_id) != (c.sds_id, d.device_id) => {
            Err(SdsError::OtherOwner {
                path: d.path.clone(),
                sds: fmt_id(h.sds_id),
                device: fmt_id(h.device_id),
            })
        }
        Some(h) => Ok(Plan::Load(probe, h)),
    }
}

fn check_unique(devices: &[ClaimDevice]) -> Result<(), SdsError> {
    let mut ids = HashSet::new();
    let mut paths = HashSet::new();
    for d in devices {
        if !ids.insert(d.device_id) {
            return Err(SdsError::Duplicate(fmt_id(d.device_id)));
        }
        if !paths.insert(&d.path) {
            return Err(SdsError::Duplicate(d.path.clone()));
        }
    }
    Ok(())
}
