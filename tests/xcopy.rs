//! EXTENDED COPY end to end: MDM, three SDS and a gateway as separate processes, two
//! thin mirrored pool volumes mapped to one initiator at LUNs 0 and 1. A 1 GiB copy
//! must move its data SDS to SDS: the gateway's own socket traffic (its /proc I/O
//! counters) stays a tiny fraction of what was copied.

mod common;

use common::cluster::{Cluster, GW_IQN};
use common::{require_tool, Initiator};
use dreadnought::scsi::Identity;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const HOST: &str = "iqn.2026-11.io.dreadnought:cloner";
const STRANGER: &str = "iqn.2026-11.io.dreadnought:stranger";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The destination range starts this far into its volume, so every source chunk
/// lands across two destination chunks.
const SHIFT: u64 = MIB / 2 + 4096;
/// Blocks per segment descriptor (16 MiB); 64 of them (the maximum) make 1 GiB.
const SEGMENT_BLOCKS: u64 = 32768;

/// The byte every MiB `c` of the source is filled with.
fn fill(c: u64) -> u64 {
    c % 251 + 1
}

/// Runs qemu-io commands against a LUN, logged in as HOST.
fn qemu_io(portal: SocketAddr, lun: u32, commands: &str) -> String {
    common::cluster::qemu_io_as(portal, HOST, lun, commands)
}

/// (rchar, wchar) of a process: every byte it read from or wrote to a socket, pipe
/// or file.
fn io_counters(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io:\n{text}"))
    };
    (field("rchar:"), field("wchar:"))
}

/// Bytes sent and received on each TCP socket of a process (`ss -tinp`), by
/// (local, peer) address.
fn socket_bytes(pid: u32) -> HashMap<(String, String), (u64, u64)> {
    let out = Command::new("ss").args(["-tinpH"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sockets = HashMap::new();
    let mut lines = text.lines();
    let owner = format!("pid={pid},");
    while let Some(l) = lines.next() {
        let Some(info) = lines.next() else { break };
        if !l.contains(&owner) {
            continue;
        }
        let cols: Vec<&str> = l.split_whitespace().collect();
        let counter = |name: &str| {
            info.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        sockets.insert(
            (cols[3].to_string(), cols[4].to_string()),
            (counter("bytes_sent:"), counter("bytes_received:")),
        );
    }
    sockets
}

/// Bytes a process's sockets moved between two `socket_bytes` snapshots (sockets
/// opened in between count whole).
fn socket_delta(
    before: &HashMap<(String, String), (u64, u64)>,
    after: &HashMap<(String, String), (u64, u64)>,
) -> (u64, u64) {
    after.iter().fold((0, 0), |(s, r), (k, (s1, r1))| {
        let (s0, r0) = before.get(k).copied().unwrap_or((0, 0));
        (s + s1.saturating_sub(s0), r + r1.saturating_sub(r0))
    })
}

/// An identification target descriptor naming an NAA designator, 512-byte blocks.
fn target(naa: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4] = 0x01;
    d[5] = 0x03;
    d[7] = naa.len() as u8;
    d[8..8 + naa.len()].copy_from_slice(naa);
    d[29..32].copy_from_slice(&[0, 0x02, 0]);
    d
}

fn segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

/// A parameter list with LIST ID USAGE 11b (no list identifier).
fn params(targets: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let t = targets.concat();
    let s = segments.concat();
    let mut l = vec![0u8; 16];
    l[1] = 0b11 << 3;
    l[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    l[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    l.extend(t);
    l.extend(s);
    l
}

fn xcopy(i: &mut Initiator, list: &[u8]) -> common::ScsiResult {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    i.scsi(&cdb, list.len() as u32, Some(list), list.len())
}

/// The NAA designator of the LUN the initiator addresses, from VPD page 0x83.
fn naa_of(i: &mut Initiator) -> Vec<u8> {
    let r = i.scsi(&[0x12, 1, 0x83, 1, 0, 0], 256, None, 0);
    assert_eq!(r.status, 0);
    let d = &r.data;
    assert_eq!(d[5] & 0x0F, 3, "the first designator is the NAA one");
    d[8..8 + usize::from(d[7])].to_vec()
}

fn volume_id(c: &Cluster, name: &str) -> u64 {
    let json = c.ok(&["--query_volume", "--volume_name", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    u64::from_str_radix(v["id"].as_str().unwrap(), 16).unwrap()
}

#[test]
fn extended_copy_of_a_gibibyte_moves_the_data_sds_to_sds() {
    require_tool("qemu-io");
    let c = Cluster::with_pool(3, 4 * GIB);
    for (v, gb) in [("src", "1"), ("dst", "2"), ("secret", "0.0625")] {
        c.add_volume(v, gb, &[]);
    }
    for (name, iqn) in [("cloner", HOST), ("stranger", STRANGER)] {
        c.add_host(name, iqn);
    }
    for (v, host, lun) in [
        ("src", "cloner", "0"),
        ("dst", "cloner", "1"),
        ("secret", "stranger", "0"),
    ] {
        c.map(host, v, &["--lun", lun]);
    }
    let (gw, portal) = c.gateway(false);

    // The source: every MiB its own byte, written through iSCSI.
    let chunks = GIB / MIB;
    let writes: String = (0..chunks)
        .map(|c| format!("write -P {} {} 1M\n", fill(c), c * MIB))
        .collect();
    let out = qemu_io(portal, 0, &writes);
    assert_eq!(
        out.matches("wrote 1048576/1048576").count() as u64,
        chunks,
        "{}",
        &out[..out.len().min(2000)]
    );

    let mut i = Initiator::connect(portal);
    i.stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let r = i.login(HOST, GW_IQN, &[]);
    assert_eq!(r.status_class, 0, "{r:?}");
    i.clear_ua();
    let src_naa = naa_of(&mut i);
    i.lun = 1;
    i.clear_ua();
    let dst_naa = naa_of(&mut i);
    i.lun = 0;

    // 1 GiB from LBA 0 of LUN 0 to SHIFT bytes into LUN 1, in one command.
    let segments: Vec<Vec<u8>> = (0..GIB / 512 / SEGMENT_BLOCKS)
        .map(|s| {
            let lba = s * SEGMENT_BLOCKS;
            segment(0, 1, SEGMENT_BLOCKS as u16, lba, SHIFT / 512 + lba)
        })
        .collect();
    let list = params(&[target(&src_naa), target(&dst_naa)], &segments);
    let pid = gw.pid();
    let (r0, w0) = io_counters(pid);
    let s0 = socket_bytes(pid);
    let started = Instant::now();
    let r = xcopy(&mut i, &list);
    let took = started.elapsed();
    let (r1, w1) = io_counters(pid);
    let s1 = socket_bytes(pid);
    assert_eq!(r.status, 0, "EXTENDED COPY failed: sense {:02x?}", r.sense);
    let (sent, received) = socket_delta(&s0, &s1);
    println!(
        "EXTENDED COPY of 1 GiB: {:.2} s ({:.0} MiB/s); the gateway's TCP sockets sent {sent} and received {received} bytes ({:.4} % of 1 GiB); /proc/{pid}/io rchar +{}, wchar +{}",
        took.as_secs_f64(),
        1024.0 / took.as_secs_f64(),
        (sent + received) as f64 * 100.0 / GIB as f64,
        r1 - r0,
        w1 - w0,
    );
    assert!(
        sent + received < GIB / 100,
        "the gateway moved {} bytes for a 1 GiB copy: the data went through it",
        sent + received
    );
    assert!(w1 - w0 < GIB / 100, "the gateway wrote {} bytes", w1 - w0);

    // The instrument sees data that does pass through the gateway: 64 MiB read
    // over the same session shows up in full.
    for k in 0..8u64 {
        let mut read16 = [0u8; 16];
        read16[0] = 0x88;
        read16[2..10].copy_from_slice(&(k * 16384).to_be_bytes());
        read16[10..14].copy_from_slice(&16384u32.to_be_bytes());
        let r = i.scsi(&read16, 8 << 20, None, 0);
        assert_eq!(r.status, 0);
        assert_eq!(r.data[0] as u64, fill(k * 8));
    }
    let (sent, _) = socket_delta(&s1, &socket_bytes(pid));
    assert!(
        sent >= 64 * MIB,
        "64 MiB of reads counted as {sent} bytes sent"
    );

    // Every byte arrived, shifted; what lies before the destination range is untouched.
    let reads: String = (0..chunks)
        .map(|c| format!("read -P {} {} 1M\n", fill(c), SHIFT + c * MIB))
        .chain(std::iter::once(format!("read -P 0 0 {SHIFT}\n")))
        .collect();
    let out = qemu_io(portal, 1, &reads);
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "the copy differs from its source:\n{}",
        out.lines()
            .filter(|l| l.contains("failed") || l.contains("error"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.matches("read 1048576/1048576").count() as u64, chunks);

    // A volume the initiator is not mapped to cannot be named, as source or as
    // destination, even though this gateway serves it (LIO's CVE-2020-28374).
    let secret = Identity::from_volume_id("secret", volume_id(&c, "secret")).naa;
    for seg in [segment(1, 0, 8, 0, 0), segment(0, 1, 8, 0, 0)] {
        let list = params(&[target(&src_naa), target(&secret)], &[seg]);
        let r = xcopy(&mut i, &list);
        assert_eq!(r.status, 2);
        assert_eq!(
            (r.sense[2] & 0x0F, r.sense[12], r.sense[13]),
            (0x0A, 0x0D, 0x02),
            "COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE"
        );
    }
    drop(gw);
}
