//! The MDM's object model: everything it knows, as one serde value that is written whole
//! to disk. Lookups turn an admin's `By` into an object or an error that says which
//! scli option was wrong and how to list the valid values.

use crate::cluster::api::{
    fmt_id, AccessMode, By, Chap, MediaType, Policy, Protection, CHUNK_SIZE, NO_COPY,
};
use crate::cluster::iscsi_name;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};

/// Bumped when the state file changes shape; an MDM refuses a file it does not know.
/// 2: SCSI initiators and their mappings (a format 1 file loads with none).
pub const FORMAT: u32 = 2;
/// The highest LUN of SAM flat space addressing.
pub use crate::cluster::initiator_rules::MAX_LUN;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// e.g. "protection domain pd9 (--protection_domain_name) does not exist; list them
    /// with --query_cluster".
    #[error("{noun} {what} ({option}) does not exist; list them with {list}")]
    NotFound {
        noun: &'static str,
        what: String,
        option: &'static str,
        list: &'static str,
    },
    #[error("{noun}s have no IP address; name it with {name_opt} or {id_opt}")]
    NoIp {
        noun: &'static str,
        name_opt: &'static str,
        id_opt: &'static str,
    },
    #[error("IP {ip} matches {count} {noun}s ({names}); name one with {name_opt}")]
    AmbiguousIp {
        noun: &'static str,
        ip: String,
        count: usize,
        names: String,
        name_opt: &'static str,
    },
    #[error("storage pool {pool} belongs to protection domain {pool_pd}, not {pd}; pick a pool of {pd} (--storage_pool_name) or another --protection_domain_name")]
    PoolInOtherPd {
        pool: String,
        pool_pd: String,
        pd: String,
    },
    #[error("the state is inconsistent: {0}")]
    Inconsistent(String),
}

/// How each kind of object is named on the scli command line, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub noun: &'static str,
    pub id_opt: &'static str,
    pub name_opt: &'static str,
    pub ip_opt: Option<&'static str>,
    /// The scli command that lists objects of this kind.
    pub list: &'static str,
}

pub const PD: Kind = Kind {
    noun: "protection domain",
    id_opt: "--protection_domain_id",
    name_opt: "--protection_domain_name",
    ip_opt: None,
    list: "--query_cluster",
};
pub const POOL: Kind = Kind {
    noun: "storage pool",
    id_opt: "--storage_pool_id",
    name_opt: "--storage_pool_name",
    ip_opt: None,
    list: "--query_protection_domain",
};
pub const SDS: Kind = Kind {
    noun: "SDS",
    id_opt: "--sds_id",
    name_opt: "--sds_name",
    ip_opt: Some("--sds_ip"),
    list: "--query_all_sds",
};
pub const VOLUME: Kind = Kind {
    noun: "volume",
    id_opt: "--volume_id",
    name_opt: "--volume_name",
    ip_opt: None,
    list: "--query_all_volumes",
};
pub const SDC: Kind = Kind {
    noun: "SDC",
    id_opt: "--sdc_id",
    name_opt: "--sdc_name",
    ip_opt: Some("--sdc_ip"),
    list: "--query_all_sdc",
};
pub const INITIATOR: Kind = Kind {
    noun: "SCSI initiator",
    id_opt: "--initiator_id",
    name_opt: "--initiator_name",
    ip_opt: None,
    list: "--query_all_scsi_initiators",
};

impl Kind {
    pub fn not_found(&self, by: &By) -> ModelError {
        let (what, option) = match by {
            By::Id(id) => (fmt_id(*id), self.id_opt),
            By::Name(n) => (n.clone(), self.name_opt),
            By::Ip(ip) => (ip.clone(), self.ip_opt.unwrap_or(self.name_opt)),
        };
        ModelError::NotFound {
            noun: self.noun,
            what,
            option,
            list: self.list,
        }
    }

    fn no_ip(&self) -> ModelError {
        ModelError::NoIp {
            noun: self.noun,
            name_opt: self.name_opt,
            id_opt: self.id_opt,
        }
    }

    /// Resolves `by` among `(id, name, ip)` candidates; an IP may match several.
    fn pick<'a, T>(
        &self,
        by: &By,
        items: impl Iterator<Item = &'a T>,
        key: impl Fn(&T) -> (u64, &str, Option<String>),
    ) -> Result<&'a T, ModelError> {
        let found: Vec<&T> = match by {
            By::Id(id) => items.filter(|t| key(t).0 == *id).collect(),
            By::Name(n) => items.filter(|t| key(t).1 == n).collect(),
            By::Ip(ip) => {
                if self.ip_opt.is_none() {
                    return Err(self.no_ip());
                }
                items.filter(|t| ip_matches(key(t).2, ip)).collect()
            }
        };
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(self.not_found(by)),
            many => Err(ModelError::AmbiguousIp {
                noun: self.noun,
                ip: match by {
                    By::Ip(ip) => ip.clone(),
                    _ => String::new(),
                },
                count: many.len(),
                names: many.iter().map(|t| key(t).1).collect::<Vec<_>>().join(", "),
                name_opt: self.name_opt,
            }),
        }
    }
}

/// `wanted` is an IP or an `IP:PORT`; `have` is `IP:PORT` for SDS and an IP for SDC.
fn ip_matches(have: Option<String>, wanted: &str) -> bool {
    let Some(have) = have else { return false };
    if have == wanted {
        return true;
    }
    let have_ip = have
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| have.parse::<IpAddr>());
    match (have_ip, wanted.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectionDomain {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub id: u64,
    pub name: String,
    pub pd: u64,
    pub media_type: MediaType,
    /// Copies kept of each chunk; fixed at creation. Absent from older state files,
    /// whose pools all kept two.
    #[serde(default)]
    pub protection: Protection,
    #[serde(default)]
    pub rebuild_policy: Policy,
    #[serde(default)]
    pub rebalance_policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sds {
    pub id: u64,
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    pub pd: u64,
    pub devices: Vec<Device>,
    /// Declared failed: its copies are out of every layout (except a chunk's last
    /// copy) until it heartbeats again. Durable, since layouts depend on it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub down: bool,
    /// `--remove_sds` is draining it; it receives no new copies and goes once empty.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Sds {
    /// Whether new copies may go to its devices.
    pub fn takes_copies(&self) -> bool {
        !self.down && !self.removing
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: u64,
    pub name: String,
    pub path: String,
    pub pool: u64,
    pub capacity_bytes: u64,
    /// Chunk copies it can hold, as its SDS reported when claiming it.
    pub slots: u64,
    /// `--remove_sds_device` is draining it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub removing: bool,
    /// Its SDS reported it failing I/O: its copies are out of the layouts (except a
    /// chunk's last one) and it takes no new ones until it is removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub id: u64,
    pub name: String,
    pub pool: u64,
    pub size_bytes: u64,
    pub thin: bool,
    /// Moves whenever the layout changes; SDS refuse I/O routed with an older one.
    pub epoch: u64,
    /// The devices `chunks` points into: indices keep the state file small (a 20 GiB
    /// volume is 20480 chunks).
    pub devices: Vec<u64>,
    /// Per chunk, indices into `devices` of the primary and the secondary copy. The
    /// secondary is `NO_COPY` while the chunk is degraded. The primary is always a
    /// device: a chunk's last copy stays in the layout even when its SDS is down.
    pub chunks: Vec<[u32; 2]>,
    /// Chunks whose secondary is being filled (rebuild, backward rebuild or a move):
    /// it takes every write but is not whole yet, so it must never become primary.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub syncing: BTreeSet<u64>,
    /// Per degraded chunk, the index into `devices` of the copy that left the layout
    /// when its SDS went down: whole up to then, so if that SDS returns before
    /// rebuild replaced it, it comes back, copying only if the chunk was written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub absent: BTreeMap<u64, u32>,
}

impl Volume {
    /// The device ids of chunk `i`'s copies, primary first; `None` for a missing one.
    pub fn copies(&self, i: usize) -> [Option<u64>; 2] {
        self.chunks[i].map(|x| self.device_at(x))
    }

    /// The device at index `x` of `devices`, or `None` for `NO_COPY`.
    pub fn device_at(&self, x: u32) -> Option<u64> {
        (x != NO_COPY).then(|| self.devices[x as usize])
    }

    /// Drops devices no chunk (or remembered copy) names any more, renumbering the
    /// rest: a removed SDS's devices must leave every layout.
    pub fn compact(&mut self) {
        let mut used = vec![false; self.devices.len()];
        for pair in &self.chunks {
            for &x in pair.iter().filter(|&&x| x != NO_COPY) {
                used[x as usize] = true;
            }
        }
        for &x in self.absent.values() {
            used[x as usize] = true;
        }
        let mut map = vec![NO_COPY; self.devices.len()];
        let mut kept = Vec::new();
        for (i, &d) in self.devices.iter().enumerate() {
            if used[i] {
                map[i] = kept.len() as u32;
                kept.push(d);
            }
        }
        if kept.len() == self.devices.len() {
            return;
        }
        let at = |x: u32| {
            if x == NO_COPY {
                NO_COPY
            } else {
                map[x as usize]
            }
        };
        for pair in &mut self.chunks {
            *pair = pair.map(at);
        }
        for x in self.absent.values_mut() {
            *x = at(*x);
        }
        self.devices = kept;
    }

    /// The index of device `id` in `devices`, adding it if the layout did not use it.
    pub fn index_of(&mut self, id: u64) -> u32 {
        match self.devices.iter().position(|&d| d == id) {
            Some(i) => i as u32,
            None => {
                self.devices.push(id);
                self.devices.len() as u32 - 1
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sdc {
    pub id: u64,
    pub name: String,
    pub ip: String,
    /// The gateway's small number (1, 2, ...), unique among SDC and never reused while
    /// this SDC exists: its iSCSI portal group tag, ALUA target port group and relative
    /// target port. 0 only in state files written before numbers existed (`upgrade`
    /// numbers those).
    #[serde(default)]
    pub number: u16,
    /// Moves (and is persisted) on every change a gateway must see: a volume mapped or
    /// unmapped, a mapped volume resized, renamed or re-laid out, or another gateway
    /// registered.
    pub generation: u64,
    pub mappings: Vec<Mapping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub volume: u64,
    pub lun: u64,
}

/// A host (hypervisor) allowed to log in to the gateways, and the volumes it sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScsiInitiator {
    pub id: u64,
    pub name: String,
    /// Normalized (`iscsi_name::normalize`): one host is one key however it is typed.
    pub iqn: String,
    /// With its secrets: the state file is the MDM's private store, and gateways need
    /// them to check logins. Never logged (Chap's Debug hides them) nor queried.
    pub chap: Option<Chap>,
    /// Sorted by LUN, so two registries that mean the same also compare equal.
    pub mappings: Vec<LunMapping>,
}

impl ScsiInitiator {
    pub fn mapping(&self, volume: u64) -> Option<&LunMapping> {
        self.mappings.iter().find(|m| m.volume == volume)
    }
}

/// A volume as one initiator sees it. Its LUN never moves while it stays mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunMapping {
    pub volume: u64,
    pub lun: u64,
    pub access: AccessMode,
}

/// The whole cluster as the MDM knows it. Maps are keyed by object id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub system_id: u64,
    pub protection_domains: BTreeMap<u64, ProtectionDomain>,
    pub pools: BTreeMap<u64, Pool>,
    pub sds: BTreeMap<u64, Sds>,
    pub volumes: BTreeMap<u64, Volume>,
    pub sdc: BTreeMap<u64, Sdc>,
    /// Absent from format 1 files.
    #[serde(default)]
    pub initiators: BTreeMap<u64, ScsiInitiator>,
    /// Per volume id: the reservations every gateway must agree on, as the gateways'
    /// SCSI engine encoded them (`scsi::shared`). Durable like the rest, so a
    /// reservation outlives an MDM restart (APTPL or not: the logical unit never lost
    /// power). Absent from older files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scsi: BTreeMap<u64, ScsiBlob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiBlob {
    pub version: u64,
    pub state: String,
}

impl State {
    pub fn new(system_id: u64) -> Self {
        Self {
            format: FORMAT,
            system_id,
            protection_domains: BTreeMap::new(),
            pools: BTreeMap::new(),
            sds: BTreeMap::new(),
            volumes: BTreeMap::new(),
            sdc: BTreeMap::new(),
            initiators: BTreeMap::new(),
            scsi: BTreeMap::new(),
        }
    }

    /// Brings a state file of an older format up to this one. Format 1 differs only
    /// by having no SCSI initiators, which serde already filled in as none.
    pub fn upgrade(&mut self) {
        if self.format == 1 {
            self.format = FORMAT;
        }
        // SDC registered before gateways had numbers get them in id order.
        let ids: Vec<u64> = self
            .sdc
            .values()
            .filter(|s| s.number == 0)
            .map(|s| s.id)
            .collect();
        for id in ids {
            let n = self.next_sdc_number();
            if let Some(s) = self.sdc.get_mut(&id) {
                s.number = n;
            }
        }
    }

    /// The number a new SDC gets: one past the highest in use, so no number is handed
    /// out twice while its SDC exists. 0 when all 65535 are taken.
    pub fn next_sdc_number(&self) -> u16 {
        let top = self.sdc.values().map(|s| s.number).max().unwrap_or(0);
        top.checked_add(1).unwrap_or(0)
    }

    pub fn pd(&self, by: &By) -> Result<&ProtectionDomain, ModelError> {
        PD.pick(by, self.protection_domains.values(), |p| {
            (p.id, p.name.as_str(), None)
        })
    }

    /// A pool named inside a protection domain; a pool id from another domain is refused.
    pub fn pool(&self, pd: &By, pool: &By) -> Result<&Pool, ModelError> {
        let pd = self.pd(pd)?;
        match POOL.pick(pool, self.pools.values().filter(|p| p.pd == pd.id), |p| {
            (p.id, p.name.as_str(), None)
        }) {
            Ok(p) => Ok(p),
            Err(e) => {
                let elsewhere = match pool {
                    By::Id(id) => self.pools.get(id),
                    By::Name(n) => self.pools.values().find(|p| &p.name == n),
                    By::Ip(_) => None,
                };
                match elsewhere {
                    Some(p) => Err(ModelError::PoolInOtherPd {
                        pool: p.name.clone(),
                        pool_pd: self.pd_name(p.pd),
                        pd: pd.name.clone(),
                    }),
                    None => Err(e),
                }
            }
        }
    }

    pub fn sds_by(&self, by: &By) -> Result<&Sds, ModelError> {
        SDS.pick(by, self.sds.values(), |s| {
            (s.id, s.name.as_str(), Some(s.addr().to_string()))
        })
    }

    pub fn volume(&self, by: &By) -> Result<&Volume, ModelError> {
        VOLUME.pick(by, self.volumes.values(), |v| (v.id, v.name.as_str(), None))
    }

    pub fn sdc_by(&self, by: &By) -> Result<&Sdc, ModelError> {
        SDC.pick(by, self.sdc.values(), |s| {
            (s.id, s.name.as_str(), Some(s.ip.clone()))
        })
    }

    pub fn initiator(&self, by: &By) -> Result<&ScsiInitiator, ModelError> {
        INITIATOR.pick(by, self.initiators.values(), |i| {
            (i.id, i.name.as_str(), None)
        })
    }

    /// The initiators a volume is mapped to, with that mapping.
    pub fn initiators_of(
        &self,
        volume: u64,
    ) -> impl Iterator<Item = (&ScsiInitiator, &LunMapping)> {
        self.initiators
            .values()
            .filter_map(move |i| i.mapping(volume).map(|m| (i, m)))
    }

    pub fn pd_name(&self, id: u64) -> String {
        self.protection_domains
            .get(&id)
            .map_or_else(|| fmt_id(id), |p| p.name.clone())
    }

    pub fn pool_name(&self, id: u64) -> String {
        self.pools
            .get(&id)
            .map_or_else(|| fmt_id(id), |p| p.name.clone())
    }

    /// The copies `pool` keeps of each chunk (two for a pool that is gone: the
    /// cautious answer).
    pub fn protection(&self, pool: u64) -> Protection {
        self.pools
            .get(&pool)
            .map_or(Protection::TwoCopies, |p| p.protection)
    }

    /// Every device of a pool with its SDS, in a stable order (SDS id, then device order).
    pub fn pool_devices(&self, pool: u64) -> impl Iterator<Item = (&Sds, &Device)> {
        self.sds
            .values()
            .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
            .filter(move |(_, d)| d.pool == pool)
    }

    /// The SDS holding device `id`.
    pub fn sds_of(&self, id: u64) -> Option<&Sds> {
        self.device(id).map(|(s, _)| s)
    }

    pub fn device(&self, id: u64) -> Option<(&Sds, &Device)> {
        self.sds
            .values()
            .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
            .find(|(_, d)| d.id == id)
    }

    /// The SDC a volume is mapped to, with the LUN it has on each.
    pub fn mappings_of(&self, volume: u64) -> impl Iterator<Item = (&Sdc, u64)> {
        self.sdc.values().filter_map(move |s| {
            s.mappings
                .iter()
                .find(|m| m.volume == volume)
                .map(|m| (s, m.lun))
        })
    }

    /// Thick copies on each device: the slots thick volumes have reserved.
    pub fn thick_copies(&self, pool: u64) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for v in self.volumes.values().filter(|v| v.pool == pool && !v.thin) {
            for i in 0..v.chunks.len() {
                for d in v.copies(i).into_iter().flatten() {
                    *out.entry(d).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Every object id in use, of any kind.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.protection_domains
            .keys()
            .chain(self.pools.keys())
            .chain(self.sds.keys())
            .chain(
                self.sds
                    .values()
                    .flat_map(|s| s.devices.iter().map(|d| &d.id)),
            )
            .chain(self.volumes.keys())
            .chain(self.sdc.keys())
            .chain(self.initiators.keys())
            .copied()
    }

    /// Checks what a hand-edited or damaged state file could break: keys match ids,
    /// every reference resolves, two copies never share an SDS, sizes match layouts.
    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |s: String| Err(ModelError::Inconsistent(s));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not the {FORMAT} this MDM understands",
                self.format
            ));
        }
        if self.system_id == 0 {
            return bad("system id is 0".into());
        }
        let mut seen = HashSet::new();
        for id in self.ids() {
            if id == 0 || !seen.insert(id) {
                return bad(format!("object id {} is 0 or used twice", fmt_id(id)));
            }
        }
        let keys_ok = self.protection_domains.iter().all(|(k, v)| *k == v.id)
            && self.pools.iter().all(|(k, v)| *k == v.id)
            && self.sds.iter().all(|(k, v)| *k == v.id)
            && self.volumes.iter().all(|(k, v)| *k == v.id)
            && self.sdc.iter().all(|(k, v)| *k == v.id)
            && self.initiators.iter().all(|(k, v)| *k == v.id);
        if !keys_ok {
            return bad("an object is filed under another object's id".into());
        }
        for p in self.pools.values() {
            if !self.protection_domains.contains_key(&p.pd) {
                return bad(format!("pool {} names a missing protection domain", p.name));
            }
        }
        for s in self.sds.values() {
            if !self.protection_domains.contains_key(&s.pd) {
                return bad(format!("SDS {} names a missing protection domain", s.name));
            }
            for d in &s.devices {
                if self.pools.get(&d.pool).map(|p| p.pd) != Some(s.pd) {
                    return bad(format!(
                        "device {} of SDS {} is in a pool outside its protection domain",
                        d.path, s.name
                    ));
                }
            }
        }
        for v in self.volumes.values() {
            self.check_volume(v)?;
        }
        let mut numbers = HashSet::new();
        for c in self.sdc.values() {
            if c.number == 0 || !numbers.insert(c.number) {
                return bad(format!("SDC {} has number 0 or another SDC's", c.name));
            }
            for m in &c.mappings {
                if !self.volumes.contains_key(&m.volume) {
                    return bad(format!("SDC {} maps a missing volume", c.name));
                }
            }
        }
        self.check_initiators()
    }

    /// Names and iSCSI names unique and normalized; each initiator maps existing
    /// volumes, each once, at distinct LUNs in range.
    fn check_initiators(&self) -> Result<(), ModelError> {
        let bad = |s: String| Err(ModelError::Inconsistent(s));
        let (mut names, mut iqns) = (HashSet::new(), HashSet::new());
        for i in self.initiators.values() {
            if !names.insert(&i.name) {
                return bad(format!("SCSI initiator name {} is used twice", i.name));
            }
            if iscsi_name::normalize(&i.iqn).as_ref() != Ok(&i.iqn) || !iqns.insert(&i.iqn) {
                return bad(format!(
                    "SCSI initiator {} has a malformed or shared iSCSI name",
                    i.name
                ));
            }
            let (mut volumes, mut luns) = (HashSet::new(), HashSet::new());
            for m in &i.mappings {
                if !self.volumes.contains_key(&m.volume)
                    || !volumes.insert(m.volume)
                    || m.lun > MAX_LUN
                    || !luns.insert(m.lun)
                {
                    return bad(format!(
                        "SCSI initiator {} maps a missing volume, a volume twice, or a LUN \
                         twice or out of range",
                        i.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_volume(&self, v: &Volume) -> Result<(), ModelError> {
        let bad = |s: String| Err(ModelError::Inconsistent(s));
        let Some(pool) = self.pools.get(&v.pool) else {
            return bad(format!("volume {} names a missing pool", v.name));
        };
        if !v.size_bytes.is_multiple_of(CHUNK_SIZE)
            || v.chunks.len() as u64 != v.size_bytes / CHUNK_SIZE
        {
            return bad(format!(
                "volume {} has a layout that does not match its size",
                v.name
            ));
        }
        let mut sds_of = Vec::with_capacity(v.devices.len());
        for &d in &v.devices {
            match self.device(d) {
                Some((s, dev)) if dev.pool == v.pool => sds_of.push(s.id),
                _ => return bad(format!("volume {} uses a device outside its pool", v.name)),
            }
        }
        for (c, &[p, s]) in v.chunks.iter().enumerate() {
            let a = sds_of.get(p as usize).copied();
            let b = (s != NO_COPY).then(|| sds_of.get(s as usize).copied());
            let absent = v
                .absent
                .get(&(c as u64))
                .map(|&x| sds_of.get(x as usize).copied());
            let broken = a.is_none()
                || b == Some(None)
                || b == Some(a)
                || absent == Some(None)
                || absent.is_some() && b.is_some()
                || absent == Some(a)
                || v.syncing.contains(&(c as u64)) && b.is_none();
            if broken {
                return bad(format!(
                    "volume {} has a chunk ({c}) whose copies share an SDS or name no device",
                    v.name
                ));
            }
            // A single-copy pool's chunk has a secondary only while a move fills it,
            // and never a remembered copy.
            let single = pool.protection == Protection::SingleCopy;
            if single && (b.is_some() && !v.syncing.contains(&(c as u64)) || absent.is_some()) {
                return bad(format!(
                    "volume {} of single-copy pool {} has a chunk ({c}) with a second copy",
                    v.name, pool.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two protection domains, a pool in each, two SDS in the first.
    pub(crate) fn sample() -> State {
        let mut st = State::new(7);
        for (id, name) in [(1, "pd1"), (2, "pd2")] {
            st.protection_domains.insert(
                id,
                ProtectionDomain {
                    id,
                    name: name.into(),
                },
            );
        }
        for (id, name, pd) in [(11, "pool1", 1), (12, "pool2", 2)] {
            st.pools.insert(
                id,
                Pool {
                    id,
                    name: name.into(),
                    pd,
                    media_type: MediaType::Hdd,
                    protection: Protection::TwoCopies,
                    rebuild_policy: Default::default(),
                    rebalance_policy: Default::default(),
                },
            );
        }
        for (id, name, ip) in [(21, "sds1", [10, 0, 0, 1]), (22, "sds2", [10, 0, 0, 2])] {
            st.sds.insert(
                id,
                Sds {
                    id,
                    name: name.into(),
                    ip: IpAddr::from(ip),
                    port: 7072,
                    pd: 1,
                    devices: vec![Device {
                        id: id + 100,
                        name: "/dev/sdb".into(),
                        path: "/dev/sdb".into(),
                        pool: 11,
                        capacity_bytes: 100 * CHUNK_SIZE,
                        slots: 100,
                        removing: false,
                        failed: false,
                    }],
                    down: false,
                    removing: false,
                },
            );
        }
        st
    }

    #[test]
    fn lookups_by_id_name_and_ip() {
        let st = sample();
        assert_eq!(st.pd(&By::Name("pd2".into())).unwrap().id, 2);
        assert_eq!(st.pd(&By::Id(1)).unwrap().name, "pd1");
        assert_eq!(st.sds_by(&By::Ip("10.0.0.2".into())).unwrap().id, 22);
        assert_eq!(st.sds_by(&By::Ip("10.0.0.1:7072".into())).unwrap().id, 21);
        let pool = st.pool(&By::Name("pd1".into()), &By::Name("pool1".into()));
        assert_eq!(pool.unwrap().id, 11);
    }

    #[test]
    fn unknown_objects_name_the_option_and_the_listing() {
        let st = sample();
        let e = st.pd(&By::Name("awspdomain02".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "protection domain awspdomain02 (--protection_domain_name) does not exist; \
             list them with --query_cluster"
        );
        let e = st.volume(&By::Id(0xab)).unwrap_err().to_string();
        assert!(e.contains("00000000000000ab (--volume_id)"), "{e}");
        let e = st
            .sdc_by(&By::Ip("1.2.3.4".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(--sdc_ip)"), "{e}");
        let e = st.pd(&By::Ip("1.2.3.4".into())).unwrap_err().to_string();
        assert!(e.contains("have no IP"), "{e}");
    }

    #[test]
    fn sdc_from_before_numbers_are_numbered_on_load_and_numbers_stay_unique() {
        let mut st = sample();
        for (id, name) in [(41, "gw-b"), (40, "gw-a")] {
            let json = format!(
                r#"{{"id":{id},"name":"{name}","ip":"10.0.0.{id}","generation":1,"mappings":[]}}"#
            );
            st.sdc.insert(id, serde_json::from_str(&json).unwrap());
        }
        assert!(st.check().is_err(), "number 0 is not a number");
        st.upgrade();
        st.check().unwrap();
        assert_eq!((st.sdc[&40].number, st.sdc[&41].number), (1, 2));
        assert_eq!(st.next_sdc_number(), 3);
        st.sdc.get_mut(&41).unwrap().number = 1;
        assert!(st.check().is_err(), "two SDC, one number");
    }

    /// `sample` plus a one-chunk volume (id 5) and an initiator (id 31) mapping it.
    pub(crate) fn sample_with_initiator() -> State {
        let mut st = sample();
        st.volumes.insert(
            5,
            Volume {
                id: 5,
                name: "v".into(),
                pool: 11,
                size_bytes: CHUNK_SIZE,
                thin: true,
                epoch: 1,
                devices: vec![121, 122],
                chunks: vec![[0, 1]],
                syncing: Default::default(),
                absent: Default::default(),
            },
        );
        st.initiators.insert(
            31,
            ScsiInitiator {
                id: 31,
                name: "esx1".into(),
                iqn: "iqn.1998-01.com.vmware:esx1".into(),
                chap: Some(Chap {
                    username: "esx1".into(),
                    secret: "initiator-secret".into(),
                    mutual: None,
                }),
                mappings: vec![LunMapping {
                    volume: 5,
                    lun: 0,
                    access: AccessMode::ReadWrite,
                }],
            },
        );
        st
    }

    #[test]
    fn initiators_are_named_by_their_own_options() {
        let st = sample_with_initiator();
        assert_eq!(st.initiator(&By::Name("esx1".into())).unwrap().id, 31);
        assert_eq!(st.initiator(&By::Id(31)).unwrap().name, "esx1");
        let e = st
            .initiator(&By::Name("svrsan2011".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "SCSI initiator svrsan2011 (--initiator_name) does not exist; list them with \
             --query_all_scsi_initiators"
        );
        let e = st.initiator(&By::Id(9)).unwrap_err().to_string();
        assert!(e.contains("(--initiator_id)"), "{e}");
        let mapped: Vec<(u64, u64)> = st.initiators_of(5).map(|(i, m)| (i.id, m.lun)).collect();
        assert_eq!(mapped, [(31, 0)]);
    }

    #[test]
    fn check_catches_damaged_initiators() {
        let st = sample_with_initiator();
        st.check().unwrap();
        let damage: [fn(&mut ScsiInitiator); 5] = [
            |i| i.iqn = "IQN.1998-01.com.vmware:esx1".into(),
            |i| i.mappings[0].volume = 99,
            |i| i.mappings[0].lun = MAX_LUN + 1,
            |i| i.mappings.push(i.mappings[0]),
            |i| i.id = 32,
        ];
        for (n, f) in damage.iter().enumerate() {
            let mut broken = st.clone();
            f(broken.initiators.get_mut(&31).unwrap());
            assert!(broken.check().is_err(), "damage {n} went unnoticed");
        }
        let mut twice = st.clone();
        let mut other = twice.initiators[&31].clone();
        other.id = 32;
        other.name = "esx2".into();
        twice.initiators.insert(32, other);
        assert!(twice.check().is_err(), "one iSCSI name, two initiators");
    }

    #[test]
    fn a_pool_of_another_domain_is_named_as_such() {
        let st = sample();
        let e = st
            .pool(&By::Name("pd1".into()), &By::Name("pool2".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pool2 belongs to protection domain pd2, not pd1"),
            "{e}"
        );
        let e = st
            .pool(&By::Name("pd1".into()), &By::Id(12))
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to protection domain pd2"), "{e}");
        let e = st
            .pool(&By::Name("pd1".into()), &By::Name("nope".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn an_ip_shared_by_two_sds_asks_for_a_name() {
        let mut st = sample();
        st.sds.get_mut(&22).unwrap().ip = IpAddr::from([10, 0, 0, 1]);
        st.sds.get_mut(&22).unwrap().port = 7073;
        let e = st
            .sds_by(&By::Ip("10.0.0.1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matches 2 SDSs (sds1, sds2); name one with --sds_name"),
            "{e}"
        );
        assert_eq!(st.sds_by(&By::Ip("10.0.0.1:7073".into())).unwrap().id, 22);
    }

    #[test]
    fn pools_from_before_protection_modes_keep_two_copies() {
        let st = sample();
        let mut json = serde_json::to_value(&st).unwrap();
        for p in json["pools"].as_object_mut().unwrap().values_mut() {
            p.as_object_mut().unwrap().remove("protection");
        }
        let old: State = serde_json::from_value(json).unwrap();
        assert!(old
            .pools
            .values()
            .all(|p| p.protection == Protection::TwoCopies));
        assert_eq!(old, st);
    }

    #[test]
    fn a_single_copy_chunk_has_a_secondary_only_while_it_moves() {
        let mut st = sample_with_initiator();
        st.pools.get_mut(&11).unwrap().protection = Protection::SingleCopy;
        assert!(
            st.check().is_err(),
            "two whole copies in a single-copy pool"
        );
        let v = st.volumes.get_mut(&5).unwrap();
        v.syncing.insert(0);
        st.check().unwrap();
        let v = st.volumes.get_mut(&5).unwrap();
        v.syncing.clear();
        v.chunks[0] = [0, NO_COPY];
        st.check().unwrap();
        st.volumes.get_mut(&5).unwrap().absent.insert(0, 1);
        assert!(
            st.check().is_err(),
            "nothing to remember in a single-copy pool"
        );
    }

    #[test]
    fn check_accepts_the_sample_and_catches_damage() {
        let st = sample();
        st.check().unwrap();
        let mut broken = st.clone();
        broken.pools.get_mut(&11).unwrap().pd = 99;
        assert!(broken.check().is_err());
        let mut broken = st.clone();
        broken.volumes.insert(
            5,
            Volume {
                id: 5,
                name: "v".into(),
                pool: 11,
                size_bytes: CHUNK_SIZE,
                thin: true,
                epoch: 1,
                devices: vec![121],
                chunks: vec![[0, 0]],
                syncing: Default::default(),
                absent: Default::default(),
            },
        );
        assert!(broken.check().is_err(), "two copies on one SDS");
        let mut broken = st.clone();
        broken.format = FORMAT + 1;
        assert!(broken.check().is_err());
        let mut broken = st;
        let d = broken.sds[&21].devices[0].clone();
        broken.sds.get_mut(&22).unwrap().devices.push(d);
        assert!(broken.check().is_err(), "duplicate device id");
    }
}
