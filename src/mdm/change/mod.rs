//! Every change to the cluster as a pure function on a [`State`]: validate, then apply.
//! Callers apply to a copy and keep it only if the change succeeded and was persisted,
//! so a refused request leaves nothing behind. Talking to SDS is the caller's job;
//! changes that need an SDS's answer come in two steps (plan, then record the answer).

mod health;
mod initiator;
mod initiator_map;
mod sdc;
mod sds;
mod volume;

pub use health::{
    confirm_whole, down_devices, fail_device, fail_sds, finish_copies, forget_absent_on,
    last_copies_on, referenced_devices, replaced_by_finish, replaced_by_start, return_sds,
    start_copies, ChunkId, Failed,
};
pub use initiator::{
    add_initiator, chap_words, map_to_initiator, remove_initiator, rename_initiator, set_chap,
    unmap_from_initiator,
};
pub use initiator_map::{apply_map, MapError};
pub use sdc::{map_volume, register_sdc, unmap_volume};
pub use sds::{add_sds, add_sds_device, heartbeat_sds, record_claim, sds_hello, Claim};
pub use volume::{add_volume, grow_volume, remove_volume, rename_volume, thick_allocations};

use super::ids::IdGen;
use super::link::Peer;
use super::model::{Kind, ModelError, Pool, ProtectionDomain, Sds, State, MAX_LUN, PD, POOL};
use crate::cluster::api::{fmt_id, By, MediaType, Protection, CHUNK_SIZE};
use crate::cluster::iscsi_name::NameError;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

const DEFAULT_SDS_PORT: u16 = 7072;
const MAX_NAME: usize = 64;
/// Layouts live in the state file (about 8 bytes per chunk); this keeps one volume's
/// layout near 130 MB.
const MAX_VOLUME_BYTES: u64 = 16 << 40;

/// Bytes shown in GB (2^30), as scli sizes are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gb(u64);

impl fmt::Display for Gb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const GB: u64 = 1 << 30;
        if self.0.is_multiple_of(GB) {
            write!(f, "{} GB", self.0 / GB)
        } else {
            write!(f, "{:.3} GB", self.0 as f64 / GB as f64)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "every SDC number (1 to 65535) is taken; register the gateway under an existing SDC name"
    )]
    TooManySdc,
    #[error("{noun} name {name:?} ({option}) is not usable: {reason}")]
    BadName {
        noun: &'static str,
        name: String,
        option: &'static str,
        reason: &'static str,
    },
    #[error("{noun} name {name} is taken; choose another {option}")]
    DuplicateName {
        noun: &'static str,
        name: String,
        option: &'static str,
    },
    #[error("protection domain {pd} already has a storage pool named {name}; choose another --storage_pool_name")]
    DuplicatePool { pd: String, name: String },
    #[error(
        "protection domain {pd} still has {pools} storage pool(s) and {sds} SDS; remove them first"
    )]
    PdInUse {
        pd: String,
        pools: usize,
        sds: usize,
    },
    #[error("storage pool {pool} still has {volumes} volume(s) and {devices} device(s); remove them first")]
    PoolInUse {
        pool: String,
        volumes: usize,
        devices: usize,
    },
    #[error("--sds_ip {ip} is not an IP address or IP:PORT")]
    BadIp { ip: String },
    #[error(
        "--sds_ip {ip} names port {in_ip} but the port is also given as {given}; give it once"
    )]
    PortConflict { ip: String, in_ip: u16, given: u16 },
    #[error("SDS {sds} already listens at {addr}; query it with --query_sds")]
    SdsAddrTaken { addr: SocketAddr, sds: String },
    #[error("SDS {sds} needs at least one device (--device_path)")]
    NoDevices { sds: String },
    #[error("device {path} is listed twice for SDS {sds}; list each device once")]
    DuplicatePath { path: String, sds: String },
    #[error("device name {name} is listed twice for SDS {sds}; choose another --device_name")]
    DuplicateDeviceName { name: String, sds: String },
    #[error("device {path} is already claimed by SDS {sds}; see its devices with --query_sds")]
    AlreadyClaimed { path: String, sds: String },
    #[error("a device path (--device_path) cannot be empty")]
    EmptyPath,
    #[error("SDS {sds} did not report device {path} as claimed; check the SDS log and retry")]
    Unclaimed { path: String, sds: String },
    #[error("device {path} on SDS {sds} holds {bytes} bytes, too small for one {CHUNK_SIZE}-byte chunk; use a larger device")]
    DeviceTooSmall {
        path: String,
        sds: String,
        bytes: u64,
    },
    #[error("a volume needs a size above 0 (--size_gb)")]
    ZeroSize,
    #[error("volume size {} is over the {} limit; use several volumes", Gb(*.bytes), Gb(MAX_VOLUME_BYTES))]
    TooBig { bytes: u64 },
    #[error("storage pool {pool} has devices on {sds} SDS; {}; add SDS with --add_sds", sds_needed(*.protection))]
    TooFewSds {
        pool: String,
        sds: usize,
        protection: Protection,
    },
    #[error("thick volume {volume} needs {} but storage pool {pool} has {} free for thick volumes; make it thin (--thin_provisioned) or add devices to the pool", Gb(*.requested), Gb(*.free))]
    ThickTooLarge {
        volume: String,
        pool: String,
        requested: u64,
        free: u64,
    },
    #[error("volume {volume} is {} and can only grow; {} would shrink it", Gb(*.current), Gb(*.requested))]
    Shrink {
        volume: String,
        current: u64,
        requested: u64,
    },
    #[error("volume {volume} is mapped to {noun} {to}; unmap it first with {unmap}")]
    Mapped {
        volume: String,
        noun: &'static str,
        to: String,
        unmap: &'static str,
    },
    #[error("volume {volume} is already mapped to {noun} {to} as LUN {lun}")]
    AlreadyMapped {
        volume: String,
        noun: &'static str,
        to: String,
        lun: u64,
    },
    #[error("volume {volume} is not mapped to {noun} {to}; see its mappings with {list}")]
    NotMapped {
        volume: String,
        noun: &'static str,
        to: String,
        list: &'static str,
    },
    #[error(
        "{noun} {name} has no free LUN (the highest is {MAX_LUN}); unmap a volume from it first"
    )]
    NoFreeLun { noun: &'static str, name: String },
    #[error("LUN {lun} (--lun) is over the highest LUN {MAX_LUN}; pick a lower --lun or leave it out for the lowest free")]
    LunRange { lun: u64 },
    #[error("LUN {lun} (--lun) of SCSI initiator {initiator} is taken by volume {volume}; pick another --lun or leave it out for the lowest free")]
    LunTaken {
        lun: u64,
        initiator: String,
        volume: String,
    },
    #[error("{error} (--iqn)")]
    BadIqn { error: NameError },
    #[error("iSCSI name {iqn} (--iqn) is already registered as SCSI initiator {initiator}; see it with --query_scsi_initiator")]
    IqnTaken { iqn: String, initiator: String },
    /// Never shows a secret: errors are logged.
    #[error("CHAP for SCSI initiator {initiator} is not usable: {reason}")]
    BadChap {
        initiator: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("SDS {sds} belongs to system {}, not to this MDM's system {}", fmt_id(*.theirs), fmt_id(*.ours))]
    OtherSystem { sds: String, theirs: u64, ours: u64 },
    /// A refusal whose message is built where the reason is known.
    #[error("{0}")]
    Refused(String),
    #[error("SDS {sds} reports address {addr}, where SDS {other} already listens")]
    AddrInUse {
        sds: String,
        addr: SocketAddr,
        other: String,
    },
}

/// How many SDS a pool's volumes need, and why.
fn sds_needed(p: Protection) -> &'static str {
    match p {
        Protection::TwoCopies => {
            "a volume needs devices on at least two SDS because its two copies never share one"
        }
        Protection::SingleCopy => "a volume needs devices on at least one SDS",
    }
}

/// Why `name` cannot name an object, if it cannot.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.chars().count() > MAX_NAME {
        Some("it is longer than 64 characters")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains a space or a control character")
    } else {
        None
    }
}

fn check_name(kind: &Kind, name: &str) -> Result<(), ChangeError> {
    let Some(reason) = name_problem(name) else {
        return Ok(());
    };
    Err(ChangeError::BadName {
        noun: kind.noun,
        name: name.to_string(),
        option: kind.name_opt,
        reason,
    })
}

fn duplicate(kind: &Kind, name: &str) -> ChangeError {
    ChangeError::DuplicateName {
        noun: kind.noun,
        name: name.to_string(),
        option: kind.name_opt,
    }
}

/// `base`, or `base_2`, `base_3`... whichever is free first.
fn unique_default(base: String, taken: impl Fn(&str) -> bool) -> String {
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

pub fn add_pd(st: &mut State, ids: &mut IdGen, name: &str) -> Result<u64, ChangeError> {
    check_name(&PD, name)?;
    if st.protection_domains.values().any(|p| p.name == name) {
        return Err(duplicate(&PD, name));
    }
    let id = ids.fresh();
    let name = name.to_string();
    st.protection_domains
        .insert(id, ProtectionDomain { id, name });
    Ok(id)
}

pub fn remove_pd(st: &mut State, pd: &By) -> Result<ProtectionDomain, ChangeError> {
    let pd = st.pd(pd)?.clone();
    let pools = st.pools.values().filter(|p| p.pd == pd.id).count();
    let sds = st.sds.values().filter(|s| s.pd == pd.id).count();
    if pools + sds > 0 {
        return Err(ChangeError::PdInUse {
            pd: pd.name,
            pools,
            sds,
        });
    }
    st.protection_domains.remove(&pd.id);
    Ok(pd)
}

pub fn add_pool(
    st: &mut State,
    ids: &mut IdGen,
    pd: &By,
    name: &str,
    media_type: MediaType,
    protection: Protection,
) -> Result<u64, ChangeError> {
    check_name(&POOL, name)?;
    let pd = st.pd(pd)?;
    if st.pools.values().any(|p| p.pd == pd.id && p.name == name) {
        return Err(ChangeError::DuplicatePool {
            pd: pd.name.clone(),
            name: name.to_string(),
        });
    }
    let (id, pd) = (ids.fresh(), pd.id);
    let name = name.to_string();
    st.pools.insert(
        id,
        Pool {
            id,
            name,
            pd,
            media_type,
            protection,
            rebuild_policy: Default::default(),
            rebalance_policy: Default::default(),
        },
    );
    Ok(id)
}

pub fn remove_pool(st: &mut State, pd: &By, pool: &By) -> Result<Pool, ChangeError> {
    let pool = st.pool(pd, pool)?.clone();
    let volumes = st.volumes.values().filter(|v| v.pool == pool.id).count();
    let devices = st.pool_devices(pool.id).count();
    if volumes + devices > 0 {
        return Err(ChangeError::PoolInUse {
            pool: pool.name,
            volumes,
            devices,
        });
    }
    st.pools.remove(&pool.id);
    Ok(pool)
}

/// A volume changed in a way its gateways must see: those of the SDC it is mapped
/// to, or every gateway when an initiator is mapped to it (all of them serve it).
fn touch(st: &mut State, volume: u64) {
    let everywhere = st.initiators_of(volume).next().is_some();
    for sdc in st.sdc.values_mut() {
        if everywhere || sdc.mappings.iter().any(|m| m.volume == volume) {
            sdc.generation += 1;
        }
    }
}

/// The initiator map changed: every gateway enforces it, so every one must look again.
fn touch_all(st: &mut State) {
    for sdc in st.sdc.values_mut() {
        sdc.generation += 1;
    }
}

/// The lowest LUN not in `used`.
fn lowest_free_lun(used: &HashSet<u64>) -> Option<u64> {
    (0..=MAX_LUN).find(|l| !used.contains(l))
}

pub fn peer(sds: &Sds) -> Peer {
    Peer {
        id: sds.id,
        name: sds.name.clone(),
        addr: sds.addr(),
    }
}

/// The SDS holding devices of a pool: where a removed volume's copies may be.
pub fn pool_peers(st: &State, pool: u64) -> Vec<Peer> {
    let ids: HashSet<u64> = st.pool_devices(pool).map(|(s, _)| s.id).collect();
    st.sds
        .values()
        .filter(|s| ids.contains(&s.id))
        .map(peer)
        .collect()
}

pub fn all_peers(st: &State) -> Vec<Peer> {
    st.sds.values().map(peer).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::api::{AddSds, DeviceReport, DeviceSpec};

    pub(crate) struct World {
        pub st: State,
        pub ids: IdGen,
    }

    impl World {
        /// pd1 with pool1 (hdd) and pool1b, pd2 with pool2; no SDS.
        pub(crate) fn new() -> Self {
            let st = State::new(0x5eed);
            let ids = IdGen::new(&st);
            let mut w = Self { st, ids };
            w.pd("pd1");
            w.pd("pd2");
            w.pool("pd1", "pool1");
            w.pool("pd1", "pool1b");
            w.pool("pd2", "pool2");
            w
        }

        pub(crate) fn pd(&mut self, name: &str) -> u64 {
            add_pd(&mut self.st, &mut self.ids, name).unwrap()
        }

        pub(crate) fn pool(&mut self, pd: &str, name: &str) -> u64 {
            let two = Protection::TwoCopies;
            add_pool(
                &mut self.st,
                &mut self.ids,
                &by(pd),
                name,
                MediaType::Hdd,
                two,
            )
            .unwrap()
        }

        /// Makes pool1 (still empty) a single-copy pool.
        pub(crate) fn single_copy(&mut self) {
            let pool = self.st.pools.values_mut().find(|p| p.name == "pool1");
            pool.expect("pool1").protection = Protection::SingleCopy;
        }

        /// An SDS in pd1 whose devices (in pool1) hold `slots` chunks each.
        pub(crate) fn sds(&mut self, ip: &str, slots: &[u64]) -> u64 {
            let req = sds_req(ip, "pd1", "pool1", slots.len());
            let claim = add_sds(&mut self.st, &mut self.ids, &req).unwrap();
            let reports: Vec<DeviceReport> = claim
                .devices
                .iter()
                .zip(slots)
                .map(|(d, &slots)| DeviceReport {
                    device_id: d.device_id,
                    path: d.path.clone(),
                    capacity_bytes: slots * CHUNK_SIZE,
                    slots,
                })
                .collect();
            record_claim(&mut self.st, &claim, &reports).unwrap();
            claim.sds.id
        }

        /// A volume of `chunks` chunks in pool1.
        pub(crate) fn volume(&mut self, name: &str, chunks: u64, thin: bool) -> u64 {
            let (id, _) = add_volume(
                &mut self.st,
                &mut self.ids,
                &by("pd1"),
                &by("pool1"),
                Some(name),
                chunks * CHUNK_SIZE,
                thin,
            )
            .unwrap();
            id
        }

        pub(crate) fn sdc(&mut self, name: &str, ip: &str) -> u64 {
            register_sdc(&mut self.st, &mut self.ids, name, ip)
                .unwrap()
                .0
        }

        /// Applies a change to a copy and checks that a refusal leaves the state as it was.
        pub(crate) fn refuse<T: fmt::Debug>(
            &mut self,
            f: impl FnOnce(&mut State, &mut IdGen) -> Result<T, ChangeError>,
        ) -> String {
            let before = self.st.clone();
            let mut copy = self.st.clone();
            let e = f(&mut copy, &mut self.ids).unwrap_err();
            assert_eq!(self.st, before);
            e.to_string()
        }
    }

    pub(crate) fn by(name: &str) -> By {
        By::Name(name.to_string())
    }

    pub(crate) fn sds_req(ip: &str, pd: &str, pool: &str, devices: usize) -> AddSds {
        AddSds {
            ip: ip.to_string(),
            port: None,
            protection_domain: pd.to_string(),
            name: None,
            devices: (0..devices)
                .map(|i| DeviceSpec {
                    path: format!("/dev/sd{}", (b'b' + i as u8) as char),
                    pool: pool.to_string(),
                    name: None,
                })
                .collect(),
        }
    }

    #[test]
    fn names_are_unique_per_kind_and_pools_per_domain() {
        let mut w = World::new();
        let e = w.refuse(|st, ids| add_pd(st, ids, "pd1"));
        assert_eq!(
            e,
            "protection domain name pd1 is taken; choose another --protection_domain_name"
        );
        let e = w.refuse(|st, ids| {
            add_pool(
                st,
                ids,
                &by("pd1"),
                "pool1",
                MediaType::Ssd,
                Protection::TwoCopies,
            )
        });
        assert!(
            e.contains("pd1 already has a storage pool named pool1"),
            "{e}"
        );
        // The same pool name in another domain is fine.
        w.pool("pd2", "pool1");
        let e = w.refuse(|st, ids| add_pd(st, ids, "has space"));
        assert!(e.contains("contains a space"), "{e}");
        let e = w.refuse(|st, ids| add_pd(st, ids, ""));
        assert!(
            e.contains("(--protection_domain_name) is not usable: it is empty"),
            "{e}"
        );
        let e = w.refuse(|st, ids| {
            add_pool(
                st,
                ids,
                &by("nope"),
                "p",
                MediaType::Ssd,
                Protection::TwoCopies,
            )
        });
        assert!(e.contains("protection domain nope"), "{e}");
    }

    #[test]
    fn domains_and_pools_in_use_are_not_removed() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        let e = w.refuse(|st, _| remove_pd(st, &by("pd1")));
        assert!(
            e.contains("pd1 still has 2 storage pool(s) and 1 SDS"),
            "{e}"
        );
        let e = w.refuse(|st, _| remove_pool(st, &by("pd1"), &by("pool1")));
        assert!(
            e.contains("pool1 still has 0 volume(s) and 1 device(s)"),
            "{e}"
        );
        remove_pool(&mut w.st, &by("pd2"), &by("pool2")).unwrap();
        remove_pd(&mut w.st, &by("pd2")).unwrap();
        assert_eq!(w.st.protection_domains.len(), 1);
        w.st.check().unwrap();
    }

    #[test]
    fn a_pool_with_volumes_is_not_removed() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        w.volume("v", 1, true);
        let e = w.refuse(|st, _| remove_pool(st, &by("pd1"), &by("pool1")));
        assert!(e.contains("1 volume(s)"), "{e}");
    }
}
