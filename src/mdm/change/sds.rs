//! SDS and their devices joining the cluster: validated here, claimed by the caller,
//! then recorded with the capacity each SDS reported.

use super::{check_name, duplicate, unique_default, ChangeError, DEFAULT_SDS_PORT};
use crate::cluster::api::{fmt_id, AddSds, By, ClaimDevice, DeviceReport, DeviceSpec, SdsControl};
use crate::mdm::ids::IdGen;
use crate::mdm::link::Peer;
use crate::mdm::model::{Device, Kind, Sds, State, SDS};
use std::net::{IpAddr, SocketAddr};

/// Devices an SDS is asked to claim; the state holds them without a capacity until
/// [`record_claim`] fills it in from the SDS's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub sds: Peer,
    pub devices: Vec<ClaimDevice>,
}

impl Claim {
    pub fn message(&self, system_id: u64, mdm_port: u16) -> SdsControl {
        SdsControl::Claim {
            system_id,
            sds_id: self.sds.id,
            sds_name: self.sds.name.clone(),
            mdm_port,
            devices: self.devices.clone(),
        }
    }
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`, with an optional separate port.
fn sds_addr(ip: &str, port: Option<u16>) -> Result<SocketAddr, ChangeError> {
    if let Ok(a) = ip.parse::<SocketAddr>() {
        return match port {
            Some(p) if p != a.port() => Err(ChangeError::PortConflict {
                ip: ip.to_string(),
                in_ip: a.port(),
                given: p,
            }),
            _ => Ok(a),
        };
    }
    let parsed: IpAddr = ip
        .parse()
        .map_err(|_| ChangeError::BadIp { ip: ip.to_string() })?;
    if parsed.is_unspecified() {
        return Err(ChangeError::BadIp { ip: ip.to_string() });
    }
    Ok(SocketAddr::new(parsed, port.unwrap_or(DEFAULT_SDS_PORT)))
}

/// Validates a new SDS and adds it, with unclaimed devices, to `st`.
pub fn add_sds(st: &mut State, ids: &mut IdGen, req: &AddSds) -> Result<Claim, ChangeError> {
    let pd = st.pd(&By::Name(req.protection_domain.clone()))?.id;
    let addr = sds_addr(&req.ip, req.port)?;
    if addr.port() == 0 {
        return Err(ChangeError::BadIp {
            ip: addr.to_string(),
        });
    }
    if let Some(other) = st.sds.values().find(|s| s.addr() == addr) {
        return Err(ChangeError::SdsAddrTaken {
            addr,
            sds: other.name.clone(),
        });
    }
    let name = match &req.name {
        Some(n) => {
            check_name(&SDS, n)?;
            if st.sds.values().any(|s| &s.name == n) {
                return Err(duplicate(&SDS, n));
            }
            n.clone()
        }
        None => unique_default(format!("SDS_{}", addr.ip()), |n| {
            st.sds.values().any(|s| s.name == n)
        }),
    };
    if req.devices.is_empty() {
        return Err(ChangeError::NoDevices { sds: name });
    }
    let id = ids.derived(st.system_id, &["sds", &addr.to_string()]);
    let mut sds = Sds {
        id,
        name,
        ip: addr.ip(),
        port: addr.port(),
        pd,
        devices: Vec::new(),
        down: false,
        removing: false,
    };
    let mut claim = Vec::new();
    for spec in &req.devices {
        let dev = new_device(st, ids, &sds, spec)?;
        claim.push(ClaimDevice {
            device_id: dev.id,
            path: dev.path.clone(),
            pool_id: dev.pool,
        });
        sds.devices.push(dev);
    }
    let peer = Peer {
        id,
        name: sds.name.clone(),
        addr,
    };
    st.sds.insert(id, sds);
    Ok(Claim {
        sds: peer,
        devices: claim,
    })
}

/// A device for `sds` (not yet in it), checked against the devices it already has.
fn new_device(
    st: &State,
    ids: &mut IdGen,
    sds: &Sds,
    spec: &DeviceSpec,
) -> Result<Device, ChangeError> {
    if spec.path.is_empty() {
        return Err(ChangeError::EmptyPath);
    }
    let pool = st.pool(&By::Id(sds.pd), &By::Name(spec.pool.clone()))?.id;
    // A device named after its path keeps the whole path, however long (by-id paths
    // often pass the 64 characters allowed for a name an admin chooses).
    let name = match &spec.name {
        Some(n) => {
            check_name(
                &Kind {
                    noun: "device",
                    name_opt: "--device_name",
                    ..SDS
                },
                n,
            )?;
            n.clone()
        }
        None => spec.path.clone(),
    };
    if sds.devices.iter().any(|d| d.path == spec.path) {
        return Err(if st.sds.contains_key(&sds.id) {
            ChangeError::AlreadyClaimed {
                path: spec.path.clone(),
                sds: sds.name.clone(),
            }
        } else {
            ChangeError::DuplicatePath {
                path: spec.path.clone(),
                sds: sds.name.clone(),
            }
        });
    }
    if sds.devices.iter().any(|d| d.name == name) {
        return Err(ChangeError::DuplicateDeviceName {
            name,
            sds: sds.name.clone(),
        });
    }
    Ok(Device {
        id: ids.derived(st.system_id, &["device", &fmt_id(sds.id), &spec.path]),
        name,
        path: spec.path.clone(),
        pool,
        capacity_bytes: 0,
        slots: 0,
        removing: false,
        failed: false,
    })
}

/// Validates a device for an existing SDS and adds it, unclaimed, to `st`.
pub fn add_sds_device(
    st: &mut State,
    ids: &mut IdGen,
    sds: &By,
    spec: &DeviceSpec,
) -> Result<Claim, ChangeError> {
    let sds = st.sds_by(sds)?;
    let dev = new_device(st, ids, sds, spec)?;
    let claim = Claim {
        sds: Peer {
            id: sds.id,
            name: sds.name.clone(),
            addr: sds.addr(),
        },
        devices: vec![ClaimDevice {
            device_id: dev.id,
            path: dev.path.clone(),
            pool_id: dev.pool,
        }],
    };
    let id = sds.id;
    st.sds.get_mut(&id).expect("just found").devices.push(dev);
    Ok(claim)
}

/// Fills in the capacity of claimed devices from the SDS's answer.
pub fn record_claim(
    st: &mut State,
    claim: &Claim,
    reports: &[DeviceReport],
) -> Result<(), ChangeError> {
    let sds = st
        .sds
        .get_mut(&claim.sds.id)
        .expect("claimed SDS is in the state");
    for c in &claim.devices {
        let Some(r) = reports.iter().find(|r| r.device_id == c.device_id) else {
            return Err(ChangeError::Unclaimed {
                path: c.path.clone(),
                sds: sds.name.clone(),
            });
        };
        if r.slots == 0 {
            return Err(ChangeError::DeviceTooSmall {
                path: c.path.clone(),
                sds: sds.name.clone(),
                bytes: r.capacity_bytes,
            });
        }
        let d = sds
            .devices
            .iter_mut()
            .find(|d| d.id == c.device_id)
            .expect("claimed device is in the state");
        d.capacity_bytes = r.capacity_bytes;
        d.slots = r.slots;
    }
    Ok(())
}

/// The SDS a heartbeat names, if it belongs to this system.
pub fn heartbeat_sds(st: &State, sds_id: u64, system_id: u64) -> Result<&Sds, ChangeError> {
    let sds = st.sds_by(&By::Id(sds_id))?;
    if system_id != st.system_id {
        return Err(ChangeError::OtherSystem {
            sds: sds.name.clone(),
            theirs: system_id,
            ours: st.system_id,
        });
    }
    Ok(sds)
}

/// Records where a restarted SDS listens now; returns whether it moved.
pub fn sds_hello(
    st: &mut State,
    sds_id: u64,
    system_id: u64,
    addr: SocketAddr,
) -> Result<bool, ChangeError> {
    let sds = heartbeat_sds(st, sds_id, system_id)?;
    if sds.addr() == addr {
        return Ok(false);
    }
    if let Some(other) = st.sds.values().find(|s| s.addr() == addr) {
        return Err(ChangeError::AddrInUse {
            sds: sds.name.clone(),
            addr,
            other: other.name.clone(),
        });
    }
    let sds = st.sds.get_mut(&sds_id).expect("just found");
    sds.ip = addr.ip();
    sds.port = addr.port();
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{by, sds_req, World};
    use super::*;
    use crate::cluster::api::CHUNK_SIZE;
    #[test]
    fn add_sds_validates_everything_before_claiming() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("10.0.0.1", "pd1", "pool1", 1)));
        assert!(
            e.contains("SDS SDS_10.0.0.1 already listens at 10.0.0.1:7072"),
            "{e}"
        );
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("10.0.0.9", "pd1", "pool2", 1)));
        assert!(
            e.contains("storage pool pool2 belongs to protection domain pd2, not pd1"),
            "{e}"
        );
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("10.0.0.9", "pd1", "nope", 1)));
        assert!(
            e.contains("storage pool nope (--storage_pool_name) does not exist"),
            "{e}"
        );
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("10.0.0.9", "pdx", "pool1", 1)));
        assert!(e.contains("protection domain pdx"), "{e}");
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("host.example", "pd1", "pool1", 1)));
        assert_eq!(e, "--sds_ip host.example is not an IP address or IP:PORT");
        let e = w.refuse(|st, ids| add_sds(st, ids, &sds_req("10.0.0.9", "pd1", "pool1", 0)));
        assert!(e.contains("needs at least one device"), "{e}");
        let mut twice = sds_req("10.0.0.9", "pd1", "pool1", 2);
        twice.devices[1].path = twice.devices[0].path.clone();
        let e = w.refuse(|st, ids| add_sds(st, ids, &twice));
        assert!(
            e.contains("device /dev/sdb is listed twice for SDS SDS_10.0.0.9"),
            "{e}"
        );
        let mut named = sds_req("10.0.0.9", "pd1", "pool1", 1);
        named.name = Some("SDS_10.0.0.1".into());
        let e = w.refuse(|st, ids| add_sds(st, ids, &named));
        assert!(
            e.contains("SDS name SDS_10.0.0.1 is taken; choose another --sds_name"),
            "{e}"
        );
        let mut conflict = sds_req("10.0.0.9:7000", "pd1", "pool1", 1);
        conflict.port = Some(7001);
        let e = w.refuse(|st, ids| add_sds(st, ids, &conflict));
        assert!(
            e.contains("names port 7000 but the port is also given as 7001"),
            "{e}"
        );
    }

    #[test]
    fn sds_on_one_host_get_distinct_default_names_and_ports() {
        let mut w = World::new();
        w.sds("127.0.0.1", &[10]);
        let mut req = sds_req("127.0.0.1:7073", "pd1", "pool1", 1);
        req.port = Some(7073);
        let claim = add_sds(&mut w.st, &mut w.ids, &req).unwrap();
        assert_eq!(claim.sds.name, "SDS_127.0.0.1_2");
        assert_eq!(claim.sds.addr, "127.0.0.1:7073".parse().unwrap());
        assert_eq!(claim.devices.len(), 1);
        assert_eq!(w.st.sds[&claim.sds.id].devices[0].name, "/dev/sdb");
    }

    #[test]
    fn a_device_named_after_a_long_path_keeps_the_whole_path() {
        let mut w = World::new();
        let mut req = sds_req("10.0.0.7", "pd1", "pool1", 1);
        let long = format!("/dev/disk/by-id/{}", "nvme-VendorModel_SERIAL".repeat(4));
        req.devices[0].path = long.clone();
        let claim = add_sds(&mut w.st, &mut w.ids, &req).unwrap();
        assert_eq!(w.st.sds[&claim.sds.id].devices[0].name, long);
        req.devices[0].name = Some("x".repeat(65));
        req.ip = "10.0.0.8".into();
        let e = w.refuse(|st, ids| add_sds(st, ids, &req));
        assert!(e.contains("--device_name"), "{e}");
    }

    #[test]
    fn claims_fill_capacity_and_refuse_missing_or_tiny_devices() {
        let mut w = World::new();
        let req = sds_req("10.0.0.1", "pd1", "pool1", 2);
        let mut st = w.st.clone();
        let claim = add_sds(&mut st, &mut w.ids, &req).unwrap();
        let report = |i: usize, slots| DeviceReport {
            device_id: claim.devices[i].device_id,
            path: claim.devices[i].path.clone(),
            capacity_bytes: slots * CHUNK_SIZE + 4096,
            slots,
        };
        let e = record_claim(&mut st.clone(), &claim, &[report(0, 5)]).unwrap_err();
        assert!(
            e.to_string().contains("did not report device /dev/sdc"),
            "{e}"
        );
        let e = record_claim(&mut st.clone(), &claim, &[report(0, 5), report(1, 0)]);
        assert!(e.unwrap_err().to_string().contains("too small"));
        record_claim(&mut st, &claim, &[report(0, 5), report(1, 7)]).unwrap();
        let slots: Vec<u64> = st.sds[&claim.sds.id]
            .devices
            .iter()
            .map(|d| d.slots)
            .collect();
        assert_eq!(slots, [5, 7]);
        st.check().unwrap();
    }

    #[test]
    fn retrying_an_sds_presents_the_same_ids() {
        let w = World::new();
        let req = sds_req("10.0.0.1", "pd1", "pool1", 2);
        let a = add_sds(&mut w.st.clone(), &mut IdGen::new(&w.st), &req).unwrap();
        let b = add_sds(&mut w.st.clone(), &mut IdGen::new(&w.st), &req).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_added_device_must_be_new_on_its_sds_and_in_its_domain() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[10]);
        let spec = |path: &str, pool: &str| DeviceSpec {
            path: path.into(),
            pool: pool.into(),
            name: None,
        };
        let sds = By::Ip("10.0.0.1".into());
        let e = w.refuse(|st, ids| add_sds_device(st, ids, &sds, &spec("/dev/sdb", "pool1")));
        assert!(
            e.contains("device /dev/sdb is already claimed by SDS SDS_10.0.0.1"),
            "{e}"
        );
        let e = w.refuse(|st, ids| add_sds_device(st, ids, &sds, &spec("/dev/sdz", "pool2")));
        assert!(e.contains("belongs to protection domain pd2"), "{e}");
        let e = w.refuse(|st, ids| add_sds_device(st, ids, &by("x"), &spec("/dev/sdz", "pool1")));
        assert!(e.contains("SDS x (--sds_name) does not exist"), "{e}");
        let claim = add_sds_device(&mut w.st, &mut w.ids, &sds, &spec("/dev/sdz", "pool1b"));
        let claim = claim.unwrap();
        assert_eq!(claim.devices.len(), 1);
        assert_eq!(claim.devices[0].path, "/dev/sdz");
        assert_eq!(w.st.sds[&claim.sds.id].devices.len(), 2);
    }

    #[test]
    fn sds_hello_checks_the_system_and_moves_the_address() {
        let mut w = World::new();
        let a = w.sds("10.0.0.1", &[10]);
        w.sds("10.0.0.2", &[10]);
        let sys = w.st.system_id;
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!sds_hello(&mut w.st, a, sys, at("10.0.0.1:7072")).unwrap());
        let e = w.refuse(|st, _| sds_hello(st, a, sys + 1, at("10.0.0.1:7072")));
        assert!(e.contains("belongs to system"), "{e}");
        let e = w.refuse(|st, _| sds_hello(st, 99, sys, at("10.0.0.1:7072")));
        assert!(e.contains("(--sds_id) does not exist"), "{e}");
        let e = w.refuse(|st, _| sds_hello(st, a, sys, at("10.0.0.2:7072")));
        assert!(e.contains("where SDS SDS_10.0.0.2 already listens"), "{e}");
        assert!(sds_hello(&mut w.st, a, sys, at("10.0.0.5:7100")).unwrap());
        assert_eq!(w.st.sds[&a].addr(), at("10.0.0.5:7100"));
    }
}
