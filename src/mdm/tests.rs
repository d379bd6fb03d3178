//! The MDM over real TCP, with SDS stood in for by `FakeSds`.

use super::testutil::FakeSds;
use super::*;
use crate::cluster::api::{
    AccessMode, AddSds, AdminReply, AdminRequest, By, Chap, ChapMode, DeviceSpec, InitiatorMap,
    MapChap, MapEntry, MapInitiator, MappedView, MdmReply, MdmRequest, MdmResponse, MediaType,
    Protection, SdsControl, SdsState, CHUNK_SIZE,
};
use crate::cluster::frame;
use tokio::net::TcpStream;

const SDS: [&str; 4] = [
    "127.0.0.1:17001",
    "127.0.0.1:17002",
    "127.0.0.1:17003",
    "127.0.0.1:17004",
];

struct Env {
    mdm: MdmHandle,
    fake: Arc<FakeSds>,
    /// The data directory, when the test does not keep its own.
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    /// An MDM and four reachable fake SDS whose devices hold 1000 chunks each.
    async fn new() -> Self {
        let fake = Arc::new(FakeSds::default());
        for a in SDS {
            fake.node(a, 1000);
        }
        let dir = tempfile::tempdir().unwrap();
        let mdm = start_with(opts(&dir), fake.clone()).await.unwrap();
        Self {
            mdm,
            fake,
            _dir: Some(dir),
        }
    }

    async fn call(&self, req: MdmRequest) -> MdmResponse {
        let addr = self.mdm.addr.to_string();
        frame::call(&addr, &req, Duration::from_secs(30))
            .await
            .unwrap()
    }

    async fn admin(&self, req: AdminRequest) -> Result<AdminReply, String> {
        match self.call(MdmRequest::Admin(req)).await? {
            MdmReply::Admin(r) => Ok(r),
            other => panic!("not an admin reply: {other:?}"),
        }
    }

    async fn ok(&self, req: AdminRequest) -> AdminReply {
        self.admin(req).await.unwrap()
    }

    /// pd1 with pool1, and the first `n` fake SDS in it with one device each.
    async fn cluster(&self, n: usize) {
        self.cluster_as(n, Protection::TwoCopies).await
    }

    /// `cluster`, with pool1 keeping the copies `protection` says.
    async fn cluster_as(&self, n: usize, protection: Protection) {
        self.ok(AdminRequest::AddProtectionDomain { name: "pd1".into() })
            .await;
        self.ok(AdminRequest::AddStoragePool {
            pd: by("pd1"),
            name: "pool1".into(),
            media_type: MediaType::Ssd,
            protection,
        })
        .await;
        for a in &SDS[..n] {
            self.ok(AdminRequest::AddSds(add_sds(a))).await;
        }
    }

    /// pd1/pool1 as queried.
    async fn pool(&self) -> crate::cluster::api::PoolInfo {
        match self
            .ok(AdminRequest::QueryStoragePool {
                pd: by("pd1"),
                pool: by("pool1"),
            })
            .await
        {
            AdminReply::StoragePool(p) => p,
            other => panic!("{other:?}"),
        }
    }

    async fn done(&self, req: AdminRequest) -> String {
        match self.ok(req).await {
            AdminReply::Done(text) => text,
            other => panic!("{other:?}"),
        }
    }

    async fn register(&self, name: &str) -> u64 {
        match self
            .call(MdmRequest::RegisterSdc {
                name: name.into(),
                ip: "127.0.0.1".into(),
            })
            .await
            .unwrap()
        {
            MdmReply::Registered { sdc_id, .. } => sdc_id,
            other => panic!("{other:?}"),
        }
    }

    /// The gateway's view as it is now (a `since` no generation has).
    async fn view(&self, sdc_id: u64) -> MappedView {
        let req = MdmRequest::WatchMappings {
            sdc_id,
            since: u64::MAX,
        };
        match self.call(req).await.unwrap() {
            MdmReply::Mappings(v) => v,
            other => panic!("{other:?}"),
        }
    }

    async fn export(&self) -> InitiatorMap {
        match self.ok(AdminRequest::ExportInitiatorMap).await {
            AdminReply::InitiatorMap(m) => m,
            other => panic!("{other:?}"),
        }
    }

    async fn volume(&self, name: &str, chunks: u64, thin: bool) -> u64 {
        match self
            .ok(AdminRequest::AddVolume {
                pd: by("pd1"),
                pool: by("pool1"),
                name: Some(name.into()),
                size_bytes: chunks * CHUNK_SIZE,
                thin,
            })
            .await
        {
            AdminReply::Volume { id, .. } => id,
            other => panic!("{other:?}"),
        }
    }
}

fn opts(dir: &tempfile::TempDir) -> MdmOptions {
    MdmOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
    }
}

fn by(name: &str) -> By {
    By::Name(name.into())
}

fn add_sds(addr: &str) -> AddSds {
    let a: SocketAddr = addr.parse().unwrap();
    AddSds {
        ip: a.ip().to_string(),
        port: Some(a.port()),
        protection_domain: "pd1".into(),
        name: Some(format!("sds{}", a.port() - 17000)),
        devices: vec![DeviceSpec {
            path: "/dev/sdb".into(),
            pool: "pool1".into(),
            name: None,
        }],
    }
}

/// The first message of a kind an SDS received.
fn first(fake: &FakeSds, addr: &str, pick: fn(&SdsControl) -> bool) -> Option<SdsControl> {
    fake.received(addr).into_iter().find(pick)
}

#[tokio::test]
async fn sds_are_claimed_with_our_ids_and_told_their_peers() {
    let env = Env::new().await;
    env.cluster(2).await;
    let claim = first(&env.fake, SDS[0], |m| matches!(m, SdsControl::Claim { .. })).unwrap();
    let SdsControl::Claim {
        system_id,
        sds_name,
        mdm_port,
        devices,
        ..
    } = claim
    else {
        unreachable!()
    };
    assert_eq!(system_id, env.mdm.system_id);
    assert_eq!(sds_name, "sds1");
    assert_eq!(mdm_port, env.mdm.addr.port());
    assert_eq!(devices[0].path, "/dev/sdb");
    // Peers go out in the background after the reply.
    for _ in 0..100 {
        let peers = env
            .fake
            .received(SDS[0])
            .into_iter()
            .filter_map(|m| match m {
                SdsControl::Peers { peers } => Some(peers.len()),
                _ => None,
            });
        if peers.max() == Some(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sds1 never learnt of sds2");
}

#[tokio::test]
async fn a_failed_claim_adds_nothing_and_names_the_sds() {
    let env = Env::new().await;
    env.cluster(1).await;
    env.fake.fail(
        SDS[1],
        "Claim",
        "device /dev/sdb belongs to system 00000000000000aa",
    );
    let e = env
        .admin(AdminRequest::AddSds(add_sds(SDS[1])))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "could not claim the devices: SDS sds2 at 127.0.0.1:17002: device /dev/sdb belongs \
         to system 00000000000000aa; nothing was added"
    );
    env.fake.down(SDS[2]);
    let e = env
        .admin(AdminRequest::AddSds(add_sds(SDS[2])))
        .await
        .unwrap_err();
    assert!(e.contains("connection refused"), "{e}");
    match env.ok(AdminRequest::QueryAllSds).await {
        AdminReply::AllSds(all) => assert_eq!(all.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_and_a_retry_reuses_the_ids() {
    let env = Env::new().await;
    env.cluster(0).await;
    let batch = AdminRequest::AddSdsBatch(SDS[..3].iter().map(|a| add_sds(a)).collect());
    env.fake.fail(SDS[1], "Claim", "disk on fire");
    let e = env.admin(batch.clone()).await.unwrap_err();
    assert!(
        e.starts_with("row 2 of the batch (SDS sds2): SDS sds2"),
        "{e}"
    );
    assert!(
        e.ends_with("disk on fire; no SDS of the batch was added"),
        "{e}"
    );
    let mut bad = add_sds(SDS[3]);
    bad.devices[0].pool = "nope".into();
    let e = env
        .admin(AdminRequest::AddSdsBatch(vec![add_sds(SDS[0]), bad]))
        .await
        .unwrap_err();
    assert!(
        e.contains("row 2") && e.contains("storage pool nope"),
        "{e}"
    );
    let mut twice = vec![add_sds(SDS[0]), add_sds(SDS[0])];
    twice[1].name = Some("other".into());
    let e = env
        .admin(AdminRequest::AddSdsBatch(twice))
        .await
        .unwrap_err();
    assert!(e.contains("row 2") && e.contains("already listens"), "{e}");
    match env.ok(AdminRequest::QueryCluster).await {
        AdminReply::Cluster(c) => assert_eq!(c.sds, 0),
        other => panic!("{other:?}"),
    }

    env.fake.heal(SDS[1]);
    let AdminReply::CreatedMany(made) = env.ok(batch).await else {
        panic!()
    };
    let names: Vec<&str> = made.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(names, ["sds1", "sds2", "sds3"]);
    let claims: Vec<SdsControl> = env
        .fake
        .received(SDS[0])
        .into_iter()
        .filter(|m| matches!(m, SdsControl::Claim { .. }))
        .collect();
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0], claims[1], "the retry claims with the same ids");
}

#[tokio::test]
async fn devices_are_added_to_a_running_sds() {
    let env = Env::new().await;
    env.cluster(1).await;
    let spec = |path: &str| DeviceSpec {
        path: path.into(),
        pool: "pool1".into(),
        name: None,
    };
    let e = env
        .admin(AdminRequest::AddSdsDevice {
            sds: by("sds1"),
            device: spec("/dev/sdb"),
        })
        .await
        .unwrap_err();
    assert!(e.contains("already claimed by SDS sds1"), "{e}");
    let reply = env
        .ok(AdminRequest::AddSdsDevice {
            sds: By::Ip("127.0.0.1:17001".into()),
            device: spec("/dev/sdc"),
        })
        .await;
    assert!(matches!(reply, AdminReply::Created { ref kind, .. } if kind == "device"));
    let AdminReply::Sds(info) = env.ok(AdminRequest::QuerySds { sds: by("sds1") }).await else {
        panic!()
    };
    assert_eq!(info.devices.len(), 2);
    assert_eq!(info.devices[1].capacity_bytes, 1000 * CHUNK_SIZE + 4096);
    assert_eq!(info.state, SdsState::Connected);
}

#[tokio::test]
async fn thick_volumes_are_reserved_on_their_sds_and_freed_on_removal() {
    let env = Env::new().await;
    env.cluster(3).await;
    let AdminReply::Volume { id, size_bytes, .. } = env
        .ok(AdminRequest::AddVolume {
            pd: by("pd1"),
            pool: by("pool1"),
            name: None,
            size_bytes: 90 * CHUNK_SIZE - 1,
            thin: false,
        })
        .await
    else {
        panic!()
    };
    assert_eq!(size_bytes, 90 * CHUNK_SIZE);
    let held: Vec<usize> = SDS[..3].iter().map(|a| env.fake.chunks(a, id)).collect();
    assert_eq!(held, [60, 60, 60]);
    let p = env.pool().await;
    assert_eq!(p.used_bytes, 180 * CHUNK_SIZE);
    assert_eq!(p.thick_reserved_bytes, 90 * CHUNK_SIZE);
    assert_eq!(p.free_for_thick_bytes, 1410 * CHUNK_SIZE);

    let e = env
        .admin(AdminRequest::AddVolume {
            pd: by("pd1"),
            pool: by("pool1"),
            name: Some("huge".into()),
            size_bytes: 2000 * CHUNK_SIZE,
            thin: false,
        })
        .await
        .unwrap_err();
    assert!(
        e.contains("thick volume huge needs 1.953 GB but storage pool pool1 has 1.377 GB free"),
        "{e}"
    );

    env.ok(AdminRequest::ModifyVolumeCapacity {
        volume: By::Id(id),
        size_bytes: 120 * CHUNK_SIZE,
    })
    .await;
    let held: usize = SDS[..3].iter().map(|a| env.fake.chunks(a, id)).sum();
    assert_eq!(held, 240);
    let AdminReply::Volume1(v) = env
        .ok(AdminRequest::QueryVolume { volume: By::Id(id) })
        .await
    else {
        panic!()
    };
    assert_eq!((v.epoch, v.chunks, v.thin), (2, 120, false));

    env.ok(AdminRequest::RemoveVolume { volume: By::Id(id) })
        .await;
    let held: usize = SDS[..3].iter().map(|a| env.fake.chunks(a, id)).sum();
    assert_eq!(held, 0);
}

#[tokio::test]
async fn a_failed_thick_reservation_creates_nothing_and_frees_the_rest() {
    let env = Env::new().await;
    env.cluster(3).await;
    env.fake
        .fail(SDS[2], "AllocateThick", "fallocate: no space left");
    let e = env
        .admin(AdminRequest::AddVolume {
            pd: by("pd1"),
            pool: by("pool1"),
            name: Some("t".into()),
            size_bytes: 30 * CHUNK_SIZE,
            thin: false,
        })
        .await
        .unwrap_err();
    assert!(
        e.starts_with("could not reserve space for thick volume t: SDS sds3"),
        "{e}"
    );
    assert!(
        e.ends_with("no space left; the volume was not created"),
        "{e}"
    );
    for a in &SDS[..2] {
        let freed = first(&env.fake, a, |m| matches!(m, SdsControl::FreeVolume { .. }));
        assert!(freed.is_some(), "{a} was not told to free");
    }
    let AdminReply::AllVolumes(all) = env.ok(AdminRequest::QueryAllVolumes).await else {
        panic!()
    };
    assert!(all.is_empty());
}

#[tokio::test]
async fn gateways_register_watch_their_mappings_and_fetch_layouts() {
    let env = Env::new().await;
    env.cluster(2).await;
    let vol = env.volume("v1", 8, true).await;
    let MdmReply::Registered {
        sdc_id, system_id, ..
    } = env
        .call(MdmRequest::RegisterSdc {
            name: "gw1".into(),
            ip: "127.0.0.1".into(),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(system_id, env.mdm.system_id);
    let MdmReply::Mappings(view) = env
        .call(MdmRequest::WatchMappings { sdc_id, since: 0 })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(view.volumes.is_empty());

    // A watcher parked on the current generation wakes when a volume is mapped.
    let addr = env.mdm.addr.to_string();
    let since = view.generation;
    let watcher = tokio::spawn(async move {
        let req = MdmRequest::WatchMappings { sdc_id, since };
        let r: MdmResponse = frame::call(&addr, &req, Duration::from_secs(30))
            .await
            .unwrap();
        r
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let AdminReply::Done(msg) = env
        .ok(AdminRequest::MapVolumeToSdc {
            volume: by("v1"),
            sdc: By::Ip("127.0.0.1".into()),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(msg, "mapped volume v1 to SDC gw1 as LUN 0");
    let MdmReply::Mappings(view) = watcher.await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(view.generation, since + 1);
    assert_eq!((view.volumes[0].id, view.volumes[0].lun), (vol, Some(0)));

    let MdmReply::Layout(layout) = env
        .call(MdmRequest::GetLayout { volume_id: vol })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (layout.chunks.len(), layout.epoch, layout.thin),
        (8, 1, true)
    );
    let addrs: Vec<String> = layout.devices.iter().map(|d| d.addr.to_string()).collect();
    assert!(addrs.contains(&SDS[0].to_string()) && addrs.contains(&SDS[1].to_string()));

    let e = env
        .admin(AdminRequest::RemoveVolume { volume: by("v1") })
        .await
        .unwrap_err();
    assert!(
        e.contains("unmap it first with --unmap_volume_from_sdc"),
        "{e}"
    );
    env.ok(AdminRequest::RenameVolume {
        volume: by("v1"),
        new_name: "v2".into(),
    })
    .await;
    let MdmReply::Mappings(view) = env
        .call(MdmRequest::WatchMappings {
            sdc_id,
            since: since + 1,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(view.volumes[0].name, "v2");
    let AdminReply::AllSdc(all) = env.ok(AdminRequest::QueryAllSdc).await else {
        panic!()
    };
    assert_eq!(all[0].volumes, [(vol, "v2".to_string(), 0)]);
    env.ok(AdminRequest::UnmapVolumeFromSdc {
        volume: by("v2"),
        sdc: by("gw1"),
    })
    .await;
    env.ok(AdminRequest::RemoveVolume { volume: by("v2") })
        .await;
    let e = env
        .call(MdmRequest::GetLayout { volume_id: vol })
        .await
        .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}

#[tokio::test]
async fn a_restarted_sds_reports_its_new_address() {
    let env = Env::new().await;
    env.cluster(2).await;
    let AdminReply::Sds(sds) = env.ok(AdminRequest::QuerySds { sds: by("sds1") }).await else {
        panic!()
    };
    let hello = |system_id, addr: &str| MdmRequest::SdsHeartbeat {
        sds_id: sds.id,
        system_id,
        addr: addr.parse().unwrap(),
        failed_devices: Vec::new(),
    };
    let e = env.call(hello(1, SDS[2])).await.unwrap_err();
    assert!(e.contains("belongs to system 0000000000000001"), "{e}");
    assert_eq!(
        env.call(hello(env.mdm.system_id, "0.0.0.0:17003"))
            .await
            .map(|r| matches!(r, MdmReply::Lease { .. })),
        Ok(true)
    );
    let AdminReply::Sds(moved) = env.ok(AdminRequest::QuerySds { sds: by("sds1") }).await else {
        panic!()
    };
    assert_eq!((moved.ip.as_str(), moved.port), ("127.0.0.1", 17003));
}

#[tokio::test]
async fn queries_report_an_unreachable_sds_as_disconnected() {
    let env = Env::new().await;
    env.cluster(3).await;
    env.volume("v", 10, false).await;
    env.fake.down(SDS[1]);
    let AdminReply::AllSds(all) = env.ok(AdminRequest::QueryAllSds).await else {
        panic!()
    };
    let states: Vec<(String, SdsState, Option<u64>)> = all
        .iter()
        .map(|s| (s.name.clone(), s.state, s.devices[0].used_chunks))
        .collect();
    let down = states.iter().find(|s| s.0 == "sds2").unwrap();
    assert_eq!((down.1, down.2), (SdsState::Disconnected, None));
    let up: u64 = states.iter().filter_map(|s| s.2).sum();
    let AdminReply::Cluster(c) = env.ok(AdminRequest::QueryCluster).await else {
        panic!()
    };
    assert_eq!(c.sds_connected, 2);
    assert_eq!(c.used_bytes, up * CHUNK_SIZE);
    assert_eq!(c.raw_capacity_bytes, 3000 * CHUNK_SIZE);
    assert_eq!(c.mdm_addr, env.mdm.addr.to_string());
    let AdminReply::ProtectionDomain(pd) = env
        .ok(AdminRequest::QueryProtectionDomain { pd: by("pd1") })
        .await
    else {
        panic!()
    };
    assert_eq!((pd.pools.len(), pd.sds.len()), (1, 3));
}

#[tokio::test]
async fn one_connection_carries_many_requests_and_survives_a_bad_one() {
    let env = Env::new().await;
    let mut s = TcpStream::connect(env.mdm.addr).await.unwrap();
    frame::write(&mut s, &serde_json::json!({"Admin": "NoSuchRequest"}))
        .await
        .unwrap();
    let r: MdmResponse = frame::read(&mut s).await.unwrap().unwrap();
    assert!(r.unwrap_err().contains("does not understand"));
    for name in ["a", "b", "a"] {
        let req = MdmRequest::Admin(AdminRequest::AddProtectionDomain { name: name.into() });
        frame::write(&mut s, &req).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r: MdmResponse = frame::read(&mut s).await.unwrap().unwrap();
        answers.push(r.is_ok());
    }
    assert_eq!(answers, [true, true, false]);
}

#[tokio::test]
async fn protection_domains_and_pools_are_removed_when_empty() {
    let env = Env::new().await;
    env.cluster(0).await;
    let e = env
        .admin(AdminRequest::RemoveProtectionDomain { pd: by("pd1") })
        .await
        .unwrap_err();
    assert!(e.contains("still has 1 storage pool(s)"), "{e}");
    env.ok(AdminRequest::RemoveStoragePool {
        pd: by("pd1"),
        pool: by("pool1"),
    })
    .await;
    env.ok(AdminRequest::RemoveProtectionDomain { pd: by("pd1") })
        .await;
    let AdminReply::Cluster(c) = env.ok(AdminRequest::QueryCluster).await else {
        panic!()
    };
    assert_eq!((c.protection_domains, c.storage_pools), (0, 0));
}

const IQN: &str = "iqn.1998-01.com.vmware:svrsan2011-4f2a";
const SECRET: &str = "initiator-secret";

fn chap() -> Chap {
    Chap {
        username: "svrsan2011".into(),
        secret: SECRET.into(),
        mutual: Some(("dreadnought".into(), "target-secret!".into())),
    }
}

fn add_initiator(name: &str, iqn: &str, chap: Option<Chap>) -> AdminRequest {
    AdminRequest::AddScsiInitiator {
        name: name.into(),
        iqn: iqn.into(),
        chap,
    }
}

fn map_to(volume: &str, initiator: &str, lun: Option<u64>, access: AccessMode) -> AdminRequest {
    AdminRequest::MapVolumeToScsiInitiator {
        volume: by(volume),
        initiator: by(initiator),
        lun,
        access,
    }
}

#[tokio::test]
async fn initiators_are_registered_mapped_and_seen_by_every_gateway() {
    let env = Env::new().await;
    env.cluster(2).await;
    let vol = env.volume("awsvol01", 4, true).await;
    env.volume("awsvol02", 4, true).await;
    let (gw1, gw2) = (env.register("gw1").await, env.register("gw2").await);
    let g1 = env.view(gw1).await.generation;

    // A watcher on the other gateway wakes when an initiator appears.
    let addr = env.mdm.addr.to_string();
    let since = env.view(gw2).await.generation;
    let watcher = tokio::spawn(async move {
        let req = MdmRequest::WatchMappings { sdc_id: gw2, since };
        let r: MdmResponse = frame::call(&addr, &req, Duration::from_secs(30))
            .await
            .unwrap();
        r
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let AdminReply::Created { kind, id, name } = env
        .ok(add_initiator(
            "svrsan2011",
            "IQN.1998-01.com.vmware:svrsan2011-4F2A",
            Some(chap()),
        ))
        .await
    else {
        panic!()
    };
    assert_eq!(
        (kind.as_str(), name.as_str()),
        ("SCSI initiator", "svrsan2011")
    );
    let MdmReply::Mappings(woke) = watcher.await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(woke.initiators[0].iqn, IQN);

    let e = env
        .admin(add_initiator("other", IQN, None))
        .await
        .unwrap_err();
    assert!(
        e.contains("already registered as SCSI initiator svrsan2011"),
        "{e}"
    );
    let text = env
        .done(map_to(
            "awsvol01",
            "svrsan2011",
            None,
            AccessMode::ReadWrite,
        ))
        .await;
    assert_eq!(
        text,
        "Successfully mapped volume awsvol01 to SCSI initiator svrsan2011 as LUN 0 (ReadWrite)"
    );
    let text = env
        .done(map_to(
            "awsvol02",
            "svrsan2011",
            Some(9),
            AccessMode::ReadOnly,
        ))
        .await;
    assert!(text.ends_with("as LUN 9 (ReadOnly)"), "{text}");
    let e = env
        .admin(map_to(
            "awsvol01",
            "svrsan2011",
            None,
            AccessMode::ReadWrite,
        ))
        .await
        .unwrap_err();
    assert!(
        e.contains("already mapped to SCSI initiator svrsan2011 as LUN 0"),
        "{e}"
    );

    let AdminReply::ScsiInitiator(info) = env
        .ok(AdminRequest::QueryScsiInitiator {
            initiator: By::Id(id),
        })
        .await
    else {
        panic!()
    };
    assert_eq!((info.chap, info.iqn.as_str()), (ChapMode::Mutual, IQN));
    let luns: Vec<(u64, &str)> = info
        .luns
        .iter()
        .map(|l| (l.lun, l.volume_name.as_str()))
        .collect();
    assert_eq!(luns, [(0, "awsvol01"), (9, "awsvol02")]);
    let reply = env.ok(AdminRequest::QueryAllScsiInitiators).await;
    assert!(!serde_json::to_string(&reply).unwrap().contains(SECRET));

    for gw in [gw1, gw2] {
        let view = env.view(gw).await;
        assert!(view.generation > g1);
        let vols: Vec<(&str, Option<u64>)> = view
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.lun))
            .collect();
        assert_eq!(vols, [("awsvol01", None), ("awsvol02", None)]);
        assert_eq!(view.initiators[0].chap, Some(chap()));
        assert_eq!(view.initiators[0].luns[0], (0, vol, AccessMode::ReadWrite));
    }

    let e = env
        .admin(AdminRequest::RemoveVolume {
            volume: by("awsvol01"),
        })
        .await
        .unwrap_err();
    assert!(
        e.contains("unmap it first with --unmap_volume_from_scsi_initiator"),
        "{e}"
    );
    let text = env
        .done(AdminRequest::UnmapVolumeFromScsiInitiator {
            volume: by("awsvol01"),
            initiator: by("svrsan2011"),
        })
        .await;
    assert_eq!(
        text,
        "Successfully unmapped volume awsvol01 (LUN 0) from SCSI initiator svrsan2011"
    );
    env.ok(AdminRequest::RemoveVolume {
        volume: by("awsvol01"),
    })
    .await;
    let text = env
        .done(AdminRequest::SetScsiInitiatorChap {
            initiator: by("svrsan2011"),
            chap: None,
        })
        .await;
    assert_eq!(
        text,
        "Successfully cleared CHAP for SCSI initiator svrsan2011"
    );
    let text = env
        .done(AdminRequest::RenameScsiInitiator {
            initiator: by("svrsan2011"),
            new_name: "esx1".into(),
        })
        .await;
    assert_eq!(
        text,
        "Successfully renamed SCSI initiator svrsan2011 to esx1"
    );
    let text = env
        .done(AdminRequest::RemoveScsiInitiator {
            initiator: by("esx1"),
        })
        .await;
    assert_eq!(
        text,
        format!("Successfully removed SCSI initiator esx1 ({IQN}) and its 1 volume mapping(s)")
    );
    let view = env.view(gw1).await;
    assert!(view.volumes.is_empty() && view.initiators.is_empty());
}

#[tokio::test]
async fn a_map_is_applied_whole_or_not_at_all_and_its_export_changes_nothing() {
    let env = Env::new().await;
    env.cluster(2).await;
    env.volume("awsvol01", 4, true).await;
    env.volume("awsvol02", 4, true).await;
    let gw = env.register("gw1").await;
    env.ok(add_initiator("old", "eui.02004567A425678D", None))
        .await;
    let entry = |volume: &str, lun| MapEntry {
        volume: volume.into(),
        lun,
        access: AccessMode::ReadWrite,
    };
    let mut map = InitiatorMap {
        initiators: vec![MapInitiator {
            name: "svrsan2011".into(),
            iqn: IQN.into(),
            chap: MapChap::Set(chap()),
            mappings: vec![entry("awsvol01", None), entry("awsvol02", Some(5))],
        }],
    };
    let state_file = env._dir.as_ref().unwrap().path().join("mdm-state.json");
    let before = std::fs::read(&state_file).unwrap();
    let g = env.view(gw).await.generation;
    let mut bad = map.clone();
    bad.initiators[0].mappings.push(entry("nope", None));
    let e = env
        .admin(AdminRequest::ApplyInitiatorMap(bad))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        "initiator map: SCSI initiator svrsan2011: volume nope does not exist; list them \
         with --query_all_volumes"
    );
    assert_eq!(std::fs::read(&state_file).unwrap(), before, "nothing saved");
    assert_eq!(env.view(gw).await.generation, g);

    let AdminReply::MapApplied(lines) = env.ok(AdminRequest::ApplyInitiatorMap(map.clone())).await
    else {
        panic!()
    };
    assert_eq!(
        lines,
        [
            "removed SCSI initiator old (eui.02004567a425678d)".to_string(),
            format!("added SCSI initiator svrsan2011 ({IQN})"),
            "set CHAP (mutual) for svrsan2011".into(),
            "mapped awsvol01 to svrsan2011 as LUN 0 (ReadWrite)".into(),
            "mapped awsvol02 to svrsan2011 as LUN 5 (ReadWrite)".into(),
        ]
    );
    let g = env.view(gw).await.generation;
    let exported = env.export().await;
    assert_eq!(exported.initiators[0].chap, MapChap::Keep);
    assert!(!serde_json::to_string(&exported).unwrap().contains(SECRET));
    let saved = std::fs::read(&state_file).unwrap();
    let AdminReply::MapApplied(lines) = env.ok(AdminRequest::ApplyInitiatorMap(exported)).await
    else {
        panic!()
    };
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(std::fs::read(&state_file).unwrap(), saved, "no commit");
    assert_eq!(env.view(gw).await.generation, g);
    assert_eq!(env.view(gw).await.initiators[0].chap, Some(chap()), "kept");

    map.initiators[0].mappings.reverse();
    map.initiators[0].mappings[1].lun = None;
    let AdminReply::MapApplied(lines) = env.ok(AdminRequest::ApplyInitiatorMap(map)).await else {
        panic!()
    };
    assert!(lines.is_empty(), "the map meant the same: {lines:?}");
}

#[test]
fn initiators_survive_a_restart() {
    let fake = Arc::new(FakeSds::default());
    for a in SDS {
        fake.node(a, 1000);
    }
    let dir = tempfile::tempdir().unwrap();
    let env = |fake: &Arc<FakeSds>| {
        let fake = fake.clone();
        let opts = opts(&dir);
        async move {
            Env {
                mdm: start_with(opts, fake.clone()).await.unwrap(),
                fake,
                _dir: None,
            }
        }
    };
    let (map, view) = run(async {
        let env = env(&fake).await;
        env.cluster(2).await;
        env.volume("v", 4, true).await;
        let gw = env.register("gw").await;
        env.ok(add_initiator("svrsan2011", IQN, Some(chap()))).await;
        env.ok(map_to("v", "svrsan2011", Some(3), AccessMode::ReadOnly))
            .await;
        (env.export().await, env.view(gw).await)
    });
    run(async {
        let env = env(&fake).await;
        assert_eq!(env.export().await, map);
        let gw = env.register("gw").await;
        assert_eq!(env.view(gw).await, view, "CHAP secrets and generation too");
        let e = env
            .admin(AdminRequest::RemoveVolume { volume: by("v") })
            .await
            .unwrap_err();
        assert!(e.contains("mapped to SCSI initiator svrsan2011"), "{e}");
    });
}

/// Each run on its own runtime; dropping it ends the MDM like a kill.
fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn the_cluster_survives_a_restart() {
    let fake = Arc::new(FakeSds::default());
    for a in SDS {
        fake.node(a, 1000);
    }
    let dir = tempfile::tempdir().unwrap();
    let (system_id, vol) = run(async {
        let env = Env {
            mdm: start_with(opts(&dir), fake.clone()).await.unwrap(),
            fake: fake.clone(),
            _dir: None,
        };
        env.cluster(2).await;
        let vol = env.volume("v", 16, false).await;
        env.call(MdmRequest::RegisterSdc {
            name: "gw".into(),
            ip: "10.1.1.1".into(),
        })
        .await
        .unwrap();
        env.ok(AdminRequest::MapVolumeToSdc {
            volume: by("v"),
            sdc: by("gw"),
        })
        .await;
        (env.mdm.system_id, vol)
    });
    let layout = |env: &Env| {
        let env_addr = env.mdm.addr.to_string();
        async move {
            let req = MdmRequest::GetLayout { volume_id: vol };
            let r: MdmResponse = frame::call(&env_addr, &req, Duration::from_secs(5))
                .await
                .unwrap();
            r.unwrap()
        }
    };
    let before = run(async {
        let mdm = start_with(opts(&dir), fake.clone()).await.unwrap();
        assert_eq!(mdm.system_id, system_id);
        let env = Env {
            mdm,
            fake: fake.clone(),
            _dir: None,
        };
        let AdminReply::Volume1(v) = env.ok(AdminRequest::QueryVolume { volume: by("v") }).await
        else {
            panic!()
        };
        assert_eq!(v.mapped_sdc.len(), 1);
        assert_eq!(v.size_bytes, 16 * CHUNK_SIZE);
        layout(&env).await
    });
    let after = run(async {
        let env = Env {
            mdm: start_with(opts(&dir), fake.clone()).await.unwrap(),
            fake: fake.clone(),
            _dir: None,
        };
        layout(&env).await
    });
    assert_eq!(before, after);

    std::fs::write(dir.path().join("mdm-state.json"), b"garbage").unwrap();
    let e = run(start_with(opts(&dir), fake.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is damaged"), "{e}");
}

/// The pool as queried, waiting (bounded) until `done` holds.
async fn pool_until(
    env: &Env,
    what: &str,
    done: impl Fn(&crate::cluster::api::PoolInfo) -> bool,
) -> crate::cluster::api::PoolInfo {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = env.pool().await;
        if done(&p) {
            return p;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {p:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn layout(env: &Env, volume: u64) -> crate::cluster::api::Layout {
    match env
        .call(MdmRequest::GetLayout { volume_id: volume })
        .await
        .unwrap()
    {
        MdmReply::Layout(l) => l,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_dead_sds_is_rebuilt_around_and_a_removed_one_drained() {
    let env = Env::new().await;
    env.cluster(4).await;
    let v = env.volume("v", 40, false).await;
    let before = layout(&env, v).await;
    let dead = before
        .devices
        .iter()
        .find(|d| d.addr == at(SDS[0]))
        .unwrap()
        .sds_id;
    env.fake.down(SDS[0]);
    let verdict = env
        .call(MdmRequest::ReportSdsFailure {
            sds_id: dead,
            reason: "connection refused".into(),
        })
        .await
        .unwrap();
    assert_eq!(verdict, MdmReply::SdsVerdict { down: true });
    let after = layout(&env, v).await;
    assert!(after.epoch > before.epoch);
    let p = pool_until(&env, "rebuild", |p| {
        p.health.degraded_bytes == 0 && p.rebuild.chunks_left == 0
    })
    .await;
    assert_eq!(p.health.protected_bytes, 40 * CHUNK_SIZE);
    assert!(p.rebuild.bytes_done > 0);
    let healed = layout(&env, v).await;
    for [a, b] in &healed.chunks {
        for i in [a, b] {
            let d = &healed.devices[*i as usize];
            assert_ne!(d.sds_id, dead, "a copy is still on the dead SDS");
        }
        assert_ne!(
            healed.devices[*a as usize].sds_id,
            healed.devices[*b as usize].sds_id
        );
    }
    let AdminReply::AllSds(all) = env.ok(AdminRequest::QueryAllSds).await else {
        panic!()
    };
    assert_eq!(
        all.iter().find(|s| s.id == dead).unwrap().state,
        SdsState::Down
    );
    let AdminReply::Cluster(c) = env.ok(AdminRequest::QueryCluster).await else {
        panic!()
    };
    assert!(
        c.events.iter().any(|e| e.contains("is down")),
        "{:?}",
        c.events
    );

    // Draining a healthy SDS moves its copies, then forgets it.
    let text = env.done(AdminRequest::RemoveSds { sds: by("sds2") }).await;
    assert!(text.contains("being removed"), "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let AdminReply::AllSds(all) = env.ok(AdminRequest::QueryAllSds).await else {
            panic!()
        };
        if all.iter().all(|s| s.name != "sds2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sds2 never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = layout(&env, v).await;
    assert!(l.devices.iter().all(|d| d.addr != at(SDS[1])));
    // Two SDS are left: a third removal cannot keep two copies.
    let e = env
        .admin(AdminRequest::RemoveSds { sds: by("sds3") })
        .await
        .unwrap_err();
    assert!(e.contains("need two"), "{e}");
}

fn at(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

#[tokio::test]
async fn a_failed_device_is_rebuilt_around_then_removed() {
    let env = Env::new().await;
    env.cluster(3).await;
    let v = env.volume("v", 30, false).await;
    let before = layout(&env, v).await;
    let victim = before.devices[0].clone();
    let AdminReply::Sds(owner) = env
        .ok(AdminRequest::QuerySds {
            sds: By::Id(victim.sds_id),
        })
        .await
    else {
        panic!()
    };
    // Its SDS says so in a heartbeat; the SDS itself stays up.
    let beat = MdmRequest::SdsHeartbeat {
        sds_id: victim.sds_id,
        system_id: env.mdm.system_id,
        addr: victim.addr,
        failed_devices: vec![victim.device_id],
    };
    assert!(matches!(env.call(beat).await, Ok(MdmReply::Lease { .. })));
    let l = layout(&env, v).await;
    assert!(l.epoch > before.epoch);
    pool_until(&env, "rebuild", |p| {
        p.health.degraded_bytes == 0 && p.rebuild.chunks_left == 0
    })
    .await;
    let l = layout(&env, v).await;
    for pair in &l.chunks {
        for &i in pair {
            assert_ne!(l.devices[i as usize].device_id, victim.device_id);
        }
    }
    let AdminReply::Sds(s) = env
        .ok(AdminRequest::QuerySds {
            sds: By::Id(victim.sds_id),
        })
        .await
    else {
        panic!()
    };
    assert!(s.devices[0].failed);
    assert_eq!(s.state, SdsState::Connected);
    let text = env
        .done(AdminRequest::RemoveSdsDevice {
            sds: By::Name(owner.name.clone()),
            device: "/dev/sdb".into(),
        })
        .await;
    assert!(text.contains("being removed"), "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let AdminReply::Sds(s) = env
            .ok(AdminRequest::QuerySds {
                sds: By::Id(victim.sds_id),
            })
            .await
        else {
            panic!()
        };
        if s.devices.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "device never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = env
        .admin(AdminRequest::RemoveSdsDevice {
            sds: By::Name(owner.name),
            device: "/dev/nope".into(),
        })
        .await
        .unwrap_err();
    assert!(e.contains("has no device named /dev/nope"), "{e}");
}

/// A single-copy pool keeps one copy per chunk through a failure and a return (nothing
/// is rebuilt or copied back), and `--remove_sds` moves its only copies: each stays
/// primary until its new copy is whole, and is fenced before it hands over.
#[tokio::test]
async fn a_single_copy_pool_fails_returns_and_drains_without_a_second_copy() {
    let env = Env::new().await;
    env.cluster_as(3, Protection::SingleCopy).await;
    let v = env.volume("v", 30, false).await;
    let p = env.pool().await;
    assert_eq!(p.protection, Protection::SingleCopy);
    assert_eq!(p.usable_capacity_bytes, p.raw_capacity_bytes);
    assert_eq!(p.free_for_thick_bytes, (3000 - 30) * CHUNK_SIZE);
    assert_eq!(p.health.unprotected_bytes, 30 * CHUNK_SIZE);
    let held = |n: usize| -> usize { SDS[..n].iter().map(|a| env.fake.chunks(a, v)).sum() };
    assert_eq!(held(3), 30, "one thick slot per chunk");

    // sds3 fails: its chunks are failed, nothing is degraded or rebuilt.
    let third = layout(&env, v)
        .await
        .devices
        .iter()
        .find(|d| d.addr == at(SDS[2]))
        .unwrap()
        .sds_id;
    env.fake.fail(SDS[2], "Ping", "connection refused");
    let verdict = env
        .call(MdmRequest::ReportSdsFailure {
            sds_id: third,
            reason: "connection refused".into(),
        })
        .await
        .unwrap();
    assert_eq!(verdict, MdmReply::SdsVerdict { down: true });
    let on_third = env.fake.chunks(SDS[2], v) as u64 * CHUNK_SIZE;
    let p = env.pool().await;
    assert_eq!(p.health.failed_bytes, on_third);
    assert_eq!(p.health.degraded_bytes, 0);
    assert_eq!(p.rebuild.chunks_left, 0);
    env.fake.heal(SDS[2]);
    let beat = MdmRequest::SdsHeartbeat {
        sds_id: third,
        system_id: env.mdm.system_id,
        addr: at(SDS[2]),
        failed_devices: vec![],
    };
    assert!(matches!(env.call(beat).await, Ok(MdmReply::Lease { .. })));
    let p = pool_until(&env, "sds3 back", |p| p.health.failed_bytes == 0).await;
    assert_eq!(p.health.unprotected_bytes, 30 * CHUNK_SIZE);
    assert_eq!(p.rebuild.bytes_done, 0, "nothing was copied back");
    assert_eq!(held(3), 30);

    // sds1 leaves: its copies move to the others, one copy per chunk throughout.
    let first_sds = layout(&env, v)
        .await
        .devices
        .iter()
        .find(|d| d.addr == at(SDS[0]))
        .unwrap()
        .sds_id;
    let moving = env.fake.chunks(SDS[0], v);
    assert!(moving > 0);
    env.done(AdminRequest::RemoveSds { sds: by("sds1") }).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let AdminReply::AllSds(all) = env.ok(AdminRequest::QueryAllSds).await else {
            panic!()
        };
        if all.iter().all(|s| s.id != first_sds) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sds1 never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = layout(&env, v).await;
    for &[p, s] in &l.chunks {
        assert_eq!(s, crate::cluster::api::NO_COPY);
        assert_ne!(l.devices[p as usize].sds_id, first_sds);
    }
    let fenced = env
        .fake
        .received(SDS[0])
        .into_iter()
        .filter(|m| matches!(m, SdsControl::Dirty { volume, .. } if *volume == v))
        .count();
    assert!(fenced >= 1, "fenced before the handover");
    let p = pool_until(&env, "the sweep", |_| {
        SDS[1..3]
            .iter()
            .map(|a| env.fake.chunks(a, v))
            .sum::<usize>()
            == 30
    })
    .await;
    assert_eq!(p.health.unprotected_bytes, 30 * CHUNK_SIZE);
    assert_eq!(p.rebuild.bytes_done, 0);
    assert_eq!(p.rebalance.bytes_done, moving as u64 * CHUNK_SIZE);
    // One SDS is enough for one copy; none is not.
    env.done(AdminRequest::RemoveSds { sds: by("sds2") }).await;
    pool_until(&env, "sds2 drained", |p| p.sds == 1).await;
    let e = env
        .admin(AdminRequest::RemoveSds { sds: by("sds3") })
        .await
        .unwrap_err();
    assert!(e.contains("would keep no running SDS"), "{e}");
}

/// A failed device that held a single-copy pool's chunks: their data is lost, and the
/// messages say so and how to go on (remove the volumes, then the device), not to
/// bring the device back.
#[tokio::test]
async fn a_failed_device_with_lost_chunks_goes_once_their_volumes_are_removed() {
    let env = Env::new().await;
    env.cluster_as(3, Protection::SingleCopy).await;
    let v = env.volume("v", 30, true).await;
    let victim = layout(&env, v)
        .await
        .devices
        .into_iter()
        .find(|d| d.addr == at(SDS[0]))
        .unwrap();
    let beat = MdmRequest::SdsHeartbeat {
        sds_id: victim.sds_id,
        system_id: env.mdm.system_id,
        addr: victim.addr,
        failed_devices: vec![victim.device_id],
    };
    assert!(matches!(env.call(beat).await, Ok(MdmReply::Lease { .. })));
    let AdminReply::Cluster(c) = env.ok(AdminRequest::QueryCluster).await else {
        panic!()
    };
    let event = c.events.iter().find(|e| e.contains("failed I/O")).unwrap();
    assert!(
        event.ends_with("nothing to rebuild; the data of those is lost: remove volume v (--remove_volume, after unmapping), then remove the device (--remove_sds_device)"),
        "{event}"
    );
    let device = || AdminRequest::RemoveSdsDevice {
        sds: by("sds1"),
        device: "/dev/sdb".into(),
    };
    let e = env.admin(device()).await.unwrap_err();
    assert!(
        e.contains("device /dev/sdb of SDS sds1 cannot be removed: ")
            && e.contains("chunks had their only copy on /dev/sdb, which failed, and their data is lost; remove volume v (--remove_volume, after unmapping), then remove device /dev/sdb of SDS sds1 again"),
        "{e}"
    );
    let e = env
        .admin(AdminRequest::RemoveSds { sds: by("sds1") })
        .await
        .unwrap_err();
    assert!(
        e.contains("SDS sds1 cannot be removed: ")
            && e.contains("their data is lost; remove volume v"),
        "{e}"
    );
    env.done(AdminRequest::RemoveVolume { volume: by("v") })
        .await;
    let text = env.done(device()).await;
    assert!(text.contains("being removed"), "{text}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let AdminReply::Sds(s) = env.ok(AdminRequest::QuerySds { sds: by("sds1") }).await else {
            panic!()
        };
        if s.devices.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "device never left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
