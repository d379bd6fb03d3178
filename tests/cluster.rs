//! The cluster as separate processes on loopback: an MDM, SDS and an iSCSI gateway,
//! driven by `scli` exactly as a ScaleIO admin would, with I/O from QEMU's iSCSI
//! driver. Checks come from each component's own view (SDS inventories), not the MDM's
//! intentions.

mod common;

use common::cluster::{num, qemu_io, Cluster, POOL_ARGS};
use common::require_tool;
use common::writer::{verify, write_all, Expected, WriteOp};
use dreadnought::cluster::api::CHUNK_SIZE;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the test block of chunk `c` goes: a different 4 KiB block in every chunk.
fn probe(c: u64) -> (u64, u8) {
    let block = (c * 7919) % (CHUNK_SIZE / 4096);
    (c * CHUNK_SIZE + block * 4096, (c % 251) as u8 + 1)
}

fn pattern(chunks: u64, op: &str) -> String {
    (0..chunks)
        .map(|c| {
            let (off, pat) = probe(c);
            format!("{op} -P {pat} {off} 4k\n")
        })
        .collect()
}

fn assert_pattern(portal: SocketAddr, chunks: u64) {
    let out = qemu_io(portal, 0, &pattern(chunks, "read"));
    assert!(
        !out.contains("Pattern verification failed") && !out.contains("error"),
        "read-back found differences:\n{}",
        out.lines()
            .filter(|l| l.contains("failed") || l.contains("error"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.matches("read 4096/4096").count() as u64, chunks);
}

#[test]
fn scaleio_walkthrough_stripes_and_mirrors_a_20gb_volume() {
    require_tool("qemu-io");
    let mut c = Cluster::start(4);
    c.ok(&[
        "--add_protection_domain",
        "--protection_domain_name",
        "awspdomain01",
    ]);
    c.ok(&[
        "--add_storage_pool",
        "--protection_domain_name",
        "awspdomain01",
        "--storage_pool_name",
        "pool03",
    ]);
    for i in 0..4 {
        let dev = c.device(&format!("xvdf{i}"), 16 << 30);
        let ip = c.sds_addrs[i].to_string();
        let name = format!("aws{}sds", i + 1);
        c.ok(&[
            "--add_sds",
            "--sds_ip",
            &ip,
            "--protection_domain_name",
            "awspdomain01",
            "--device_name",
            dev.to_str().unwrap(),
            "--storage_pool_name",
            "pool03",
            "--sds_name",
            &name,
        ]);
    }
    let (gw, portal) = c.gateway(true);
    c.ok(&[
        "--add_volume",
        "--protection_domain_name",
        "awspdomain01",
        "--storage_pool_name",
        "pool03",
        "--size",
        "20",
        "--volume_name",
        "awsvol01",
    ]);
    c.ok(&[
        "--map_volume_to_sdc",
        "--volume_name",
        "awsvol01",
        "--sdc_ip",
        "127.0.0.1",
    ]);
    let all = c.ok(&["--query_all_sds"]);
    assert!(all.contains("Query-all-SDS returned 4 SDS nodes."), "{all}");
    for i in 1..=4 {
        assert!(all.contains(&format!("aws{i}sds")), "{all}");
    }
    let pool = c.ok(&[
        "--query_storage_pool",
        "--protection_domain_name",
        "awspdomain01",
        "--storage_pool_name",
        "pool03",
    ]);
    assert!(pool.contains("pool03"), "{pool}");
    let vol = c.ok(&["--query_volume", "--volume_name", "awsvol01", "--json"]);
    assert!(
        vol.contains("\"thin\": true"),
        "the walkthrough's volume is thin: {vol}"
    );

    // The mapping reaches the running gateway without a restart.
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let chunks = 20 * 1024;
    let out = qemu_io(portal, 0, &pattern(chunks, "write"));
    assert_eq!(
        out.matches("wrote 4096/4096").count() as u64,
        chunks,
        "{}",
        &out[..out.len().min(2000)]
    );
    assert_pattern(portal, chunks);

    // Every chunk has exactly two copies on two different SDS, each SDS its share.
    let inv = c.inventories();
    let mut copies: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut volume = None;
    for (sds, list) in inv.iter().enumerate() {
        for &(v, chunk) in list {
            assert_eq!(*volume.get_or_insert(v), v, "one volume only");
            copies.entry(chunk).or_default().push(sds);
        }
    }
    assert_eq!(copies.len() as u64, chunks, "every chunk was written");
    for (chunk, on) in &copies {
        assert_eq!(on.len(), 2, "chunk {chunk} has copies on SDS {on:?}");
        assert_ne!(on[0], on[1], "chunk {chunk}: both copies on one SDS");
    }
    let fair = 2.0 * chunks as f64 / 4.0;
    for (i, list) in inv.iter().enumerate() {
        let dev = (list.len() as f64 - fair) / fair;
        println!(
            "SDS {i}: {} chunk copies ({:+.1} % of fair share)",
            list.len(),
            dev * 100.0
        );
        assert!(
            dev.abs() <= 0.15,
            "SDS {i} holds {} copies, fair is {fair}",
            list.len()
        );
    }

    // kill -9 of the MDM: every object is still there after the restart.
    let before = c.state();
    c.kill9_mdm();
    c.restart_mdm();
    assert_eq!(before, c.state());

    // kill -9 of an SDS: every acknowledged byte is still there after the restart.
    c.kill9_sds(2);
    c.restart_sds(2);
    assert_pattern(portal, chunks);
    assert_eq!(inv, c.inventories(), "the restarted SDS lost chunk copies");
    drop(gw);
}

#[test]
fn bad_admin_input_is_refused_by_name_and_changes_nothing() {
    let c = Cluster::start(3);
    c.ok(&["--add_protection_domain", "--protection_domain_name", "pd1"]);
    c.ok(&["--add_protection_domain", "--protection_domain_name", "pd2"]);
    c.ok(&[
        "--add_storage_pool",
        "--protection_domain_name",
        "pd1",
        "--storage_pool_name",
        "pool1",
    ]);
    let d1 = c.device("d1", 1 << 30);
    let d2 = c.device("d2", 1 << 30);
    let add = |i: usize, dev: &Path, pd: &str| {
        let ip = c.sds_addrs[i].to_string();
        let name = format!("sds{}", i + 1);
        vec![
            "--add_sds".to_string(),
            "--sds_ip".into(),
            ip,
            "--protection_domain_name".into(),
            pd.into(),
            "--device_name".into(),
            dev.display().to_string(),
            "--storage_pool_name".into(),
            "pool1".into(),
            "--sds_name".into(),
            name,
        ]
    };
    let args = |v: &Vec<String>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let run = |v: Vec<String>| {
        let a = args(&v);
        c.ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    };
    run(add(0, &d1, "pd1"));

    // A pool in another protection domain.
    let bad = args(&add(1, &d2, "pd2"));
    c.refused(
        &bad.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        &["pool1", "pd2"],
    );
    run(add(1, &d2, "pd1"));

    // A device already claimed (by the other SDS of this system).
    c.refused(
        &[
            "--add_sds_device",
            "--sds_name",
            "sds2",
            "--device_path",
            d1.to_str().unwrap(),
            "--storage_pool_name",
            "pool1",
        ],
        &[d1.to_str().unwrap()],
    );
    // A duplicate name.
    c.refused(
        &["--add_protection_domain", "--protection_domain_name", "pd1"],
        &["pd1"],
    );
    // A thick volume larger than the pool's free capacity (2 x 1 GiB raw = ~1 GiB usable).
    c.refused(
        &[
            "--add_volume",
            "--protection_domain_name",
            "pd1",
            "--storage_pool_name",
            "pool1",
            "--size_gb",
            "8",
            "--volume_name",
            "big",
            "--thick_provisioned",
        ],
        &["big"],
    );
    // Unknown objects.
    c.refused(&["--query_volume", "--volume_name", "nope"], &["nope"]);
    c.refused(
        &[
            "--map_volume_to_sdc",
            "--volume_name",
            "nope",
            "--sdc_name",
            "gwx",
        ],
        &["nope"],
    );
    // A malformed CSV row: nothing of the file is applied.
    let d3 = c.device("d3", 1 << 30);
    let csv = c.dir.path().join("sds.csv");
    std::fs::write(
        &csv,
        format!(
            "IP,Password,Operating System,Is MDM/TB,MDM NIC,Is SDS,is SDC,SDS Name,Domain,SDS Device List,SDS Pool List\n\
             127.0.0.1:1,pw,linux,No,,Yes,No,sds9,pd1,{},pool1\n\
             not-an-ip,pw,linux,No,,Yes,No,sds10,pd1,{},pool1\n",
            d3.display(),
            d3.display()
        ),
    )
    .unwrap();
    c.refused(
        &["--add_sds_from_csv", csv.to_str().unwrap()],
        &["not-an-ip"],
    );

    // The installer CSV registers every SDS row (here the one still unused SDS).
    let good = c.dir.path().join("good.csv");
    std::fs::write(
        &good,
        format!(
            "IP,Password,Operating System,Is MDM/TB,MDM NIC,Is SDS,is SDC,SDS Name,Domain,SDS Device List,SDS Pool List\n\
             {},pw,linux,No,,Yes,No,sds3,pd1,\"{}\",pool1\n\
             127.0.0.9,pw,linux,Yes,eth0,No,No,,,,\n",
            c.sds_addrs[2],
            d3.display()
        ),
    )
    .unwrap();
    let out = c.ok(&["--add_sds_from_csv", good.to_str().unwrap()]);
    assert!(out.contains("sds3") && out.contains("skipped"), "{out}");
    let all = c.ok(&["--query_all_sds"]);
    assert!(
        all.contains("returned 3 SDS nodes") && all.contains("sds3"),
        "{all}"
    );

    // And an en dash pasted from a blog post gets a hint.
    let (ok, text) = c.scli(&["\u{2013}query_all_sds"]);
    assert!(!ok && text.contains("--query_all_sds"), "{text}");
}

/// `dreadnought up` runs MDM, three SDS and the gateway from its config and keeps
/// objects and data across a kill -9 and restart.
#[test]
fn up_runs_a_cluster_and_keeps_it_across_restarts() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let up = || common::cluster::up(dir.path(), 3, true);
    let (p, portal) = up();
    let mdm = p.field("cluster ready", "mdm");
    let out = qemu_io(portal, 0, &pattern(64, "write"));
    assert_eq!(out.matches("wrote 4096/4096").count(), 64, "{out}");
    let scli = |mdm: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_scli"))
            .args(["--mdm_ip", mdm, "--query_all_volumes"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let volumes = scli(&mdm);
    assert!(volumes.contains("demo0"), "{volumes}");
    p.kill9();

    let (p, portal) = up();
    assert!(p.log().contains("pds=1 sds=3 volumes=1"), "{}", p.log());
    assert_eq!(scli(&p.field("cluster ready", "mdm")), volumes);
    assert_pattern(portal, 64);
}

/// A single-copy pool on three SDS: a thin volume written through the gateway keeps
/// exactly one copy of each chunk, the pool says it has no redundancy and counts its
/// raw capacity as usable, and `--remove_sds` moves an SDS's only copies to the
/// others without losing a byte.
#[test]
fn single_copy_pool_keeps_one_copy_per_chunk_and_drains_a_removed_sds() {
    require_tool("qemu-io");
    let c = Cluster::start(3);
    c.ok(&["--add_protection_domain", "--protection_domain_name", "pd1"]);
    let mut add = vec!["--add_storage_pool"];
    add.extend(POOL_ARGS);
    add.extend(["--protection_mode", "single_copy"]);
    let created = c.ok(&add);
    assert!(created.contains("single copy (no redundancy"), "{created}");
    for i in 0..3 {
        c.add_sds_to_pool(i, 1 << 30);
    }
    let mut query = vec!["--query_storage_pool"];
    query.extend(POOL_ARGS);
    let text = c.ok(&query);
    for line in [
        "Protection: single copy (no redundancy: losing an SDS or device loses its chunks)",
        "Every chunk has one copy, so volumes can use all of the raw capacity:",
        // 1023 slots a device: its header takes the first.
        "2.9 GB (3069 MB) usable capacity",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let pool = c.pool();
    assert_eq!(pool["protection"], "SingleCopy");
    assert_eq!(
        num(&pool, "/usable_capacity_bytes"),
        num(&pool, "/raw_capacity_bytes")
    );

    let (gw, portal) = c.gateway(true);
    c.add_volume("scratch", "0.0625", &["--thin_provisioned"]);
    c.ok(&[
        "--map_volume_to_sdc",
        "--volume_name",
        "scratch",
        "--sdc_ip",
        "127.0.0.1",
    ]);
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let chunks = 64;
    let out = qemu_io(portal, 0, &pattern(chunks, "write"));
    assert_eq!(
        out.matches("wrote 4096/4096").count() as u64,
        chunks,
        "{out}"
    );
    assert_pattern(portal, chunks);
    let one_copy_each = |inv: &[Vec<(u64, u64)>]| {
        let mut holders: HashMap<u64, usize> = HashMap::new();
        for list in inv {
            for &(_, chunk) in list {
                *holders.entry(chunk).or_default() += 1;
            }
        }
        assert_eq!(holders.len() as u64, chunks, "every chunk was written");
        assert!(
            holders.values().all(|&n| n == 1),
            "chunks with several copies: {:?}",
            holders.iter().filter(|(_, &n)| n != 1).collect::<Vec<_>>()
        );
    };
    let inv = c.inventories();
    one_copy_each(&inv);
    assert!(inv.iter().all(|l| !l.is_empty()), "spread over every SDS");
    let pool = c.pool();
    assert_eq!(num(&pool, "/health/unprotected_bytes"), chunks * CHUNK_SIZE);
    assert_eq!(num(&pool, "/health/degraded_bytes"), 0);

    // sds1 leaves: its copies move to sds2 and sds3, each still the only one.
    c.ok(&["--remove_sds", "--sds_name", "sds1"]);
    c.wait_until("sds1 to leave", Duration::from_secs(60), |c| {
        match c.sds_state("sds1") {
            None => Ok(()),
            Some(s) => Err(format!("sds1 is {s}")),
        }
    });
    assert_pattern(portal, chunks);
    let rest: Vec<Vec<(u64, u64)>> = [1, 2]
        .iter()
        .map(|&i| {
            let inv = c.inventory(i).unwrap();
            inv.devices.into_iter().flat_map(|d| d.chunks).collect()
        })
        .collect();
    one_copy_each(&rest);
    let pool = c.pool();
    assert_eq!(num(&pool, "/health/unprotected_bytes"), chunks * CHUNK_SIZE);
    assert_eq!(num(&pool, "/rebuild/bytes_done"), 0, "nothing was rebuilt");
    assert!(num(&pool, "/rebalance/bytes_done") > 0, "{pool}");
    drop(gw);
}

/// A gateway and SDS on one host talk over the SDS's local socket, large reads landing
/// in shared memory the gateway lends; an SDS started with `--no-local-socket` is
/// reached over TCP. Whole-chunk and 4 KiB writes and reads through both paths, in one
/// two-copy pool, verify.
#[test]
fn local_sockets_and_tcp_carry_the_same_data() {
    require_tool("qemu-io");
    let mut c = Cluster::start_empty("127.0.0.1:0");
    c.spawn_sds("127.0.0.1:0", None);
    c.spawn_sds("127.0.0.1:0", None);
    let tcp_only = c.spawn_sds_with("127.0.0.1:0", None, &["--no-local-socket"]);
    c.add_pool();
    for i in 0..3 {
        c.add_sds_to_pool(i, 1 << 30);
    }
    let (gw, portal) = c.gateway(true);
    c.add_volume("vol", "0.125", &["--thin_provisioned"]);
    c.ok(&[
        "--map_volume_to_sdc",
        "--volume_name",
        "vol",
        "--sdc_name",
        "gw1",
    ]);
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let mut ops: Vec<WriteOp> = (0..24)
        .map(|i| WriteOp {
            offset: i * CHUNK_SIZE,
            len: CHUNK_SIZE,
            pattern: (i % 250) as u8 + 1,
        })
        .collect();
    ops.extend((24..48).map(|i| WriteOp {
        offset: i * CHUNK_SIZE + 3 * 4096,
        len: 4096,
        pattern: 0x80 + i as u8,
    }));
    let mut expected = Expected::default();
    write_all(portal, 0, &ops, &mut expected);
    verify(portal, 0, &expected);
    for (i, sds) in c.sds.iter().enumerate() {
        let log = sds.as_ref().unwrap().log();
        let attached = log.contains("local client attached");
        assert_eq!(
            attached,
            i != tcp_only,
            "SDS {i} local attachment; its log:\n{log}"
        );
    }
}
