//! What the MDM reports: admin query answers and the views gateways fetch, built from
//! the state and, for live figures, from what the SDS reported just now.

use super::model::{Pool, ProtectionDomain, ScsiInitiator, Sdc, Sds, State, Volume};
use crate::cluster::api::{
    Chap, ChapMode, ClusterInfo, DeviceInfo, DeviceLoc, GatewayPort, InitiatorAccess,
    InitiatorInfo, InitiatorLun, InitiatorMap, Layout, MapChap, MapEntry, MapInitiator, MappedView,
    MappedVolume, PdInfo, PoolInfo, SdcInfo, SdsInfo, SdsInventory, SdsState, VolumeInfo,
    VolumeScsi, CHUNK_SIZE,
};
use std::collections::{HashMap, HashSet};

/// The inventories of the SDS that answered, keyed by SDS id.
#[derive(Debug, Default)]
pub struct Observed(HashMap<u64, SdsInventory>);

impl Observed {
    /// Keeps an inventory only if it comes from the SDS it was asked of, in this system:
    /// anything else at that address is not our SDS.
    pub fn new(st: &State, answers: impl IntoIterator<Item = (u64, SdsInventory)>) -> Self {
        Self(
            answers
                .into_iter()
                .filter(|(id, inv)| inv.sds_id == *id && inv.system_id == st.system_id)
                .collect(),
        )
    }

    fn state(&self, sds: u64) -> SdsState {
        if self.0.contains_key(&sds) {
            SdsState::Connected
        } else {
            SdsState::Disconnected
        }
    }

    /// Chunk copies a device holds, if its SDS answered and listed it.
    fn used(&self, sds: u64, device: u64) -> Option<u64> {
        let inv = self.0.get(&sds)?;
        let dev = inv.devices.iter().find(|d| d.device_id == device)?;
        Some(dev.chunks.len() as u64)
    }
}

pub fn cluster(st: &State, mdm_addr: String, obs: &Observed) -> ClusterInfo {
    let devices = st
        .sds
        .values()
        .flat_map(|s| s.devices.iter().map(move |d| (s.id, d)));
    let (mut raw, mut used) = (0, 0);
    for (sds, d) in devices {
        raw += d.slots * CHUNK_SIZE;
        used += obs.used(sds, d.id).unwrap_or(0) * CHUNK_SIZE;
    }
    ClusterInfo {
        system_id: st.system_id,
        mdm_addr,
        protection_domains: st.protection_domains.len(),
        storage_pools: st.pools.len(),
        sds: st.sds.len(),
        sds_connected: st
            .sds
            .values()
            .filter(|s| !s.down && obs.state(s.id) == SdsState::Connected)
            .count(),
        volumes: st.volumes.len(),
        sdc: st.sdc.len(),
        raw_capacity_bytes: raw,
        used_bytes: used,
        events: Vec::new(),
    }
}

pub fn sds(st: &State, sds: &Sds, obs: &Observed) -> SdsInfo {
    SdsInfo {
        id: sds.id,
        name: sds.name.clone(),
        ip: sds.ip.to_string(),
        port: sds.port,
        protection_domain_id: sds.pd,
        protection_domain_name: st.pd_name(sds.pd),
        state: if sds.down {
            SdsState::Down
        } else if sds.removing {
            SdsState::Removing
        } else {
            obs.state(sds.id)
        },
        devices: sds
            .devices
            .iter()
            .map(|d| DeviceInfo {
                id: d.id,
                name: d.name.clone(),
                path: d.path.clone(),
                pool_id: d.pool,
                pool_name: st.pool_name(d.pool),
                capacity_bytes: d.capacity_bytes,
                used_chunks: obs.used(sds.id, d.id),
                failed: d.failed,
                removing: d.removing,
            })
            .collect(),
    }
}

pub fn pool(st: &State, pool: &Pool, obs: &Observed) -> PoolInfo {
    let (mut devices, mut slots, mut used) = (0, 0, 0);
    let mut sds = HashSet::new();
    for (s, d) in st.pool_devices(pool.id) {
        devices += 1;
        slots += d.slots;
        used += obs.used(s.id, d.id).unwrap_or(0);
        sds.insert(s.id);
    }
    let reserved_copies: u64 = st.thick_copies(pool.id).values().sum();
    let volumes: Vec<&Volume> = st.volumes.values().filter(|v| v.pool == pool.id).collect();
    // Every chunk of a volume takes this many slots.
    let copies = pool.protection.copies();
    PoolInfo {
        id: pool.id,
        name: pool.name.clone(),
        protection_domain_id: pool.pd,
        protection_domain_name: st.pd_name(pool.pd),
        media_type: pool.media_type,
        protection: pool.protection,
        devices,
        sds: sds.len(),
        raw_capacity_bytes: slots * CHUNK_SIZE,
        usable_capacity_bytes: slots / copies * CHUNK_SIZE,
        thick_reserved_bytes: volumes
            .iter()
            .filter(|v| !v.thin)
            .map(|v| v.size_bytes)
            .sum(),
        used_bytes: used * CHUNK_SIZE,
        free_for_thick_bytes: slots.saturating_sub(reserved_copies) / copies * CHUNK_SIZE,
        volumes: volumes.iter().map(|v| (v.id, v.name.clone())).collect(),
        health: super::recovery::plan::health(st, pool.id),
        // In-memory figures the caller fills in (`Recovery::progress`).
        rebuild: Default::default(),
        rebalance: Default::default(),
        rebuild_policy: pool.rebuild_policy,
        rebalance_policy: pool.rebalance_policy,
    }
}

pub fn pd(st: &State, pd: &ProtectionDomain, obs: &Observed) -> PdInfo {
    PdInfo {
        id: pd.id,
        name: pd.name.clone(),
        pools: st
            .pools
            .values()
            .filter(|p| p.pd == pd.id)
            .map(|p| pool(st, p, obs))
            .collect(),
        sds: st
            .sds
            .values()
            .filter(|s| s.pd == pd.id)
            .map(|s| (s.id, s.name.clone()))
            .collect(),
    }
}

pub fn volume(st: &State, v: &Volume) -> VolumeInfo {
    let pool = &st.pools[&v.pool];
    VolumeInfo {
        id: v.id,
        name: v.name.clone(),
        size_bytes: v.size_bytes,
        thin: v.thin,
        pool_id: v.pool,
        pool_name: pool.name.clone(),
        protection_domain_name: st.pd_name(pool.pd),
        chunks: v.chunks.len() as u64,
        epoch: v.epoch,
        mapped_sdc: st
            .mappings_of(v.id)
            .map(|(s, lun)| (s.id, s.name.clone(), lun))
            .collect(),
    }
}

pub fn sdc(st: &State, sdc: &Sdc) -> SdcInfo {
    let mut volumes: Vec<(u64, String, u64)> = sdc
        .mappings
        .iter()
        .map(|m| (m.volume, st.volumes[&m.volume].name.clone(), m.lun))
        .collect();
    volumes.sort_by_key(|v| v.2);
    SdcInfo {
        id: sdc.id,
        name: sdc.name.clone(),
        ip: sdc.ip.clone(),
        number: sdc.number,
        volumes,
    }
}

/// Whether gateway `sdc` serves volume `volume`: mapped to it, or mapped to an
/// initiator (every gateway serves those).
pub fn serves(st: &State, sdc: &Sdc, volume: u64) -> bool {
    sdc.mappings.iter().any(|m| m.volume == volume) || st.initiators_of(volume).next().is_some()
}

/// A volume's shared SCSI state (version 0, empty: never written).
pub fn volume_scsi(st: &State, volume: u64) -> VolumeScsi {
    let (version, state) = st
        .scsi
        .get(&volume)
        .map_or((0, String::new()), |b| (b.version, b.state.clone()));
    VolumeScsi {
        volume_id: volume,
        version,
        state,
    }
}

/// What a gateway serves and enforces: the SDC's own volumes in LUN order, then every
/// other volume an initiator is mapped to (any gateway may be asked for it), and the
/// whole initiator registry with the secrets it needs to check logins.
pub fn mapped_view(st: &State, sdc: &Sdc) -> MappedView {
    let serving =
        |v: &Volume| -> Vec<&Sdc> { st.sdc.values().filter(|s| serves(st, s, v.id)).collect() };
    let volume = |v: &Volume, lun| {
        let mut gateways: Vec<u16> = serving(v).iter().map(|s| s.number).collect();
        gateways.sort_unstable();
        MappedVolume {
            id: v.id,
            name: v.name.clone(),
            lun,
            size_bytes: v.size_bytes,
            thin: v.thin,
            epoch: v.epoch,
            gateways,
        }
    };
    let mut own: Vec<MappedVolume> = sdc
        .mappings
        .iter()
        .map(|m| volume(&st.volumes[&m.volume], Some(m.lun)))
        .collect();
    own.sort_by_key(|v| v.lun);
    let mut for_initiators: Vec<MappedVolume> = st
        .volumes
        .values()
        .filter(|v| st.initiators_of(v.id).next().is_some())
        .filter(|v| !sdc.mappings.iter().any(|m| m.volume == v.id))
        .map(|v| volume(v, None))
        .collect();
    for_initiators.sort_by(|a, b| a.name.cmp(&b.name));
    own.extend(for_initiators);
    let mut initiators: Vec<InitiatorAccess> = st
        .initiators
        .values()
        .map(|i| InitiatorAccess {
            name: i.name.clone(),
            iqn: i.iqn.clone(),
            chap: i.chap.clone(),
            luns: i
                .mappings
                .iter()
                .map(|m| (m.lun, m.volume, m.access))
                .collect(),
        })
        .collect();
    initiators.sort_by(|a, b| a.name.cmp(&b.name));
    let mut gateways: Vec<GatewayPort> = st
        .sdc
        .values()
        .filter(|s| own.iter().any(|v| v.gateways.contains(&s.number)))
        .map(|s| GatewayPort {
            number: s.number,
            name: s.name.clone(),
        })
        .collect();
    gateways.sort_by_key(|g| g.number);
    MappedView {
        generation: sdc.generation,
        system_id: st.system_id,
        volumes: own,
        initiators,
        gateways,
    }
}

pub fn chap_mode(chap: Option<&Chap>) -> ChapMode {
    match chap {
        None => ChapMode::None,
        Some(Chap { mutual: None, .. }) => ChapMode::OneWay,
        Some(_) => ChapMode::Mutual,
    }
}

/// An initiator as admins see it: whether CHAP is set, never the secrets.
pub fn initiator(st: &State, i: &ScsiInitiator) -> InitiatorInfo {
    let mut luns: Vec<InitiatorLun> = i
        .mappings
        .iter()
        .map(|m| InitiatorLun {
            lun: m.lun,
            volume_id: m.volume,
            volume_name: st.volumes[&m.volume].name.clone(),
            access: m.access,
        })
        .collect();
    luns.sort_by_key(|l| l.lun);
    InitiatorInfo {
        id: i.id,
        name: i.name.clone(),
        iqn: i.iqn.clone(),
        chap: chap_mode(i.chap.as_ref()),
        chap_username: i.chap.as_ref().map(|c| c.username.clone()),
        luns,
    }
}

/// Every initiator, by name.
pub fn initiators(st: &State) -> Vec<InitiatorInfo> {
    let mut all: Vec<InitiatorInfo> = st.initiators.values().map(|i| initiator(st, i)).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// The registry in the declarative map's shape: applied as is, it changes nothing.
/// Secrets stay in the MDM: an initiator with CHAP says "keep".
pub fn initiator_map(st: &State) -> InitiatorMap {
    let mut initiators: Vec<MapInitiator> = st
        .initiators
        .values()
        .map(|i| MapInitiator {
            name: i.name.clone(),
            iqn: i.iqn.clone(),
            chap: match i.chap {
                Some(_) => MapChap::Keep,
                None => MapChap::None,
            },
            mappings: initiator(st, i)
                .luns
                .into_iter()
                .map(|l| MapEntry {
                    volume: l.volume_name,
                    lun: Some(l.lun),
                    access: l.access,
                })
                .collect(),
        })
        .collect();
    initiators.sort_by(|a, b| a.name.cmp(&b.name));
    InitiatorMap { initiators }
}

pub fn layout(st: &State, v: &Volume) -> Layout {
    Layout {
        volume_id: v.id,
        epoch: v.epoch,
        size_bytes: v.size_bytes,
        thin: v.thin,
        protection: st.protection(v.pool),
        devices: v
            .devices
            .iter()
            .map(|&d| {
                let (sds, dev) = st.device(d).expect("layout devices exist");
                DeviceLoc {
                    sds_id: sds.id,
                    device_id: d,
                    addr: sds.addr(),
                    down: sds.down || dev.failed,
                }
            })
            .collect(),
        chunks: v.chunks.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::change::tests::{by, World};
    use super::super::change::{
        add_initiator, map_to_initiator, map_volume, set_chap, thick_allocations,
    };
    use super::*;
    use crate::cluster::api::{AccessMode, DeviceInventory, SdsControl};

    /// Two SDS with 100 and 50 + 50 slots, a thick volume of 10 chunks, a thin one of 4.
    fn world() -> (World, u64, u64) {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[50, 50]);
        let thick = w.volume("thick", 10, false);
        w.volume("thin", 4, true);
        let gw = w.sdc("gw", "10.0.1.1");
        (w, thick, gw)
    }

    /// What each SDS would hold right after the thick volume was allocated.
    fn inventories(w: &World, thick: u64) -> Vec<(u64, SdsInventory)> {
        thick_allocations(&w.st, thick, 0)
            .into_iter()
            .map(|(peer, msg)| {
                let SdsControl::AllocateThick { chunks, .. } = msg else {
                    unreachable!()
                };
                let devices = w.st.sds[&peer.id]
                    .devices
                    .iter()
                    .map(|d| DeviceInventory {
                        device_id: d.id,
                        path: d.path.clone(),
                        slots: d.slots,
                        chunks: chunks
                            .iter()
                            .filter(|c| c.1 == d.id)
                            .map(|c| (thick, c.0))
                            .collect(),
                    })
                    .collect();
                let inv = SdsInventory {
                    system_id: w.st.system_id,
                    sds_id: peer.id,
                    devices,
                };
                (peer.id, inv)
            })
            .collect()
    }

    #[test]
    fn capacity_figures_add_up() {
        let (w, thick, _) = world();
        let obs = Observed::new(&w.st, inventories(&w, thick));
        let c = cluster(&w.st, "127.0.0.1:6611".into(), &obs);
        assert_eq!((c.sds, c.sds_connected, c.volumes, c.sdc), (2, 2, 2, 1));
        assert_eq!(c.raw_capacity_bytes, 200 * CHUNK_SIZE);
        assert_eq!(c.used_bytes, 20 * CHUNK_SIZE);
        let p = pool(&w.st, w.st.pool(&by("pd1"), &by("pool1")).unwrap(), &obs);
        assert_eq!((p.devices, p.sds), (3, 2));
        assert_eq!(p.usable_capacity_bytes, 100 * CHUNK_SIZE);
        assert_eq!(p.thick_reserved_bytes, 10 * CHUNK_SIZE);
        assert_eq!(p.free_for_thick_bytes, 90 * CHUNK_SIZE);
        assert_eq!(p.used_bytes, 20 * CHUNK_SIZE);
        assert_eq!(p.volumes.len(), 2);
    }

    #[test]
    fn an_sds_that_did_not_answer_is_disconnected_with_unknown_use() {
        let (w, thick, _) = world();
        let mut answers = inventories(&w, thick);
        answers[1].1.system_id += 1; // someone else's SDS at that address
        let obs = Observed::new(&w.st, answers);
        let c = cluster(&w.st, String::new(), &obs);
        assert_eq!(c.sds_connected, 1);
        let infos: Vec<SdsInfo> = w.st.sds.values().map(|s| sds(&w.st, s, &obs)).collect();
        let down = infos
            .iter()
            .find(|i| i.state == SdsState::Disconnected)
            .unwrap();
        assert!(down.devices.iter().all(|d| d.used_chunks.is_none()));
        let up = infos
            .iter()
            .find(|i| i.state == SdsState::Connected)
            .unwrap();
        assert_eq!(up.protection_domain_name, "pd1");
        assert!(up.devices.iter().all(|d| d.used_chunks.is_some()));
    }

    #[test]
    fn views_for_gateways_list_luns_and_layouts() {
        let (mut w, thick, gw) = world();
        map_volume(&mut w.st, &by("thin"), &by("gw")).unwrap();
        map_volume(&mut w.st, &by("thick"), &by("gw")).unwrap();
        let view = mapped_view(&w.st, &w.st.sdc[&gw]);
        let luns: Vec<(&str, Option<u64>)> = view
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.lun))
            .collect();
        assert_eq!(luns, [("thin", Some(0)), ("thick", Some(1))]);
        assert!(view.initiators.is_empty());
        assert_eq!(view.generation, 3);
        assert!(view.volumes.iter().all(|v| v.gateways == [1]));
        assert_eq!(view.gateways.len(), 1);
        let info = sdc(&w.st, &w.st.sdc[&gw]);
        assert_eq!(info.volumes[1], (thick, "thick".to_string(), 1));
        let v = volume(&w.st, &w.st.volumes[&thick]);
        assert_eq!(v.mapped_sdc, [(gw, "gw".to_string(), 1)]);
        assert_eq!((v.chunks, v.pool_name.as_str()), (10, "pool1"));
        let l = layout(&w.st, &w.st.volumes[&thick]);
        assert_eq!(l.chunks.len(), 10);
        for [p, s] in &l.chunks {
            let (p, s) = (&l.devices[*p as usize], &l.devices[*s as usize]);
            assert_ne!(p.sds_id, s.sds_id);
        }
        let pdi = pd(&w.st, w.st.pd(&by("pd1")).unwrap(), &Observed::default());
        assert_eq!((pdi.pools.len(), pdi.sds.len()), (2, 2));
    }

    const SECRET: &str = "initiator-secret";
    const MUTUAL: &str = "target-secret!";

    /// `world` plus initiators esx1 (mutual CHAP; thin at LUN 3, thick at LUN 0,
    /// read-only) and esx2 (no CHAP, nothing mapped); thin is also mapped to gw.
    fn initiator_world() -> (World, u64) {
        let (mut w, _, gw) = world();
        let chap = Chap {
            username: "esx1".into(),
            secret: SECRET.into(),
            mutual: Some(("gw".into(), MUTUAL.into())),
        };
        add_initiator(
            &mut w.st,
            &mut w.ids,
            "esx1",
            "iqn.1998-01.com.vmware:esx1",
            Some(&chap),
        )
        .unwrap();
        add_initiator(&mut w.st, &mut w.ids, "esx2", "eui.02004567A425678D", None).unwrap();
        let map = |w: &mut World, v: &str, lun, access| {
            map_to_initiator(&mut w.st, &by(v), &by("esx1"), lun, access).unwrap();
        };
        map(&mut w, "thin", Some(3), AccessMode::ReadWrite);
        map(&mut w, "thick", None, AccessMode::ReadOnly);
        map_volume(&mut w.st, &by("thin"), &by("gw")).unwrap();
        (w, gw)
    }

    #[test]
    fn a_gateway_sees_every_initiator_volume_and_the_whole_registry() {
        let (mut w, gw) = initiator_world();
        let other = w.sdc("gw2", "10.0.1.2");
        let id = |w: &World, v: &str| w.st.volume(&by(v)).unwrap().id;
        let (thin, thick) = (id(&w, "thin"), id(&w, "thick"));
        let view = mapped_view(&w.st, &w.st.sdc[&gw]);
        let luns: Vec<(&str, Option<u64>)> = view
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.lun))
            .collect();
        assert_eq!(luns, [("thin", Some(0)), ("thick", None)]);
        let view2 = mapped_view(&w.st, &w.st.sdc[&other]);
        let luns: Vec<(&str, Option<u64>)> = view2
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.lun))
            .collect();
        assert_eq!(luns, [("thick", None), ("thin", None)], "each volume once");
        assert_eq!(view.initiators, view2.initiators);
        // Both gateways serve both volumes (initiators are mapped to them), and each
        // view names both gateways by their numbers.
        assert!(view.volumes.iter().all(|v| v.gateways == [1, 2]));
        let names: Vec<(u16, &str)> = view2
            .gateways
            .iter()
            .map(|g| (g.number, g.name.as_str()))
            .collect();
        assert_eq!(names, [(1, "gw"), (2, "gw2")]);
        let names: Vec<&str> = view.initiators.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["esx1", "esx2"]);
        let esx1 = &view.initiators[0];
        assert_eq!(esx1.iqn, "iqn.1998-01.com.vmware:esx1");
        assert_eq!(
            esx1.chap.as_ref().unwrap().secret,
            SECRET,
            "gateways check logins"
        );
        assert_eq!(
            esx1.luns,
            [
                (0, thick, AccessMode::ReadOnly),
                (3, thin, AccessMode::ReadWrite)
            ]
        );
        assert_eq!(view.initiators[1].iqn, "eui.02004567a425678d");
        assert_eq!(view.initiators[1].chap, None);
    }

    #[test]
    fn initiator_queries_and_exports_never_carry_secrets() {
        let (w, _) = initiator_world();
        let esx1 = initiator(&w.st, w.st.initiator(&by("esx1")).unwrap());
        assert_eq!(
            (esx1.chap, esx1.chap_username.as_deref()),
            (ChapMode::Mutual, Some("esx1"))
        );
        let luns: Vec<(u64, &str, AccessMode)> = esx1
            .luns
            .iter()
            .map(|l| (l.lun, l.volume_name.as_str(), l.access))
            .collect();
        assert_eq!(
            luns,
            [
                (0, "thick", AccessMode::ReadOnly),
                (3, "thin", AccessMode::ReadWrite)
            ]
        );
        let esx2 = initiator(&w.st, w.st.initiator(&by("esx2")).unwrap());
        assert_eq!((esx2.chap, esx2.chap_username), (ChapMode::None, None));
        let map = initiator_map(&w.st);
        let chaps: Vec<(&str, &MapChap)> = map
            .initiators
            .iter()
            .map(|i| (i.name.as_str(), &i.chap))
            .collect();
        assert_eq!(chaps, [("esx1", &MapChap::Keep), ("esx2", &MapChap::None)]);
        assert_eq!(
            map.initiators[0].mappings[1],
            MapEntry {
                volume: "thin".into(),
                lun: Some(3),
                access: AccessMode::ReadWrite
            }
        );
        let json = serde_json::to_string(&(&esx1, &map)).unwrap();
        for secret in [SECRET, MUTUAL] {
            assert!(!json.contains(secret), "{json}");
        }
        let debug = format!("{:?}", w.st);
        assert!(
            !debug.contains(SECRET) && !debug.contains(MUTUAL),
            "{debug}"
        );
    }

    #[test]
    fn chap_modes() {
        let (mut w, _) = initiator_world();
        let one_way = Chap {
            username: "u".into(),
            secret: SECRET.into(),
            mutual: None,
        };
        set_chap(&mut w.st, &by("esx2"), Some(&one_way)).unwrap();
        let esx2 = initiator(&w.st, w.st.initiator(&by("esx2")).unwrap());
        assert_eq!(esx2.chap, ChapMode::OneWay);
    }
}
