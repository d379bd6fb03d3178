//! End-to-end tests: real SDS on loopback with sparse device files, driven through
//! `ChunkClient` as the MDM and a gateway would, each heartbeating to a small fake MDM
//! (`FakeMdm`) that grants leases.

use super::testutil::{until_served, FakeMdm};
use super::*;
use crate::backend::SgList;
use crate::cluster::api::{
    ClaimDevice, MdmReply, MdmRequest, MdmResponse, SdsControl, SdsControlReply, SdsInventory,
    CHUNK_SIZE,
};
use crate::cluster::chunk::wire::{
    AtomicKind, Op, RequestHeader, ResponseHeader, Status, FLAG_FORWARDED, FLAG_IN_ARENA,
};
use crate::cluster::chunk::{ChunkClient, ChunkRef, Mirror, Secondary};
use crate::cluster::frame;
use bytes::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SYSTEM: u64 = 0x5157;
const MIB: u64 = 1 << 20;

fn fenced(e: ChunkError) -> String {
    match e {
        ChunkError::Fenced(m) => m,
        other => panic!("expected fencing, got {other:?}"),
    }
}

async fn dirty(c: &ChunkClient, volume: u64) -> Vec<u64> {
    match c
        .control(&SdsControl::Dirty { volume, epoch: 0 })
        .await
        .unwrap()
    {
        SdsControlReply::Dirty(v) => v,
        other => panic!("{other:?}"),
    }
}

/// A write as a primary forwards it to its mirror (FLAG_FORWARDED, no mirror).
async fn forwarded_write(c: &ChunkClient, a: ChunkRef, offset: u32, data: Vec<u8>) {
    let mut h = RequestHeader::new(Op::Write, 0);
    h.at = a;
    h.offset = offset;
    h.length = data.len() as u32;
    h.payload_len = h.length;
    h.flags = FLAG_FORWARDED;
    c.send(h, &SgList::from(data)).await.unwrap();
}

fn device_file(dir: &TempDir, name: &str, size: u64) -> String {
    let p = dir.path().join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p.to_str().unwrap().to_string()
}

async fn start_at(data_dir: &Path, mdm: Option<String>) -> SdsHandle {
    start(SdsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        mdm,
        local_socket: true,
    })
    .await
    .unwrap()
}

fn claim_msg(system_id: u64, sds_id: u64, mdm_port: u16, devices: &[(u64, &str)]) -> SdsControl {
    SdsControl::Claim {
        system_id,
        sds_id,
        sds_name: format!("sds{sds_id}"),
        mdm_port,
        devices: devices
            .iter()
            .map(|&(device_id, path)| ClaimDevice {
                device_id,
                path: path.to_string(),
                pool_id: 77,
            })
            .collect(),
    }
}

/// A claimed SDS with one 64 MiB device (id `sds_id * 10`), holding a lease from its
/// own fake MDM.
struct Node {
    dir: TempDir,
    handle: SdsHandle,
    client: ChunkClient,
    device: u64,
    path: String,
    mdm: FakeMdm,
}

async fn node(sds_id: u64) -> Node {
    node_with_lease(sds_id, 60_000).await
}

async fn node_with_lease(sds_id: u64, lease_ms: u64) -> Node {
    let mdm = FakeMdm::start(lease_ms).await;
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "dev0", 64 * MIB);
    let handle = start_at(&dir.path().join("data"), None).await;
    let client = ChunkClient::new(handle.addr);
    let device = sds_id * 10;
    let reply = client
        .control(&claim_msg(SYSTEM, sds_id, mdm.port, &[(device, &path)]))
        .await
        .unwrap();
    match reply {
        SdsControlReply::Claimed { devices } => {
            assert_eq!(devices.len(), 1);
            assert_eq!(devices[0].device_id, device);
            assert_eq!(devices[0].capacity_bytes, 64 * MIB);
            assert_eq!(devices[0].slots, 63);
        }
        other => panic!("{other:?}"),
    }
    until_served(&client, device).await;
    Node {
        dir,
        handle,
        client,
        device,
        path,
        mdm,
    }
}

fn at(volume: u64, chunk: u64, device: u64, epoch: u64) -> ChunkRef {
    ChunkRef {
        volume,
        chunk,
        device,
        epoch,
    }
}

async fn inventory(c: &ChunkClient) -> SdsInventory {
    match c.control(&SdsControl::Inventory).await.unwrap() {
        SdsControlReply::Inventory(i) => i,
        other => panic!("{other:?}"),
    }
}

fn refused(e: ChunkError) -> String {
    match e {
        ChunkError::Refused(m) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn write_read_status_flush_and_inventory() {
    let n = node(1).await;
    let c = &n.client;
    let a = at(5, 3, n.device, 1);
    assert_eq!(c.read(a, 0, 4096).await.unwrap(), vec![0u8; 4096]);
    assert_eq!(
        c.status(a, 100).await.unwrap(),
        (false, CHUNK_SIZE as u32 - 100)
    );

    let mut sg = SgList::new();
    sg.push(Bytes::from(vec![0xAA; 2048]));
    sg.push(Bytes::from(vec![0xBB; 2048]));
    c.write(a, 8192, sg, true, Secondary::Missing)
        .await
        .unwrap();
    let r = c.read(a, 4096, 3 * 4096).await.unwrap();
    assert!(r[..4096].iter().all(|&b| b == 0));
    assert!(r[4096..6144].iter().all(|&b| b == 0xAA));
    assert!(r[6144..8192].iter().all(|&b| b == 0xBB));
    assert!(r[8192..].iter().all(|&b| b == 0));
    assert_eq!(c.status(a, 0).await.unwrap(), (false, 8192));
    let (mapped, run) = c.status(a, 8192).await.unwrap();
    assert!(mapped && run >= 4096, "{run}");
    // StatusMany answers each chunk as a Status at offset 0 does, in order; a chunk
    // never written is one deallocated run.
    assert_eq!(
        c.status_many(5, 1, &[(4, n.device), (3, n.device)])
            .await
            .unwrap(),
        vec![(false, CHUNK_SIZE as u32), (false, 8192)]
    );
    // An unknown device fails the whole request, naming it.
    let e = refused(
        c.status_many(5, 1, &[(3, n.device), (3, 999)])
            .await
            .unwrap_err(),
    );
    assert!(e.contains("999") || e.contains("3e7"), "{e}");
    c.flush().await.unwrap();

    // Zeroing without unmap keeps the chunk allocated.
    c.write_zeroes(a, 8192, 4096, false, Secondary::Missing)
        .await
        .unwrap();
    assert_eq!(c.read(a, 8192, 4096).await.unwrap(), vec![0u8; 4096]);
    let inv = inventory(c).await;
    assert_eq!((inv.system_id, inv.sds_id), (SYSTEM, 1));
    assert_eq!(inv.devices[0].chunks, vec![(5, 3)]);
    assert_eq!(inv.devices[0].slots, 63);
    // Without a mirror these were degraded writes: the chunk is dirty, and unmapping
    // it whole punches it but keeps the slot, which carries the mark.
    assert_eq!(dirty(c, 5).await, vec![3]);
    c.write_zeroes(a, 0, CHUNK_SIZE as u32, true, Secondary::Missing)
        .await
        .unwrap();
    assert_eq!(inventory(c).await.devices[0].chunks, vec![(5, 3)]);
    assert_eq!(c.status(a, 0).await.unwrap(), (false, CHUNK_SIZE as u32));
    // The MDM frees copies it no longer needs; unknown ones are skipped.
    let free = SdsControl::FreeChunks {
        chunks: vec![(5, 3, n.device), (5, 9, n.device), (5, 3, 999)],
    };
    assert_eq!(c.control(&free).await.unwrap(), SdsControlReply::Ok);
    assert!(inventory(c).await.devices[0].chunks.is_empty());
    assert_eq!(dirty(c, 5).await, Vec::<u64>::new());
    match c.control(&SdsControl::Ping).await.unwrap() {
        SdsControlReply::Pong { system_id, sds_id } => assert_eq!((system_id, sds_id), (SYSTEM, 1)),
        other => panic!("{other:?}"),
    }
    let e = c.read(at(5, 3, 999, 1), 0, 1).await.unwrap_err();
    assert!(refused(e).contains("not on this SDS"));
}

#[tokio::test]
async fn pipelined_requests_on_few_connections() {
    let n = node(1).await;
    let c = Arc::new(ChunkClient::new(n.handle.addr));
    let dev = n.device;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64u64 {
        let c = c.clone();
        set.spawn(async move {
            let a = at(1, i % 8, dev, 1);
            let data = vec![i as u8; 4096];
            c.write(
                a,
                (i / 8) as u32 * 4096,
                data.into(),
                false,
                Secondary::Missing,
            )
            .await
            .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    for i in 0..64u64 {
        let c = c.clone();
        set.spawn(async move {
            let a = at(1, i % 8, dev, 1);
            let r = c.read(a, (i / 8) as u32 * 4096, 4096).await.unwrap();
            assert!(r.iter().all(|&b| b == i as u8), "request {i}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert_eq!(inventory(&c).await.devices[0].chunks.len(), 8);
}

#[tokio::test]
async fn mirrored_writes_reach_both_copies() {
    let p = node(1).await;
    let s = node(2).await;
    let peers = SdsControl::Peers {
        peers: vec![(2, s.handle.addr)],
    };
    assert_eq!(p.client.control(&peers).await.unwrap(), SdsControlReply::Ok);
    let m = Secondary::Mirror(Mirror {
        sds: 2,
        device: s.device,
    });
    let a = at(9, 0, p.device, 3);
    p.client
        .write(a, 512, vec![0x5A; 1024].into(), true, m)
        .await
        .unwrap();
    let on_secondary = at(9, 0, s.device, 3);
    let r = s.client.read(on_secondary, 512, 1024).await.unwrap();
    assert_eq!(r, vec![0x5A; 1024]);
    p.client.write_zeroes(a, 512, 512, false, m).await.unwrap();
    let r = s.client.read(on_secondary, 512, 1024).await.unwrap();
    assert!(r[..512].iter().all(|&b| b == 0) && r[512..].iter().all(|&b| b == 0x5A));
    // The forwarded request carried the epoch: the secondary now fences older ones.
    let e = s
        .client
        .read(at(9, 0, s.device, 2), 0, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ChunkError::StaleEpoch { current: 3, .. }),
        "{e}"
    );

    // Unknown peer: the local copy is written, the reply is a mirror failure.
    let e = p
        .client
        .write(
            at(9, 1, p.device, 3),
            0,
            vec![1u8; 512].into(),
            false,
            Secondary::Mirror(Mirror { sds: 42, device: 1 }),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Mirror { sds: 42, .. }), "{e}");
    assert_eq!(
        p.client.read(at(9, 1, p.device, 3), 0, 512).await.unwrap(),
        vec![1u8; 512]
    );

    // A dead secondary is a mirror failure too.
    s.handle.stop();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let e = p
        .client
        .write(a, 0, vec![2u8; 512].into(), false, m)
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Mirror { sds: 2, .. }), "{e}");
}

#[tokio::test]
async fn a_full_device_answers_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "small", 3 * MIB);
    let h = start_at(&dir.path().join("data"), None).await;
    let c = ChunkClient::new(h.addr);
    let mdm = FakeMdm::start(60_000).await;
    c.control(&claim_msg(SYSTEM, 1, mdm.port, &[(10, &path)]))
        .await
        .unwrap();
    until_served(&c, 10).await;
    let one = || SgList::from(vec![1u8; 512]);
    c.write(at(1, 0, 10, 1), 0, one(), false, Secondary::Missing)
        .await
        .unwrap();
    c.write(at(1, 1, 10, 1), 0, one(), false, Secondary::Missing)
        .await
        .unwrap();
    let e = c
        .write(at(1, 2, 10, 1), 0, one(), false, Secondary::Missing)
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::NoSpace), "{e}");
    // Writing zeros to an unallocated chunk needs no slot.
    c.write_zeroes(at(1, 2, 10, 1), 0, 512, false, Secondary::Missing)
        .await
        .unwrap();
    let thick = SdsControl::AllocateThick {
        volume: 2,
        chunks: vec![(0, 10)],
    };
    assert!(refused(c.control(&thick).await.unwrap_err()).contains("needs 1 more"));

    let free = SdsControl::FreeChunks {
        chunks: vec![(1, 0, 10)],
    };
    assert_eq!(c.control(&free).await.unwrap(), SdsControlReply::Ok);
    assert_eq!(c.control(&thick).await.unwrap(), SdsControlReply::Ok);
    assert_eq!(c.control(&thick).await.unwrap(), SdsControlReply::Ok);
    let inv = inventory(&c).await;
    assert_eq!(inv.devices[0].chunks, vec![(1, 1), (2, 0)]);
    let free = SdsControl::FreeVolume { volume: 1 };
    assert_eq!(c.control(&free).await.unwrap(), SdsControlReply::Ok);
    assert_eq!(inventory(&c).await.devices[0].chunks, vec![(2, 0)]);
    assert_eq!(
        c.read(at(1, 1, 10, 1), 0, 512).await.unwrap(),
        vec![0u8; 512]
    );
}

#[tokio::test]
async fn older_epochs_are_refused() {
    let n = node(1).await;
    let c = &n.client;
    c.write(
        at(1, 0, n.device, 5),
        0,
        vec![1u8; 512].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    let e = c.read(at(1, 0, n.device, 4), 0, 512).await.unwrap_err();
    assert!(
        matches!(
            e,
            ChunkError::StaleEpoch {
                sent: 4,
                current: 5
            }
        ),
        "{e}"
    );
    c.read(at(1, 0, n.device, 6), 0, 512).await.unwrap();
    assert!(c.status(at(1, 0, n.device, 5), 0).await.is_err());
    assert!(matches!(
        c.status_many(1, 5, &[(0, n.device)]).await,
        Err(ChunkError::StaleEpoch { current: 6, .. })
    ));
    // Other volumes have their own epochs.
    c.read(at(2, 0, n.device, 1), 0, 512).await.unwrap();
}

#[tokio::test]
async fn claims_are_checked_before_anything_is_written() {
    let n = node(1).await;
    // Another system's SDS cannot take n's device.
    let other_dir = tempfile::tempdir().unwrap();
    let other = start_at(other_dir.path(), None).await;
    let oc = ChunkClient::new(other.addr);
    let blank = device_file(&other_dir, "blank", 8 * MIB);
    let msg = claim_msg(0xBEEF, 1, 6611, &[(10, &blank), (11, &n.path)]);
    let m = refused(oc.control(&msg).await.unwrap_err());
    assert!(m.contains(&n.path) && m.contains(&fmt_id(SYSTEM)), "{m}");
    // All or nothing: the blank device was left blank and the SDS unclaimed.
    let mut head = [0u8; 8];
    File::open(&blank)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(head, [0u8; 8]);
    let inv = inventory(&oc).await;
    assert_eq!((inv.system_id, inv.devices.len()), (0, 0));

    // Same system, another SDS.
    let msg = claim_msg(SYSTEM, 2, 6611, &[(20, &n.path)]);
    let m = refused(oc.control(&msg).await.unwrap_err());
    assert!(m.contains("already device"), "{m}");

    // Repeating the claim is harmless; a later claim adds devices.
    let again = claim_msg(SYSTEM, 1, n.mdm.port, &[(10, &n.path)]);
    n.client.control(&again).await.unwrap();
    let second = device_file(&n.dir, "dev1", 8 * MIB);
    let more = claim_msg(SYSTEM, 1, n.mdm.port, &[(11, &second)]);
    match n.client.control(&more).await.unwrap() {
        SdsControlReply::Claimed { devices } => assert_eq!(devices[0].slots, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(inventory(&n.client).await.devices.len(), 2);
    // But the SDS belongs to its system and id now.
    let steal = claim_msg(0xBEEF, 1, 6611, &[(12, &blank)]);
    let m = refused(n.client.control(&steal).await.unwrap_err());
    assert!(m.contains("already belongs"), "{m}");
    let dup = claim_msg(SYSTEM, 1, 6611, &[(13, &blank), (13, &blank)]);
    assert!(refused(n.client.control(&dup).await.unwrap_err()).contains("twice"));
}

/// Accepts the SDS's heartbeat connection and reads its first heartbeat, unanswered.
async fn next_heartbeat(mdm: &tokio::net::TcpListener) -> (tokio::net::TcpStream, MdmRequest) {
    let (mut s, _) = mdm.accept().await.unwrap();
    let req: MdmRequest = frame::read(&mut s).await.unwrap().unwrap();
    (s, req)
}

async fn grant(s: &mut tokio::net::TcpStream, epochs: Vec<(u64, u64)>) {
    let lease = MdmReply::Lease {
        lease_ms: 60_000,
        epochs,
    };
    frame::write(s, &MdmResponse::Ok(lease)).await.unwrap();
}

#[tokio::test]
async fn restart_keeps_data_and_serves_only_once_the_mdm_answers() {
    let mdm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mdm_port = mdm.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "dev0", 16 * MIB);
    let data = dir.path().join("data");
    let h = start_at(&data, None).await;
    let c = ChunkClient::new(h.addr);
    c.control(&claim_msg(SYSTEM, 4, mdm_port, &[(40, &path)]))
        .await
        .unwrap();
    // The claim starts the heartbeats at once.
    let (mut first, _) = next_heartbeat(&mdm).await;
    grant(&mut first, Vec::new()).await;
    until_served(&c, 40).await;
    let peers = vec![(5, "127.0.0.1:9".parse().unwrap())];
    c.control(&SdsControl::Peers {
        peers: peers.clone(),
    })
    .await
    .unwrap();
    c.write(
        at(3, 7, 40, 1),
        100,
        vec![9u8; 300].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    h.stop();

    let h = start_at(&data, None).await;
    let (mut s, hello) = next_heartbeat(&mdm).await;
    assert_eq!(
        hello,
        MdmRequest::SdsHeartbeat {
            sds_id: 4,
            system_id: SYSTEM,
            addr: h.addr,
            failed_devices: Vec::new(),
        }
    );
    // Restarted: nothing is served until the MDM answers, but control is.
    let c = ChunkClient::new(h.addr);
    let m = fenced(c.read(at(3, 7, 40, 1), 100, 300).await.unwrap_err());
    assert!(m.contains(&format!("MDM at 127.0.0.1:{mdm_port}")), "{m}");
    c.flush().await.unwrap();
    assert_eq!(inventory(&c).await.devices[0].chunks, vec![(3, 7)]);
    // The lease brings the current epochs: the old layout's epoch is refused.
    grant(&mut s, vec![(3, 2)]).await;
    until_served(&c, 40).await;
    let e = c.read(at(3, 7, 40, 1), 100, 300).await.unwrap_err();
    assert!(
        matches!(e, ChunkError::StaleEpoch { current: 2, .. }),
        "{e}"
    );
    assert_eq!(
        c.read(at(3, 7, 40, 2), 100, 300).await.unwrap(),
        vec![9u8; 300]
    );
    // Heartbeats go on, on the same connection.
    let again: MdmRequest = frame::read(&mut s).await.unwrap().unwrap();
    assert_eq!(again, hello);
    let saved = state::load(&data).unwrap().unwrap();
    assert_eq!(saved.peers, peers);
    assert_eq!(saved.mdm_addr, format!("127.0.0.1:{mdm_port}"));
    h.stop();

    // A device whose header was wiped keeps the SDS from starting.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0u8; 4096], 0)
        .unwrap();
    let e = start(SdsOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data,
        mdm: None,
        local_socket: true,
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(e, SdsError::HeaderChanged { .. }), "{e}");
    assert!(e.to_string().contains(&path));
}

#[tokio::test]
async fn the_mdm_address_can_be_overridden() {
    let mdm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "dev0", 4 * MIB);
    let data = dir.path().join("data");
    let h = start_at(&data, None).await;
    ChunkClient::new(h.addr)
        .control(&claim_msg(SYSTEM, 4, 1, &[(40, &path)]))
        .await
        .unwrap();
    h.stop();
    let h = start_at(&data, Some(mdm.local_addr().unwrap().to_string())).await;
    let (_s, hello) = next_heartbeat(&mdm).await;
    assert!(matches!(hello, MdmRequest::SdsHeartbeat { sds_id: 4, .. }));
    h.stop();
}

#[tokio::test]
async fn a_corrupt_table_entry_keeps_its_slot_out_of_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "dev0", 8 * MIB);
    let data = dir.path().join("data");
    let h = start_at(&data, None).await;
    let c = ChunkClient::new(h.addr);
    let mdm = FakeMdm::start(60_000).await;
    c.control(&claim_msg(SYSTEM, 1, mdm.port, &[(10, &path)]))
        .await
        .unwrap();
    until_served(&c, 10).await;
    for chunk in 0..2 {
        let fill = vec![chunk as u8 + 1; 512];
        c.write(
            at(1, chunk, 10, 1),
            0,
            fill.into(),
            false,
            Secondary::Missing,
        )
        .await
        .unwrap();
    }
    h.stop();
    // Slot 1 holds chunk (1, 1): flip a bit of its table entry.
    let f = File::options().read(true).write(true).open(&path).unwrap();
    let entry = 4096 + 32;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, entry + 3).unwrap();
    f.write_all_at(&[b[0] ^ 1], entry + 3).unwrap();

    let h = start_at(&data, None).await;
    let c = ChunkClient::new(h.addr);
    until_served(&c, 10).await;
    assert_eq!(inventory(&c).await.devices[0].chunks, vec![(1, 0)]);
    assert_eq!(
        c.read(at(1, 1, 10, 1), 0, 512).await.unwrap(),
        vec![0u8; 512]
    );
    for chunk in 2..7 {
        c.write(
            at(1, chunk, 10, 1),
            0,
            vec![0xEE; 512].into(),
            false,
            Secondary::Missing,
        )
        .await
        .unwrap();
    }
    // Seven slots, one corrupt: the device is full and slot 1 kept its old bytes.
    let e = c
        .write(
            at(1, 9, 10, 1),
            0,
            vec![0xEE; 512].into(),
            false,
            Secondary::Missing,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::NoSpace), "{e}");
    let mut raw = [0u8; 512];
    f.read_exact_at(&mut raw, MIB + MIB).unwrap();
    assert_eq!(raw, [2u8; 512]);
    h.stop();
}

#[tokio::test]
async fn a_malformed_request_gets_an_error_and_the_connection_lives_on() {
    let n = node(1).await;
    let mut s = tokio::net::TcpStream::connect(n.handle.addr).await.unwrap();
    let mut bad = RequestHeader::new(Op::Read, 77).encode();
    bad[2] = 99;
    bad[4..8].copy_from_slice(&3u32.to_be_bytes());
    s.write_all(&bad).await.unwrap();
    s.write_all(b"xyz").await.unwrap();
    s.write_all(&RequestHeader::new(Op::Flush, 78).encode())
        .await
        .unwrap();
    let mut raw = [0u8; 24];
    s.read_exact(&mut raw).await.unwrap();
    let h = ResponseHeader::decode(&raw).unwrap();
    assert_eq!((h.tag, h.status), (77, Status::Protocol));
    let mut text = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut text).await.unwrap();
    assert!(String::from_utf8(text).unwrap().contains("unknown op 99"));
    s.read_exact(&mut raw).await.unwrap();
    let h = ResponseHeader::decode(&raw).unwrap();
    assert_eq!((h.tag, h.status), (78, Status::Ok));
}

#[tokio::test]
async fn whole_chunks_travel_in_one_request() {
    let n = node(1).await;
    let c = &n.client;
    let a = at(1, 0, n.device, 1);
    let data: Vec<u8> = (0..CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
    c.write(a, 0, data.clone().into(), true, Secondary::Missing)
        .await
        .unwrap();
    assert_eq!(c.read(a, 0, CHUNK_SIZE as u32).await.unwrap(), data);
    let e = c
        .write(a, 1, data.into(), false, Secondary::Missing)
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Protocol(_)), "{e}");
}

/// Compare data then write data, as a compare-and-write payload.
fn caw_payload(compare: &[u8], write: &[u8]) -> SgList {
    let mut p = SgList::new();
    p.push(Bytes::copy_from_slice(compare));
    p.push(Bytes::copy_from_slice(write));
    p
}

#[tokio::test]
async fn atomic_ops_run_on_the_primary_and_reach_the_mirror() {
    let p = node(1).await;
    let s = node(2).await;
    let peers = SdsControl::Peers {
        peers: vec![(2, s.handle.addr)],
    };
    p.client.control(&peers).await.unwrap();
    let m = Secondary::Mirror(Mirror {
        sds: 2,
        device: s.device,
    });
    let a = at(4, 1, p.device, 2);
    let on_secondary = at(4, 1, s.device, 2);
    p.client
        .write(a, 4096, vec![b'A'; 1024].into(), false, m)
        .await
        .unwrap();

    // A match: the write data lands on both copies.
    let r = p
        .client
        .atomic(
            a,
            4096,
            AtomicKind::CompareAndWrite,
            caw_payload(&[b'A'; 1024], &[b'B'; 1024]),
            true,
            m,
        )
        .await
        .unwrap();
    assert_eq!(r, None);
    for (c, at) in [(&p.client, a), (&s.client, on_secondary)] {
        assert_eq!(c.read(at, 4096, 1024).await.unwrap(), vec![b'B'; 1024]);
    }

    // A miscompare: the offset of the first differing byte, nothing written anywhere.
    let mut compare = vec![b'B'; 1024];
    compare[777] = b'A';
    compare[900] = b'A';
    let r = p
        .client
        .atomic(
            a,
            4096,
            AtomicKind::CompareAndWrite,
            caw_payload(&compare, &[b'C'; 1024]),
            false,
            m,
        )
        .await
        .unwrap();
    assert_eq!(r, Some(777));
    for (c, at) in [(&p.client, a), (&s.client, on_secondary)] {
        assert_eq!(c.read(at, 4096, 1024).await.unwrap(), vec![b'B'; 1024]);
    }

    // Or-write and atomic write; an unwritten chunk compares as zeros.
    let r = p
        .client
        .atomic(a, 4096, AtomicKind::Or, vec![0x01; 512].into(), false, m)
        .await
        .unwrap();
    assert_eq!(r, None);
    p.client
        .atomic(a, 4608, AtomicKind::Write, vec![7; 512].into(), false, m)
        .await
        .unwrap();
    for (c, at) in [(&p.client, a), (&s.client, on_secondary)] {
        let d = c.read(at, 4096, 1024).await.unwrap();
        assert!(d[..512].iter().all(|&b| b == b'B' | 1) && d[512..].iter().all(|&b| b == 7));
    }
    let fresh = at(4, 5, p.device, 2);
    let r = p
        .client
        .atomic(
            fresh,
            0,
            AtomicKind::CompareAndWrite,
            caw_payload(&[0; 512], &[9; 512]),
            false,
            Secondary::Missing,
        )
        .await
        .unwrap();
    assert_eq!(r, None);
    assert_eq!(p.client.read(fresh, 0, 512).await.unwrap(), vec![9; 512]);

    // Fenced like any write: an older epoch is refused before anything runs.
    let e = p
        .client
        .atomic(
            at(4, 1, p.device, 1),
            4096,
            AtomicKind::Write,
            vec![0; 512].into(),
            false,
            m,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ChunkError::StaleEpoch { current: 2, .. }),
        "{e}"
    );
}

/// Many clients swap one counter concurrently, each from the value it last read, mixed
/// with ordinary writes to the rest of the block's chunk: every successful swap moves
/// the counter by exactly one, so no compare was separated from its write, and the
/// mirror ends equal to the primary.
#[tokio::test]
async fn concurrent_compare_and_writes_never_both_win() {
    let p = node(1).await;
    let s = node(2).await;
    p.client
        .control(&SdsControl::Peers {
            peers: vec![(2, s.handle.addr)],
        })
        .await
        .unwrap();
    let m = Secondary::Mirror(Mirror {
        sds: 2,
        device: s.device,
    });
    let a = at(6, 0, p.device, 1);
    let client = Arc::new(ChunkClient::new(p.handle.addr));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..6u32 {
        let c = client.clone();
        set.spawn(async move {
            let mut wins = 0;
            while wins < 20 {
                let old = c.read(a, 0, 512).await.unwrap();
                let n = u32::from_be_bytes(old[..4].try_into().unwrap());
                let mut new = old.to_vec();
                new[..4].copy_from_slice(&(n + 1).to_be_bytes());
                let r = c
                    .atomic(
                        a,
                        0,
                        AtomicKind::CompareAndWrite,
                        caw_payload(&old, &new),
                        false,
                        m,
                    )
                    .await
                    .unwrap();
                if r.is_none() {
                    wins += 1;
                }
                // An ordinary mirrored write elsewhere in the chunk.
                let off = 4096 * (1 + w);
                c.write(a, off, vec![w as u8; 4096].into(), false, m)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let end = p.client.read(a, 0, 512).await.unwrap();
    assert_eq!(u32::from_be_bytes(end[..4].try_into().unwrap()), 120);
    let mirror = s
        .client
        .read(at(6, 0, s.device, 1), 0, 64 << 10)
        .await
        .unwrap();
    assert_eq!(p.client.read(a, 0, 64 << 10).await.unwrap(), mirror);
}

/// While a chunk's lock is held exclusively (as an Atomic op or a Replicate holds it),
/// the primary's writes (mirrored or degraded) and its reads of that chunk wait; other
/// chunks and forwarded copies do not. The waiters are admitted only once they hold
/// the lock: an epoch raised meanwhile (as Replicate raises it) refuses them.
#[tokio::test]
async fn writes_and_reads_wait_for_an_atomic_op_on_their_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = device_file(&dir, "dev0", 64 * MIB);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sds = Arc::new(Sds::open(&dir.path().join("data"), addr, None).unwrap());
    let server = tokio::spawn(server::run(listener, None, sds.clone()));
    let c = Arc::new(ChunkClient::new(addr));
    let mdm = FakeMdm::start(60_000).await;
    c.control(&claim_msg(SYSTEM, 1, mdm.port, &[(10, &path)]))
        .await
        .unwrap();
    until_served(&c, 10).await;
    let s = node(2).await;
    c.control(&SdsControl::Peers {
        peers: vec![(2, s.handle.addr)],
    })
    .await
    .unwrap();
    let m = Secondary::Mirror(Mirror {
        sds: 2,
        device: s.device,
    });
    let a = at(8, 3, 10, 1);

    let wait_for = |held_back: bool| {
        let c = c.clone();
        tokio::spawn(async move {
            let w = c.write(a, 0, vec![1u8; 512].into(), false, m).await;
            let d = c
                .write(a, 1024, vec![4u8; 512].into(), false, Secondary::Missing)
                .await;
            let r = c.read(a, 0, 512).await;
            (held_back, w, d, r)
        })
    };
    let held = sds.locks.exclusive(8, 3).await;
    let waiting = [wait_for(true)];
    // Unrelated work goes on meanwhile: another chunk, and a forwarded copy.
    let other = at(8, 4, 10, 1);
    tokio::time::timeout(Duration::from_secs(5), async {
        c.write(other, 0, vec![2u8; 512].into(), false, m)
            .await
            .unwrap();
        c.read(other, 0, 512).await.unwrap();
        forwarded_write(&c, a, 512, vec![3u8; 512]).await;
    })
    .await
    .expect("other chunks and forwarded copies do not wait");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting[0].is_finished(), "held back by the lock");
    drop(held);
    for t in waiting {
        let (_, w, d, r) = t.await.unwrap();
        w.unwrap();
        d.unwrap();
        r.unwrap();
    }
    assert_eq!(c.read(a, 0, 512).await.unwrap(), vec![1u8; 512]);

    // The epoch is raised while a write waits for the lock: it is refused.
    let held = sds.locks.exclusive(8, 3).await;
    let late = {
        let c = c.clone();
        tokio::spawn(async move { c.write(a, 0, vec![9u8; 512].into(), false, m).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    sds.epochs.raise(8, 2);
    drop(held);
    let e = late.await.unwrap().unwrap_err();
    assert!(
        matches!(e, ChunkError::StaleEpoch { current: 2, .. }),
        "{e}"
    );
    assert_eq!(
        c.read(at(8, 3, 10, 2), 0, 512).await.unwrap(),
        vec![1u8; 512]
    );
    server.abort();
}

#[tokio::test]
async fn a_lapsed_lease_refuses_io_until_a_heartbeat_is_answered() {
    // A bare SDS serves no data: no MDM has claimed it.
    let dir = tempfile::tempdir().unwrap();
    let bare = start_at(&dir.path().join("data"), None).await;
    let m = fenced(
        ChunkClient::new(bare.addr)
            .read(at(1, 0, 1, 1), 0, 512)
            .await
            .unwrap_err(),
    );
    assert!(m.contains("not been claimed"), "{m}");

    let n = node_with_lease(1, 300).await;
    let c = &n.client;
    let a = at(1, 0, n.device, 1);
    c.write(a, 0, vec![7u8; 512].into(), false, Secondary::Missing)
        .await
        .unwrap();
    n.mdm.script().silent = true;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let m = fenced(c.read(a, 0, 512).await.unwrap_err());
    assert!(
        m.contains(&format!(
            "no lease from the MDM at 127.0.0.1:{}",
            n.mdm.port
        )) && m.contains("check that the MDM runs"),
        "{m}"
    );
    fenced(
        c.write(a, 0, vec![1u8; 512].into(), false, Secondary::Missing)
            .await
            .unwrap_err(),
    );
    fenced(c.status(a, 0).await.unwrap_err());
    fenced(
        c.status_many(a.volume, a.epoch, &[(a.chunk, n.device)])
            .await
            .unwrap_err(),
    );
    // Flush and control are always served.
    c.flush().await.unwrap();
    assert_eq!(inventory(c).await.devices[0].chunks, vec![(1, 0)]);
    n.mdm.script().silent = false;
    until_served(c, n.device).await;
    assert_eq!(c.read(a, 0, 512).await.unwrap(), vec![7u8; 512]);
}

#[tokio::test]
async fn epochs_from_the_lease_refuse_older_layouts() {
    let n = node(1).await;
    let c = &n.client;
    n.mdm.script().epochs = vec![(5, 10)];
    let old = at(5, 0, n.device, 9);
    for _ in 0..100 {
        if c.read(old, 0, 512).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = c.read(old, 0, 512).await.unwrap_err();
    assert!(
        matches!(
            e,
            ChunkError::StaleEpoch {
                sent: 9,
                current: 10
            }
        ),
        "{e}"
    );
    c.read(at(5, 0, n.device, 10), 0, 512).await.unwrap();
    // A lease never lowers a mark.
    c.read(at(5, 0, n.device, 12), 0, 512).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.read(at(5, 0, n.device, 11), 0, 512).await.is_err());
}

/// Two SDS that know each other: (primary, secondary).
async fn pair() -> (Node, Node) {
    let p = node(1).await;
    let s = node(2).await;
    for n in [&p, &s] {
        let peers = SdsControl::Peers {
            peers: vec![(1, p.handle.addr), (2, s.handle.addr)],
        };
        n.client.control(&peers).await.unwrap();
    }
    (p, s)
}

#[tokio::test]
async fn replicate_copies_data_and_holes_exactly_and_clears_dirty() {
    let (p, s) = pair().await;
    let (pc, sc) = (&p.client, &s.client);
    let target = Mirror {
        sds: 2,
        device: s.device,
    };
    // Degraded writes on the primary (no mirror): data at 0 and across a piece edge.
    let a = at(7, 0, p.device, 1);
    pc.write(a, 0, vec![1u8; 4096].into(), false, Secondary::Missing)
        .await
        .unwrap();
    let big: Vec<u8> = (0..300u32 << 10).map(|i| (i % 253) as u8).collect();
    pc.write(a, 200 << 10, big.clone().into(), false, Secondary::Missing)
        .await
        .unwrap();
    assert_eq!(dirty(pc, 7).await, vec![0]);
    // The target holds a stale copy (backward rebuild) with data where the source
    // has a hole, and a stale copy of a chunk the source no longer holds.
    let on_target = at(7, 0, s.device, 1);
    forwarded_write(sc, on_target, 900 << 10, vec![0xEE; 8192]).await;
    forwarded_write(sc, at(7, 1, s.device, 1), 0, vec![0xEE; 512]).await;
    assert_eq!(
        dirty(sc, 7).await,
        Vec::<u64>::new(),
        "forwarded: never dirty"
    );

    let sent = pc.replicate(at(7, 0, p.device, 2), target).await.unwrap();
    assert!(
        (4096 + (300 << 10)..CHUNK_SIZE).contains(&sent),
        "sent {sent}"
    );
    let t = at(7, 0, s.device, 2);
    let copied = sc.read(t, 0, CHUNK_SIZE as u32).await.unwrap();
    let source = pc.read(at(7, 0, p.device, 2), 0, CHUNK_SIZE as u32).await;
    assert_eq!(copied, source.unwrap());
    // Holes stayed holes: the stale bytes were deallocated, nothing else allocated.
    assert!(!sc.status(t, 900 << 10).await.unwrap().0);
    assert!(!sc.status(t, 8192).await.unwrap().0);
    assert_eq!(dirty(pc, 7).await, Vec::<u64>::new());
    // Replication raised the epoch: the old layout is refused on both.
    let e = pc.read(a, 0, 1).await.unwrap_err();
    assert!(
        matches!(e, ChunkError::StaleEpoch { current: 2, .. }),
        "{e}"
    );
    assert!(sc.read(on_target, 0, 1).await.is_err());

    // A chunk the source does not hold frees the target's thin slot.
    let sent = pc.replicate(at(7, 1, p.device, 2), target).await.unwrap();
    assert_eq!(sent, 0);
    assert_eq!(inventory(sc).await.devices[0].chunks, vec![(7, 0)]);

    // A target that is not a peer: a mirror failure, and the dirty bit stays.
    pc.write(
        at(7, 2, p.device, 2),
        0,
        vec![3u8; 512].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    let e = pc
        .replicate(at(7, 2, p.device, 2), Mirror { sds: 42, device: 1 })
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Mirror { sds: 42, .. }), "{e}");
    assert_eq!(dirty(pc, 7).await, vec![2]);
}

#[tokio::test]
async fn degraded_and_failed_mirror_writes_are_dirty_across_restarts() {
    let (p, s) = pair().await;
    let pc = &p.client;
    let m = Secondary::Mirror(Mirror {
        sds: 2,
        device: s.device,
    });
    // Mirrored writes and forwarded copies never mark.
    pc.write(at(3, 0, p.device, 1), 0, vec![1u8; 512].into(), false, m)
        .await
        .unwrap();
    forwarded_write(pc, at(3, 1, p.device, 1), 0, vec![1u8; 512]).await;
    assert_eq!(dirty(pc, 3).await, Vec::<u64>::new());
    // Degraded: a write, a zeroing of a held chunk, an atomic op.
    pc.write(
        at(3, 2, p.device, 1),
        0,
        vec![2u8; 512].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    pc.write_zeroes(at(3, 1, p.device, 1), 0, 512, false, Secondary::Missing)
        .await
        .unwrap();
    pc.atomic(
        at(3, 4, p.device, 1),
        0,
        AtomicKind::Write,
        vec![4u8; 512].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    // A forward that fails: the local copy took the write, so it is dirty.
    s.handle.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = pc
        .write(at(3, 5, p.device, 1), 0, vec![5u8; 512].into(), false, m)
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Mirror { sds: 2, .. }), "{e}");
    assert_eq!(dirty(pc, 3).await, vec![1, 2, 4, 5]);
    assert_eq!(dirty(pc, 4).await, Vec::<u64>::new());

    // The marks are on the device: they survive a restart.
    let data = p.dir.path().join("data");
    p.handle.stop();
    let h = start_at(&data, None).await;
    let c = ChunkClient::new(h.addr);
    until_served(&c, p.device).await;
    assert_eq!(dirty(&c, 3).await, vec![1, 2, 4, 5]);
    h.stop();
}

#[tokio::test]
async fn a_single_copy_moving_marks_nothing_even_when_its_target_fails() {
    let (p, s) = pair().await;
    let pc = &p.client;
    let moving = Secondary::SingleCopyMoving(Mirror {
        sds: 2,
        device: s.device,
    });
    // The move's target takes the write (forwarded as a plain copy).
    pc.write(
        at(3, 0, p.device, 1),
        0,
        vec![1u8; 512].into(),
        false,
        moving,
    )
    .await
    .unwrap();
    let on_target = s.client.read(at(3, 0, s.device, 1), 0, 512).await.unwrap();
    assert_eq!(on_target, vec![1u8; 512]);
    // The target fails: the write is refused as a mirror failure, and the single copy
    // is not marked, so a whole-chunk UNMAP still frees its slot.
    s.handle.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = pc
        .write(
            at(3, 0, p.device, 1),
            0,
            vec![2u8; 512].into(),
            false,
            moving,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ChunkError::Mirror { sds: 2, .. }), "{e}");
    assert_eq!(dirty(pc, 3).await, Vec::<u64>::new());
    pc.write_zeroes(
        at(3, 0, p.device, 2),
        0,
        CHUNK_SIZE as u32,
        true,
        Secondary::SingleCopy,
    )
    .await
    .unwrap();
    let held = inventory(pc).await.devices[0].chunks.clone();
    assert!(!held.contains(&(3, 0)), "{held:?}");
}

#[tokio::test]
async fn a_released_sds_runs_bare_and_can_be_claimed_again() {
    let n = node(1).await;
    let c = &n.client;
    c.write(
        at(1, 0, n.device, 1),
        0,
        vec![7u8; 512].into(),
        false,
        Secondary::Missing,
    )
    .await
    .unwrap();
    assert_eq!(
        c.control(&SdsControl::Release).await.unwrap(),
        SdsControlReply::Ok
    );
    assert_eq!(
        c.control(&SdsControl::Release).await.unwrap(),
        SdsControlReply::Ok
    );
    let inv = inventory(c).await;
    assert_eq!((inv.system_id, inv.devices.len()), (0, 0));
    let m = fenced(c.read(at(1, 0, n.device, 1), 0, 1).await.unwrap_err());
    assert!(m.contains("not been claimed"), "{m}");
    let data = n.dir.path().join("data");
    assert!(state::load(&data).unwrap().is_none());
    let mut head = [0u8; 4096];
    File::open(&n.path)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|&b| b == 0), "the header is wiped");

    // Claimed again (by any system): a blank device, formatted anew.
    let claim = claim_msg(0xBEEF, 9, n.mdm.port, &[(90, &n.path)]);
    match c.control(&claim).await.unwrap() {
        SdsControlReply::Claimed { devices } => assert_eq!(devices[0].slots, 63),
        other => panic!("{other:?}"),
    }
    until_served(c, 90).await;
    assert_eq!(
        c.read(at(1, 0, 90, 1), 0, 512).await.unwrap(),
        vec![0u8; 512]
    );
    assert!(inventory(c).await.devices[0].chunks.is_empty());
}

/// A raw local connection to `addr`, its Attach sent with `fd` (if any); returns the
/// stream and the SDS's answer to the Attach.
async fn attach_raw(
    addr: SocketAddr,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    size: u32,
) -> (tokio::net::UnixStream, ResponseHeader) {
    use crate::cluster::chunk::local::{send_with_fd, socket_name};
    use std::os::fd::AsFd;
    let mut s = tokio::net::UnixStream::connect(socket_name(addr))
        .await
        .unwrap();
    let mut h = RequestHeader::new(Op::Attach, 1);
    h.length = size;
    let head = h.encode();
    let sent = match fd {
        Some(fd) => s
            .async_io(tokio::io::Interest::WRITABLE, || {
                send_with_fd(s.as_fd(), &head, fd)
            })
            .await
            .unwrap(),
        None => 0,
    };
    s.write_all(&head[sent..]).await.unwrap();
    let r = raw_response(&mut s).await.0;
    (s, r)
}

async fn raw_response(s: &mut tokio::net::UnixStream) -> (ResponseHeader, Vec<u8>) {
    let mut raw = [0u8; crate::cluster::chunk::wire::RESPONSE_HEADER_LEN];
    s.read_exact(&mut raw).await.unwrap();
    let r = ResponseHeader::decode(&raw).unwrap();
    let mut body = vec![0u8; r.payload_len as usize];
    s.read_exact(&mut body).await.unwrap();
    (r, body)
}

/// Through the local socket a client's large reads land in its shared memory: whole
/// and partial chunks, an unwritten chunk (zeros); large writes go there too, small
/// requests over TCP.
#[tokio::test]
async fn local_clients_read_through_shared_memory() {
    let n = node(1).await;
    let local = ChunkClient::local_first(n.handle.addr);
    let a = at(5, 0, n.device, 1);
    let data: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8).collect();
    local
        .write(a, 0, data.clone().into(), false, Secondary::Missing)
        .await
        .unwrap();
    assert!(local.bulk_is_local().await);
    assert_eq!(local.read(a, 0, MIB as u32).await.unwrap(), data);
    let part = local.read(a, 4096 + 7, 200_000).await.unwrap();
    assert_eq!(part, data[4096 + 7..204_103]);
    let unwritten = local
        .read(at(5, 1, n.device, 1), 512, 100_000)
        .await
        .unwrap();
    assert!(unwritten.len() == 100_000 && unwritten.iter().all(|&b| b == 0));
    // A read while another's bytes are still held gets memory of its own.
    let again = local.read(a, 0, MIB as u32).await.unwrap();
    assert_eq!(again, data);
    assert_eq!(part, data[4096 + 7..204_103]);
    assert_eq!(local.read(a, 100, 10).await.unwrap(), data[100..110]);
}

/// What a broken or hostile local client sends is refused with a reason, and the
/// SDS's memory is never at its mercy.
#[tokio::test]
async fn bad_local_attachments_and_arena_reads_are_refused() {
    use crate::cluster::chunk::arena::{Mapping, PAGE};
    use crate::cluster::chunk::wire::FLAG_ARENA;
    use std::os::fd::AsFd;
    let n = node(1).await;
    let addr = n.handle.addr;
    let (_, r) = attach_raw(addr, None, PAGE as u32).await;
    assert_eq!(r.status, Status::Refused);
    // The size must be the memfd's.
    let map = Mapping::create(4 * PAGE).unwrap();
    let (_, r) = attach_raw(addr, Some(map.fd()), 8 * PAGE as u32).await;
    assert_eq!(r.status, Status::Refused);
    // Not sealed: a client could shrink it under the SDS.
    let f = tempfile::tempfile().unwrap();
    f.set_len(PAGE as u64).unwrap();
    let (_, r) = attach_raw(addr, Some(f.as_fd()), PAGE as u32).await;
    assert_eq!(r.status, Status::Refused);
    // Attached, a read past the memory lent is a protocol error, and nothing moves.
    let (mut s, r) = attach_raw(addr, Some(map.fd()), 4 * PAGE as u32).await;
    assert_eq!(r.status, Status::Ok);
    let mut h = RequestHeader::new(Op::Read, 9);
    h.at = at(5, 0, n.device, 1);
    h.length = 2 * PAGE as u32;
    h.flags = FLAG_ARENA;
    h.arena = Some(3 * PAGE as u64);
    s.write_all(&h.encode()).await.unwrap();
    let (r, text) = raw_response(&mut s).await;
    assert_eq!((r.status, r.tag), (Status::Protocol, 9));
    assert!(String::from_utf8_lossy(&text).contains("outside"));
    h.arena = Some(2 * PAGE as u64);
    s.write_all(&h.encode()).await.unwrap();
    let (r, body) = raw_response(&mut s).await;
    assert_eq!(
        (r.status, r.flags, body.len()),
        (Status::Ok, FLAG_IN_ARENA, 0)
    );
    // Control messages are refused there: the SDS learns the MDM's address from them.
    let mut c = RequestHeader::new(Op::Control, 11);
    c.payload_len = 2;
    s.write_all(&c.encode()).await.unwrap();
    s.write_all(b"{}").await.unwrap();
    let (r, text) = raw_response(&mut s).await;
    assert_eq!(r.status, Status::Refused);
    assert!(String::from_utf8_lossy(&text).contains("over TCP"));
    // A second Attach, and an ARENA read over TCP, are refused too.
    let mut again = RequestHeader::new(Op::Attach, 10);
    again.length = PAGE as u32;
    s.write_all(&again.encode()).await.unwrap();
    assert_eq!(raw_response(&mut s).await.0.status, Status::Refused);
    let e = n.client.send(h, &SgList::new()).await.unwrap_err();
    assert!(
        matches!(e, ChunkError::Protocol(ref m) if m.contains("lent no")),
        "{e}"
    );
}
