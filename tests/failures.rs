//! Failure handling, end to end, as an admin and an initiator see it: separate MDM, SDS
//! and gateway processes on this machine, real I/O from QEMU's iSCSI driver (qemu-io),
//! failures injected with kill -9 and a cut network link.
//!
//! What these tests prove:
//! - an SDS killed under a running writer costs no acknowledged write and no write
//!   error, stalls the writer for less than 10 s, and forward rebuild gives every chunk
//!   its second copy back on the surviving SDS (checked in the SDS's own tables);
//! - when that SDS returns, the copies rebuilt elsewhere are freed and rebalance evens
//!   out capacity; an SDS that returns after a short outage gets its stale copies back
//!   by copying only the chunks written meanwhile (backward rebuild);
//! - a fifth SDS is filled by rebalance to its fair share, and `--remove_sds` drains an
//!   SDS onto the others before it disappears, with both copies of every chunk kept;
//! - a gateway killed mid-write loses no acknowledged write, and its restart on the
//!   same portal serves the same data;
//! - an SDS cut off from the cluster, once the MDM has moved the layout past it, never
//!   serves data for the old layout epoch when the link returns (fencing);
//! - two SDS lost at once fail only the chunks whose both copies they held, with a
//!   prompt MEDIUM ERROR, and lose nothing once they return;
//! - a device failing its writes (its filesystem full) is taken out like a partial SDS
//!   failure without an initiator error, and `--remove_sds_device` then removes it.
//!
//! Every wait is bounded and prints the MDM's view of the SDS and the pool on timeout.

mod common;

use common::cluster::{num, Cluster};
use common::netns::{self, Netns};
use common::proc::Proc;
use common::require_tool;
use common::writer::{spread_writes, verify, write_all, Expected, WriteOp, Writer};
use dreadnought::cluster::api::{SdsInventory, CHUNK_SIZE, NO_COPY};
use dreadnought::cluster::chunk::{ChunkClient, ChunkError, ChunkRef};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MB: f64 = 1_000_000.0;

/// A cluster of `sds` SDS (one sparse device of `device_bytes` each, named sds1...),
/// a gateway gw1 in demo mode, and volume "vol" of `size_gb` mapped to it at LUN 0.
fn cluster_with_volume(
    sds: usize,
    device_bytes: u64,
    size_gb: &str,
    thin: bool,
    gw_listen: Option<SocketAddr>,
) -> (Cluster, Proc, SocketAddr, u64) {
    let c = Cluster::named_pool(sds, device_bytes);
    let (gw, portal) = c.gateway_at("gw1", true, gw_listen);
    let prov = if thin {
        "--thin_provisioned"
    } else {
        "--thick_provisioned"
    };
    c.add_volume("vol", size_gb, &[prov]);
    map_to_gw1(&c, "vol");
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let vol = c.volume_id("vol");
    (c, gw, portal, vol)
}

fn map_to_gw1(c: &Cluster, volume: &str) {
    c.ok(&[
        "--map_volume_to_sdc",
        "--volume_name",
        volume,
        "--sdc_name",
        "gw1",
    ]);
}

fn chunks_of(ops: impl IntoIterator<Item = WriteOp>) -> BTreeSet<u64> {
    ops.into_iter().map(|o| o.offset / CHUNK_SIZE).collect()
}

/// The inventories of SDS `which`, each of which must answer.
fn inventories(c: &Cluster, which: &[usize]) -> BTreeMap<usize, SdsInventory> {
    which
        .iter()
        .map(|&i| {
            let inv = c.inventory(i).unwrap_or_else(|e| {
                panic!("{} did not give its inventory: {e}", Cluster::sds_name(i))
            });
            (i, inv)
        })
        .collect()
}

/// For every chunk of `volume`: the SDS holding a copy, one entry per copy.
fn holders(invs: &BTreeMap<usize, SdsInventory>, volume: u64) -> BTreeMap<u64, Vec<usize>> {
    let mut on: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (&i, inv) in invs {
        for d in &inv.devices {
            for &(v, chunk) in &d.chunks {
                if v == volume {
                    on.entry(chunk).or_default().push(i);
                }
            }
        }
    }
    on
}

/// Every chunk of `chunks` has exactly two copies on two different SDS of `live`, and
/// no chunk of the volume has more than two (stale copies were freed).
fn two_copies(
    c: &Cluster,
    volume: u64,
    chunks: &BTreeSet<u64>,
    live: &[usize],
) -> Result<(), String> {
    let invs = inventories(c, live);
    let on = holders(&invs, volume);
    let mut bad = Vec::new();
    for chunk in chunks {
        match on.get(chunk).map(Vec::as_slice) {
            Some([a, b]) if a != b => {}
            other => bad.push(format!("chunk {chunk} on {other:?}")),
        }
    }
    for (chunk, sds) in &on {
        if sds.len() > 2 {
            bad.push(format!(
                "chunk {chunk} has {} copies, on {sds:?}",
                sds.len()
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} chunks without exactly two copies on two SDS of {live:?}; first: {}",
            bad.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("; ")
        ))
    }
}

/// Waits (bounded) for `two_copies`: copies that rebuild or rebalance replaced are
/// freed by the MDM's sweep once the pool is idle, a moment after it reports healthy.
fn assert_two_copies(c: &Cluster, volume: u64, chunks: &BTreeSet<u64>, live: &[usize]) {
    let took = c.wait_until(
        "exactly two copies of every chunk in the SDS tables",
        Duration::from_secs(60),
        |c| two_copies(c, volume, chunks, live),
    );
    println!(
        "every one of {} written chunks has two copies on two different SDS of {live:?} \
         (left-over copies freed within {:.1} s)",
        chunks.len(),
        took.as_secs_f64()
    );
}

/// Whether each SDS of `live` holds within ±10 % of its fair share of the copies of
/// every volume: total copies × its slots / all their slots.
fn balanced(c: &Cluster, live: &[usize]) -> Result<String, String> {
    let invs = inventories(c, live);
    let held = |inv: &SdsInventory| {
        inv.devices
            .iter()
            .map(|d| d.chunks.len() as u64)
            .sum::<u64>()
    };
    let slots = |inv: &SdsInventory| inv.devices.iter().map(|d| d.slots).sum::<u64>();
    let total: u64 = invs.values().map(held).sum();
    let all_slots: u64 = invs.values().map(slots).sum();
    let mut lines = Vec::new();
    let mut off = Vec::new();
    for (&i, inv) in &invs {
        let fair = total as f64 * slots(inv) as f64 / all_slots as f64;
        let dev = (held(inv) as f64 - fair) / fair;
        let line = format!(
            "{}: {} copies, fair share {fair:.0} ({:+.1} %)",
            Cluster::sds_name(i),
            held(inv),
            dev * 100.0
        );
        if dev.abs() > 0.10 {
            off.push(line.clone());
        }
        lines.push(line);
    }
    if off.is_empty() {
        Ok(lines.join("\n"))
    } else {
        Err(format!(
            "not within ±10 % of the fair share: {}",
            off.join("; ")
        ))
    }
}

fn pool_field(c: &Cluster, ptr: &str) -> u64 {
    num(&c.pool(), ptr)
}

/// The MDM shows SDS `name` in `state` (e.g. "Down").
fn wait_state(c: &Cluster, name: &str, state: &str, within: Duration) -> Duration {
    c.wait_until(
        &format!("the MDM to show {name} {state}"),
        within,
        |c| match c.sds_state(name) {
            Some(s) if s == state => Ok(()),
            other => Err(format!("{name} is {other:?}")),
        },
    )
}

/// The pool has no degraded data and no rebuild left.
fn wait_rebuilt(c: &Cluster, within: Duration, rates: &mut Vec<u64>) -> Duration {
    c.wait_until("the pool to be fully protected again", within, |c| {
        let p = c.pool();
        let degraded = num(&p, "/health/degraded_bytes");
        let failed = num(&p, "/health/failed_bytes");
        let left = num(&p, "/rebuild/chunks_left");
        rates.push(num(&p, "/rebuild/rate_bytes_per_sec"));
        if degraded == 0 && failed == 0 && left == 0 {
            Ok(())
        } else {
            Err(format!(
                "degraded {degraded} B, failed {failed} B, rebuild chunks left {left}"
            ))
        }
    })
}

/// A long-running writer through the gateway has a third of its writes acknowledged,
/// then one SDS is killed with SIGKILL. Phase 2 brings it back, then kills another
/// with rebuild throttled, writes a little, and brings that one back too.
#[test]
fn sds_killed_mid_write_loses_nothing_and_rebuilds() {
    require_tool("qemu-io");
    require_tool("stdbuf");
    const VICTIM: usize = 2;
    const SECOND: usize = 1;
    let all = [0, 1, 2, 3];
    let (mut c, _gw, portal, vol) = cluster_with_volume(4, 4 << 30, "4", true, None);

    // Phase 1: kill -9 under the writer; forward rebuild.
    let ops = spread_writes(4096);
    let mut w = Writer::start(portal, 0, ops.clone(), 4);
    w.wait_acked(ops.len() / 3, Duration::from_secs(300));
    let done_before = pool_field(&c, "/rebuild/bytes_done");
    let killed_at = Instant::now();
    let acked_at_kill = w.acked();
    c.kill9_sds(VICTIM);
    println!(
        "killed {} (kill -9) after {acked_at_kill} acknowledged writes",
        Cluster::sds_name(VICTIM)
    );
    let report = w.finish(Duration::from_secs(300));
    let (stall, from) = report.longest_stall();
    println!(
        "writer: {} acknowledged, {} errors in {:.1} s; longest stall {:.3} s, from +{:.3} s (kill at +{:.3} s)",
        report.acked.len(),
        report.errors.len(),
        report.started.elapsed().as_secs_f64(),
        stall.as_secs_f64(),
        from.duration_since(report.started).as_secs_f64(),
        killed_at.duration_since(report.started).as_secs_f64()
    );
    assert!(
        report.errors.is_empty(),
        "the initiator saw write errors:\n{}",
        report.error_summary()
    );
    assert_eq!(report.acked.len(), ops.len(), "every write is acknowledged");
    assert!(
        stall < Duration::from_secs(10),
        "the writer stalled {stall:?} (limit 10 s)"
    );
    let mut expected = Expected::default();
    for (_, op) in &report.acked {
        expected.record(*op);
    }
    let written = chunks_of(expected.0.values().copied());

    let noticed = wait_state(
        &c,
        &Cluster::sds_name(VICTIM),
        "Down",
        Duration::from_secs(30),
    );
    println!(
        "the MDM showed it Down {:.1} s after the writer ended",
        noticed.as_secs_f64()
    );
    let mut rates = Vec::new();
    wait_rebuilt(&c, Duration::from_secs(180), &mut rates);
    let healed = killed_at.elapsed();
    let rebuilt = pool_field(&c, "/rebuild/bytes_done") - done_before;
    println!(
        "forward rebuild: {:.1} MB in {:.1} s from the kill = {:.2} MB/s (peak reported rate {:.2} MB/s)",
        rebuilt as f64 / MB,
        healed.as_secs_f64(),
        rebuilt as f64 / MB / healed.as_secs_f64(),
        rates.iter().max().copied().unwrap_or(0) as f64 / MB
    );
    assert!(
        rebuilt > 0,
        "the pool healed without the rebuild copying a byte"
    );
    let live: Vec<usize> = all.iter().copied().filter(|&i| i != VICTIM).collect();
    assert_two_copies(&c, vol, &written, &live);
    verify(portal, 0, &expected);

    // The victim returns: copies rebuilt elsewhere are freed, rebalance evens out.
    c.restart_sds(VICTIM);
    c.wait_until(
        "the returned SDS to be back, healed and balanced",
        Duration::from_secs(240),
        |c| {
            for &i in &all {
                match c.sds_state(&Cluster::sds_name(i)) {
                    Some(s) if s == "Connected" => {}
                    other => return Err(format!("{} is {other:?}", Cluster::sds_name(i))),
                }
            }
            let p = c.pool();
            for ptr in [
                "/health/degraded_bytes",
                "/rebuild/chunks_left",
                "/rebalance/chunks_left",
            ] {
                if num(&p, ptr) != 0 {
                    return Err(format!("{ptr} = {}", num(&p, ptr)));
                }
            }
            two_copies(c, vol, &written, &all)?;
            balanced(c, &all).map(drop)
        },
    );
    println!("after its return:\n{}", balanced(&c, &all).unwrap());
    verify(portal, 0, &expected);

    // Phase 2: backward rebuild. With rebuild throttled to a trickle, another SDS goes
    // down for a few seconds while 16 of its chunks are written.
    c.set_policy(false, "limit_bandwidth", &["--bandwidth_limit_kbps", "8"]);
    let p = c.pool();
    let (rb0, bal0) = (
        num(&p, "/rebuild/bytes_done"),
        num(&p, "/rebalance/bytes_done"),
    );
    let held: BTreeSet<u64> = holders(&inventories(&c, &[SECOND]), vol)
        .into_keys()
        .collect();
    let step = (held.len() / 16).max(1);
    let touched: Vec<u64> = held.iter().copied().step_by(step).take(16).collect();
    assert_eq!(
        touched.len(),
        16,
        "{} holds too few chunks",
        Cluster::sds_name(SECOND)
    );
    c.kill9_sds(SECOND);
    wait_state(
        &c,
        &Cluster::sds_name(SECOND),
        "Down",
        Duration::from_secs(30),
    );
    let again: Vec<WriteOp> = touched
        .iter()
        .map(|&chunk| WriteOp {
            offset: chunk * CHUNK_SIZE + (chunk % 16) * (64 << 10),
            len: 64 << 10,
            pattern: 251 + (chunk % 4) as u8,
        })
        .collect();
    write_all(portal, 0, &again, &mut expected);
    std::thread::sleep(Duration::from_secs(3));
    c.restart_sds(SECOND);
    // Once the MDM knows it is back, rebuild may run at full speed again: what it
    // copies from then on is what the returning SDS costs.
    let name = Cluster::sds_name(SECOND);
    c.wait_until(
        &format!("the MDM to see {name} return"),
        Duration::from_secs(30),
        |c| match c.sds_state(&name) {
            Some(s) if s != "Down" => Ok(()),
            other => Err(format!("{name} is {other:?}")),
        },
    );
    c.set_policy(false, "no_limit", &[]);
    let mut rates = Vec::new();
    wait_rebuilt(&c, Duration::from_secs(120), &mut rates);
    let p = c.pool();
    let moved = num(&p, "/rebuild/bytes_done") - rb0;
    let balanced_moved = num(&p, "/rebalance/bytes_done") - bal0;
    let size = 4u64 << 30;
    println!(
        "backward rebuild: {moved} bytes moved by rebuild ({balanced_moved} by rebalance) for {} chunks written while down; the volume is {size} bytes ({:.4} %)",
        again.len(),
        moved as f64 * 100.0 / size as f64
    );
    let allowance = again.len() as u64 * CHUNK_SIZE + (4 << 20);
    assert!(
        moved <= allowance,
        "the returning SDS cost {moved} bytes of rebuild; only the {} chunks written while it was down (at most {allowance} bytes with the allowance) should move",
        again.len()
    );
    assert_two_copies(&c, vol, &written, &all);
    verify(portal, 0, &expected);
}

/// A fifth SDS joins a pool holding a volume: rebalance gives it its fair share. Then
/// an SDS is removed: its copies move to the others before it disappears.
#[test]
fn fifth_sds_rebalances_and_remove_sds_drains() {
    require_tool("qemu-io");
    let (mut c, _gw, portal, vol) = cluster_with_volume(4, 2 << 30, "1", false, None);
    let ops = spread_writes(1024);
    let mut expected = Expected::default();
    write_all(portal, 0, &ops, &mut expected);
    let chunks: BTreeSet<u64> = (0..1024).collect();
    println!(
        "before:\n{}",
        balanced(&c, &[0, 1, 2, 3]).unwrap_or_else(|e| e)
    );

    let bal0 = pool_field(&c, "/rebalance/bytes_done");
    let fifth = c.spawn_sds("127.0.0.1:0", None);
    c.add_sds_to_pool(fifth, 2 << 30);
    let all = [0, 1, 2, 3, fifth];
    let took = c.wait_until(
        "rebalance onto the fifth SDS",
        Duration::from_secs(240),
        |c| {
            let left = pool_field(c, "/rebalance/chunks_left");
            if left != 0 {
                return Err(format!("rebalance chunks left {left}"));
            }
            balanced(c, &all).map(drop)
        },
    );
    println!(
        "rebalance: {:.1} MB in {:.1} s\n{}",
        (pool_field(&c, "/rebalance/bytes_done") - bal0) as f64 / MB,
        took.as_secs_f64(),
        balanced(&c, &all).unwrap()
    );
    assert_two_copies(&c, vol, &chunks, &all);
    verify(portal, 0, &expected);

    // Remove sds2 (healthy): it drains, then disappears.
    const GONE: usize = 1;
    let name = Cluster::sds_name(GONE);
    c.ok(&["--remove_sds", "--sds_name", &name]);
    let mut seen = BTreeSet::new();
    let took = c.wait_until(
        &format!("{name} to leave --query_all_sds"),
        Duration::from_secs(240),
        |c| match c.sds_state(&name) {
            None => Ok(()),
            Some(s) => {
                seen.insert(s.clone());
                Err(format!("{name} is {s}"))
            }
        },
    );
    println!(
        "{name} removed in {:.1} s (states seen while draining: {seen:?})",
        took.as_secs_f64()
    );
    match c.inventory(GONE) {
        Err(e) => println!("{name} no longer answers for the system: {e}"),
        Ok(inv) => {
            let left = holders(&BTreeMap::from([(GONE, inv)]), vol);
            assert!(
                left.is_empty(),
                "the removed {name} still lists {} chunk copies of the volume",
                left.len()
            );
        }
    }
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != GONE).collect();
    assert_two_copies(&c, vol, &chunks, &rest);
    verify(portal, 0, &expected);
    let pool = c.pool();
    assert_eq!(
        num(&pool, "/sds"),
        4,
        "the pool still counts the removed SDS: {pool}"
    );
}

/// The gateway is killed (SIGKILL) while qemu-io writes through it and restarted on
/// the same portal; libiscsi reconnects. Writes may fail while it is gone; every
/// acknowledged one must be there.
#[test]
fn gateway_killed_mid_write_keeps_every_acknowledged_write() {
    require_tool("qemu-io");
    require_tool("stdbuf");
    let listen = common::cluster::free_port();
    let (c, gw, portal, _vol) = cluster_with_volume(3, 2 << 30, "1", true, Some(listen));
    assert_eq!(portal, listen);
    let ops = spread_writes(1024);
    let mut w = Writer::start(portal, 0, ops.clone(), 1);
    w.wait_acked(ops.len() / 3, Duration::from_secs(300));
    let killed_at = Instant::now();
    gw.kill9();
    std::thread::sleep(Duration::from_secs(2));
    let (gw, again) = c.gateway_at("gw1", true, Some(listen));
    assert_eq!(again, portal);
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let restarted_at = Instant::now();
    let report = w.finish(Duration::from_secs(300));
    let (stall, _) = report.longest_stall();
    println!(
        "writer: {} of {} acknowledged ({} after the restart), {} errors; gateway down {:.1} s, longest stall {:.1} s",
        report.acked.len(),
        ops.len(),
        report.acked_after(restarted_at),
        report.errors.len(),
        restarted_at.duration_since(killed_at).as_secs_f64(),
        stall.as_secs_f64()
    );
    if !report.errors.is_empty() {
        println!(
            "errors while the gateway was gone:\n{}",
            report.error_summary()
        );
    }
    let mut expected = Expected::default();
    for (_, op) in &report.acked {
        expected.record(*op);
    }
    assert!(
        report.acked_after(restarted_at) > 0,
        "no write was acknowledged through the restarted gateway; qemu-io said:\n{}",
        report
            .log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    verify(portal, 0, &expected);
}

/// One SDS runs in a network namespace; its link is cut until the MDM has declared it
/// Down and moved the layout on, new data is written, and the link comes back. Asked
/// straight away with the old epoch, that SDS refuses: it never serves its stale copy.
#[test]
fn partitioned_sds_is_fenced() {
    if let Some(why) = netns::unavailable() {
        println!("SKIP partitioned_sds_is_fenced: needs root and `ip netns` ({why})");
        return;
    }
    require_tool("qemu-io");
    let ns = Netns::create();
    // Everyone listens on addresses every party can reach: the host side on the
    // host's veth address (the namespace reaches the MDM at the IP the MDM contacted
    // it from, and forwards mirror writes to its peers there), C on the inner one.
    let host = format!("{}:0", ns.host_ip);
    let mut c = Cluster::start_empty(&host);
    c.spawn_sds(&host, None);
    c.spawn_sds(&host, None);
    let inner = c.spawn_sds(&format!("{}:0", ns.ns_ip), Some(&ns.name));
    c.add_pool();
    for i in 0..3 {
        c.add_sds_to_pool(i, 1 << 30);
    }
    let (gw, portal) = c.gateway(true);
    c.add_volume("vol", "0.125", &["--thin_provisioned"]);
    map_to_gw1(&c, "vol");
    gw.wait_for("pool volume online", Duration::from_secs(30));
    let vol = c.volume_id("vol");
    let ops = spread_writes(128);
    let mut expected = Expected::default();
    write_all(portal, 0, &ops, &mut expected);

    let before = c.layout(vol);
    let epoch = before.epoch;
    let name = Cluster::sds_name(inner);
    let c_id = c.sds_id(&name);
    let (chunk, device) = before
        .chunks
        .iter()
        .enumerate()
        .find_map(|(k, pair)| {
            pair.iter()
                .filter(|&&d| d != NO_COPY)
                .map(|&d| &before.devices[d as usize])
                .find(|d| d.sds_id == c_id)
                .map(|d| (k as u64, d.device_id))
        })
        .unwrap_or_else(|| panic!("{name} holds no chunk of the volume: {before:?}"));
    let op = ops[chunk as usize];
    println!("chunk {chunk} has a copy on {name} (device {device:016x}); layout epoch {epoch}");

    ns.cut();
    let cut_at = Instant::now();
    c.wait_until(
        &format!("{name} Down and the layout past epoch {epoch}"),
        Duration::from_secs(30),
        |c| {
            let state = c.sds_state(&name);
            let now = c.layout(vol).epoch;
            if state.as_deref() == Some("Down") && now > epoch {
                Ok(())
            } else {
                Err(format!("{name} is {state:?}, layout epoch {now}"))
            }
        },
    );
    println!("{name} Down after {:.1} s", cut_at.elapsed().as_secs_f64());
    let new = WriteOp {
        pattern: 0xEE,
        ..op
    };
    write_all(portal, 0, &[new], &mut expected);

    ns.restore();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let at = ChunkRef {
        volume: vol,
        chunk,
        device,
        epoch,
    };
    let offset = (op.offset % CHUNK_SIZE) as u32;
    let (mut fenced, mut stale, mut unreachable) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let client = ChunkClient::new(c.sds_addrs[inner]);
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), client.read(at, offset, 4096)).await
        });
        match answer {
            Ok(Err(ChunkError::Fenced(_))) => fenced += 1,
            Ok(Err(ChunkError::StaleEpoch { .. })) => stale += 1,
            Ok(Err(ChunkError::Unreachable { .. })) | Err(_) => unreachable += 1,
            Ok(Ok(data)) => panic!(
                "{name} served {} bytes (first byte {:#04x}) for epoch {epoch} after the MDM moved past it",
                data.len(),
                data.first().copied().unwrap_or(0)
            ),
            Ok(Err(other)) => panic!(
                "{name} answered an old-epoch read with {other:?}, not Fenced or StaleEpoch"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "old-epoch reads from {name} after the link returned: {fenced} Fenced, {stale} StaleEpoch, {unreachable} not reached"
    );
    assert!(
        fenced + stale > 0,
        "{name} never answered in 5 s after the link came back"
    );
    verify(portal, 0, &expected);
}

/// Baseline for the stall measurement: on a healthy cluster the same writer has no
/// errors and no long gap. Passes today; the others need the failure handling.
#[test]
fn writer_on_a_healthy_cluster_never_stalls() {
    require_tool("qemu-io");
    require_tool("stdbuf");
    let (c, _gw, portal, vol) = cluster_with_volume(3, 2 << 30, "1", true, None);
    let ops = spread_writes(1024);
    let w = Writer::start(portal, 0, ops.clone(), 4);
    let report = w.finish(Duration::from_secs(300));
    let (stall, _) = report.longest_stall();
    println!(
        "writer: {} acknowledged in {:.1} s, longest gap {:.3} s",
        report.acked.len(),
        report.started.elapsed().as_secs_f64(),
        stall.as_secs_f64()
    );
    assert!(report.errors.is_empty(), "{}", report.error_summary());
    assert_eq!(report.acked.len(), ops.len());
    assert!(stall < Duration::from_secs(10), "stalled {stall:?}");
    let mut expected = Expected::default();
    for (_, op) in &report.acked {
        expected.record(*op);
    }
    assert_two_copies(&c, vol, &chunks_of(ops), &[0, 1, 2]);
    verify(portal, 0, &expected);
    let p = c.pool();
    for ptr in [
        "/health/degraded_bytes",
        "/health/failed_bytes",
        "/rebuild/chunks_left",
    ] {
        assert_eq!(num(&p, ptr), 0, "{ptr} on a healthy pool: {p}");
    }
}

/// Two SDS of four die before rebuild could help (rebuild is throttled to a crawl):
/// chunks whose both copies were on them answer reads at once with MEDIUM ERROR /
/// UNRECOVERED READ ERROR, every other chunk keeps working, and once both SDS return
/// every acknowledged write reads back.
#[test]
fn two_failures_fail_only_the_chunks_that_lost_both_copies() {
    require_tool("qemu-io");
    let (mut c, _gw, portal, vol) = cluster_with_volume(4, 1 << 30, "0.0625", true, None);
    let ops = spread_writes(64);
    let mut expected = Expected::default();
    write_all(portal, 0, &ops, &mut expected);
    c.set_policy(false, "limit_bandwidth", &["--bandwidth_limit_kbps", "1"]);
    let layout = c.layout(vol);
    let (a, b) = (c.sds_id("sds1"), c.sds_id("sds2"));
    let lost: BTreeSet<u64> = layout
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, pair)| {
            let mut on: Vec<u64> = pair
                .iter()
                .filter(|&&x| x != NO_COPY)
                .map(|&x| layout.devices[x as usize].sds_id)
                .collect();
            on.sort_unstable();
            on == [a.min(b), a.max(b)]
        })
        .map(|(i, _)| i as u64)
        .collect();
    assert!(
        !lost.is_empty(),
        "no chunk has both copies on sds1 and sds2"
    );
    c.kill9_sds(0);
    c.kill9_sds(1);
    wait_state(&c, "sds1", "Down", Duration::from_secs(30));
    wait_state(&c, "sds2", "Down", Duration::from_secs(30));
    let failed = pool_field(&c, "/health/failed_bytes");
    assert_eq!(failed, lost.len() as u64 * CHUNK_SIZE, "{}", c.pool());

    // A lost chunk: a prompt, precise error; a surviving one: its data.
    let mut ini = common::cluster::logged_in(portal, "iqn.2026-11.test:two-failures");
    let read10 = |lba: u64| {
        let l = (lba as u32).to_be_bytes();
        [0x28, 0, l[0], l[1], l[2], l[3], 0, 0, 8, 0]
    };
    let first = *lost.iter().next().unwrap();
    let started = Instant::now();
    let r = ini.scsi(&read10(first * CHUNK_SIZE / 512), 4096, None, 0);
    let took = started.elapsed();
    assert_eq!(r.status, 2, "a lost chunk must answer CHECK CONDITION");
    assert_eq!(
        (r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
        (0x03, 0x11, 0x00),
        "MEDIUM ERROR / UNRECOVERED READ ERROR"
    );
    assert!(took < Duration::from_secs(2), "the error took {took:?}");
    println!(
        "{} of 64 chunks lost both copies; a read of one failed in {:.3} s with MEDIUM ERROR 11/00",
        lost.len(),
        took.as_secs_f64()
    );
    let survivor = (0..64u64).find(|c| !lost.contains(c)).unwrap();
    let r = ini.scsi(&read10(survivor * CHUNK_SIZE / 512), 4096, None, 0);
    assert_eq!(r.status, 0, "a chunk with a running copy must read");
    drop(ini);
    let surviving = Expected(
        expected
            .0
            .iter()
            .filter(|(off, _)| !lost.contains(&(*off / CHUNK_SIZE)))
            .map(|(k, v)| (*k, *v))
            .collect(),
    );
    verify(portal, 0, &surviving);

    c.restart_sds(0);
    c.restart_sds(1);
    c.set_policy(false, "no_limit", &[]);
    let mut rates = Vec::new();
    wait_rebuilt(&c, Duration::from_secs(120), &mut rates);
    verify(portal, 0, &expected);
    assert_two_copies(&c, vol, &chunks_of(ops), &[0, 1, 2, 3]);
}

/// A tmpfs mount, unmounted when dropped: a small filesystem to put an SDS device on
/// that runs out of space, which the SDS sees as the device failing writes.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .args(["dntest", dir.to_str()?])
            .status()
            .ok()?
            .success();
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// One SDS's device sits on a 24 MiB filesystem and fails its writes (ENOSPC) part
/// way through filling a volume. The writer sees no error; the device is marked
/// failed, its copies rebuilt on the other SDS (which stays up), and
/// `--remove_sds_device` then forgets it; every write reads back.
#[test]
fn a_device_failing_writes_is_rebuilt_around_and_removed() {
    require_tool("qemu-io");
    let c = Cluster::start(4);
    let Some(fs) = Tmpfs::mount(c.dir.path().join("small-fs"), 24 << 20) else {
        println!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    };
    c.add_pool();
    for i in 0..3 {
        c.add_sds_to_pool(i, 1 << 30);
    }
    let dev = fs.0.join("dev3");
    std::fs::File::create(&dev)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    c.add_sds_with(3, &dev, Some("sds4"));
    let (_gw, portal) = c.gateway_at("gw1", true, None);
    c.add_volume("vol", "0.25", &["--thin_provisioned"]);
    map_to_gw1(&c, "vol");
    let vol = c.volume_id("vol");
    let ops: Vec<WriteOp> = (0..256u64)
        .map(|i| WriteOp {
            offset: i * CHUNK_SIZE,
            len: CHUNK_SIZE,
            pattern: (i % 250) as u8 + 1,
        })
        .collect();
    let report = Writer::start(portal, 0, ops.clone(), 4).finish(Duration::from_secs(300));
    let (stall, _) = report.longest_stall();
    println!(
        "writer: {} of {} acknowledged, {} errors; longest stall {:.3} s",
        report.acked.len(),
        ops.len(),
        report.errors.len(),
        stall.as_secs_f64()
    );
    assert!(report.errors.is_empty(), "{}", report.error_summary());
    assert!(stall < Duration::from_secs(10), "stalled {stall:?}");
    let mut expected = Expected::default();
    for (_, op) in &report.acked {
        expected.record(*op);
    }
    let sds4 = c.json(&["--query_sds", "--sds_name", "sds4"]);
    assert_eq!(sds4["devices"][0]["failed"], true, "{sds4}");
    assert_eq!(
        sds4["state"], "Connected",
        "the SDS itself stays up: {sds4}"
    );
    let mut rates = Vec::new();
    wait_rebuilt(&c, Duration::from_secs(120), &mut rates);
    assert_two_copies(&c, vol, &chunks_of(ops.clone()), &[0, 1, 2]);
    verify(portal, 0, &expected);
    c.ok(&[
        "--remove_sds_device",
        "--sds_name",
        "sds4",
        "--device_name",
        dev.to_str().unwrap(),
    ]);
    c.wait_until(
        "the failed device to be removed",
        Duration::from_secs(30),
        |c| {
            let s = c.json(&["--query_sds", "--sds_name", "sds4"]);
            match s["devices"].as_array().map(Vec::len) {
                Some(0) => Ok(()),
                n => Err(format!("sds4 still lists {n:?} devices")),
            }
        },
    );
    verify(portal, 0, &expected);
    drop(fs);
}
