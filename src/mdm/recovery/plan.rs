//! Which copies to make next, from the state alone: new second copies for degraded
//! chunks (rebuild, two-copy pools only) and moves that bring every device to its fair
//! share (rebalance, and draining an SDS being removed; a single-copy pool's chunks
//! move their one copy). Pure and deterministic.

use crate::cluster::api::{Health, Protection, CHUNK_SIZE, NO_COPY};
use crate::mdm::change::ChunkId;
use crate::mdm::model::State;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A copy to start: (chunk, the device it replaces or `None` for a missing secondary,
/// the target device).
pub type Start = (ChunkId, Option<u64>, u64);

/// One device of a pool as the planner sees it.
#[derive(Debug, Clone)]
struct Dev {
    id: u64,
    sds: u64,
    slots: u64,
    /// May receive copies: its SDS is up and neither is being removed.
    open: bool,
    /// Its SDS is down: its copies are not counted and never moved.
    down: bool,
    copies: u64,
}

/// The devices of `pool` with the copies each holds in the layouts (whole or syncing).
fn devices(st: &State, pool: u64) -> Vec<Dev> {
    let mut count: HashMap<u64, u64> = HashMap::new();
    for v in st.volumes.values().filter(|v| v.pool == pool) {
        for c in 0..v.chunks.len() {
            for d in v.copies(c).into_iter().flatten() {
                *count.entry(d).or_default() += 1;
            }
        }
    }
    st.pool_devices(pool)
        .map(|(s, d)| Dev {
            id: d.id,
            sds: s.id,
            slots: d.slots,
            open: s.takes_copies() && !d.removing && !d.failed && d.slots > 0,
            down: s.down || d.failed,
            copies: count.get(&d.id).copied().unwrap_or(0),
        })
        .collect()
}

/// The open device, not on any SDS of `avoid`, that is least full after taking one
/// more copy; `None` when every such device is full.
fn least_full(devs: &[Dev], avoid: &[u64]) -> Option<usize> {
    devs.iter()
        .enumerate()
        .filter(|(_, d)| d.open && d.copies < d.slots && !avoid.contains(&d.sds))
        .min_by(|(_, a), (_, b)| {
            ((a.copies + 1) as u128 * b.slots as u128)
                .cmp(&((b.copies + 1) as u128 * a.slots as u128))
                .then(a.id.cmp(&b.id))
        })
        .map(|(i, _)| i)
}

/// Up to `max` degraded chunks of `pool` (no secondary, primary on a running SDS) that
/// are not `busy`, each with the device to rebuild its second copy on. None in a
/// single-copy pool, whose chunks have no second copy to lose.
pub fn rebuilds(st: &State, pool: u64, max: usize, busy: &HashSet<ChunkId>) -> Vec<Start> {
    if st.protection(pool) == Protection::SingleCopy {
        return Vec::new();
    }
    let mut devs = devices(st, pool);
    let index: HashMap<u64, usize> = devs.iter().enumerate().map(|(i, d)| (d.id, i)).collect();
    let mut out = Vec::new();
    for v in st.volumes.values().filter(|v| v.pool == pool) {
        for (c, &[p, s]) in v.chunks.iter().enumerate() {
            if out.len() >= max {
                return out;
            }
            let key = (v.id, c as u64);
            if s != NO_COPY || busy.contains(&key) {
                continue;
            }
            let primary = &devs[index[&v.devices[p as usize]]];
            if primary.down {
                continue;
            }
            if let Some(t) = least_full(&devs, &[primary.sds]) {
                devs[t].copies += 1;
                out.push((key, None, devs[t].id));
            }
        }
    }
    out
}

/// Copies each open device should hold for the pool to be even, per device id: the
/// copies on running SDS shared in proportion to slots among open devices (0 for a
/// device or SDS being removed).
fn fair_shares(devs: &[Dev]) -> HashMap<u64, f64> {
    let total: u64 = devs.iter().filter(|d| !d.down).map(|d| d.copies).sum();
    let slots: u64 = devs.iter().filter(|d| d.open).map(|d| d.slots).sum();
    devs.iter()
        .map(|d| {
            let share = if d.open && slots > 0 {
                total as f64 * d.slots as f64 / slots as f64
            } else {
                0.0
            };
            (d.id, share)
        })
        .collect()
}

/// Copies that would still have to move for the pool to be even.
pub fn moves_left(st: &State, pool: u64) -> u64 {
    let devs = devices(st, pool);
    let fair = fair_shares(&devs);
    devs.iter()
        .filter(|d| !d.down)
        .map(|d| (d.copies as f64 - fair[&d.id]).floor().max(0.0) as u64)
        .sum()
}

/// Whether rebalance may plan in `pool`: no chunk misses a copy its pool keeps and no
/// copy is being made, so the copies counted are the ones that stay (rebuild goes
/// first, and a move's target is not counted twice).
pub fn settled(st: &State, pool: u64) -> bool {
    health(st, pool).degraded_bytes == 0
        && !st
            .volumes
            .values()
            .any(|v| v.pool == pool && !v.syncing.is_empty())
}

/// Up to `max` moves toward an even pool: from the device most over its fair share to
/// the one most under it, picking chunks whose other copy (if any) is on neither SDS.
/// Only for a `settled` pool.
pub fn moves(st: &State, pool: u64, max: usize) -> Vec<Start> {
    let mut devs = devices(st, pool);
    let fair = fair_shares(&devs);
    let keeps = st.protection(pool).copies();
    // Chunk copies per device, with the chunk's other copy's device.
    let mut on: BTreeMap<u64, Vec<(ChunkId, Option<u64>)>> = BTreeMap::new();
    for v in st.volumes.values().filter(|v| v.pool == pool) {
        for c in 0..v.chunks.len() {
            let copies = v.copies(c);
            // Only a chunk with every copy its pool keeps, none being filled, moves.
            let whole = copies.iter().flatten().count() as u64 == keeps;
            if !whole || v.syncing.contains(&(c as u64)) {
                continue;
            }
            for (i, d) in copies.iter().enumerate() {
                if let Some(d) = d {
                    on.entry(*d)
                        .or_default()
                        .push(((v.id, c as u64), copies[1 - i]));
                }
            }
        }
    }
    let sds_of: HashMap<u64, u64> = devs.iter().map(|d| (d.id, d.sds)).collect();
    let mut taken: HashSet<ChunkId> = HashSet::new();
    let mut out = Vec::new();
    while out.len() < max {
        let excess = |d: &Dev| d.copies as f64 - fair[&d.id];
        let Some(src) = devs
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.down && excess(d) >= 1.0)
            .max_by(|(_, a), (_, b)| excess(a).total_cmp(&excess(b)).then(b.id.cmp(&a.id)))
            .map(|(i, _)| i)
        else {
            break;
        };
        let deficit = |d: &Dev| fair[&d.id] - d.copies as f64;
        // A device being drained must empty even if that leaves another one a copy
        // over its share (the other copy of its last chunk may sit on the only device
        // under its share); evening out is for open devices.
        let draining = !devs[src].open;
        let mut moved = false;
        let mut targets: Vec<usize> = (0..devs.len())
            .filter(|&i| {
                let d = &devs[i];
                d.open
                    && d.copies < d.slots
                    && (deficit(d) >= 1.0 || draining)
                    && d.sds != devs[src].sds
            })
            .collect();
        targets.sort_by(|&a, &b| deficit(&devs[b]).total_cmp(&deficit(&devs[a])));
        'pick: for t in targets {
            let list = on.get(&devs[src].id).map(Vec::as_slice).unwrap_or(&[]);
            for &(chunk, other) in list {
                if taken.contains(&chunk) {
                    continue;
                }
                let other_sds = other.and_then(|o| sds_of.get(&o).copied());
                if other_sds == Some(devs[t].sds) {
                    continue;
                }
                taken.insert(chunk);
                devs[src].copies -= 1;
                devs[t].copies += 1;
                out.push((chunk, Some(devs[src].id), devs[t].id));
                moved = true;
                break 'pick;
            }
        }
        if !moved {
            break;
        }
    }
    out
}

/// Whether the copies of `sds` (or of its one `device`) fit on the rest of their
/// pools, and the pools keep an SDS per copy their chunks have (two, or one in a
/// single-copy pool). The error says what is missing.
pub fn removal_fits(st: &State, sds: u64, device: Option<u64>) -> Result<(), String> {
    let leaves = |d: &Dev| d.sds == sds && device.is_none_or(|x| x == d.id);
    let pools: HashSet<u64> = st.sds[&sds]
        .devices
        .iter()
        .filter(|d| device.is_none_or(|x| x == d.id))
        .map(|d| d.pool)
        .collect();
    for pool in pools {
        let devs = devices(st, pool);
        let leaving: u64 = devs.iter().filter(|d| leaves(d)).map(|d| d.copies).sum();
        let rest: Vec<&Dev> = devs.iter().filter(|d| !leaves(d) && d.open).collect();
        let free: u64 = rest.iter().map(|d| d.slots.saturating_sub(d.copies)).sum();
        let mut others: Vec<u64> = rest.iter().map(|d| d.sds).collect();
        others.sort_unstable();
        others.dedup();
        let name = st.pool_name(pool);
        let keeps = st.protection(pool);
        if leaving > 0 && (others.len() as u64) < keeps.copies() {
            return Err(match keeps {
                Protection::TwoCopies => format!(
                    "storage pool {name} would keep {} running SDS, and the two copies of a chunk need two; add an SDS first",
                    others.len()
                ),
                Protection::SingleCopy => format!(
                    "storage pool {name} would keep no running SDS for its chunks; add an SDS first"
                ),
            });
        }
        if leaving > free {
            return Err(format!(
                "storage pool {name} has room for {free} of the {leaving} chunk copies ({} MB) on its other SDS; add devices or SDS first",
                leaving * CHUNK_SIZE / 1_000_000
            ));
        }
        // The sums can pass while copies have nowhere to go (the only room is on
        // the SDS holding their other copy): drain a copy of the state as the
        // driver would, and see what is left.
        let stuck = drain_left(st, pool, sds, device);
        if stuck > 0 {
            return Err(format!(
                "storage pool {name} has room for the copies, but {stuck} of them could only go to SDS that already hold a copy of their chunk (a copy never moves within its SDS); add devices to other SDS first"
            ));
        }
    }
    Ok(())
}

/// Copies left on the leaving SDS (or device) of `pool` once moves stop, in a
/// simulated drain. Chunks already being copied are not counted: their fate is the
/// running copy's.
fn drain_left(st: &State, pool: u64, sds: u64, device: Option<u64>) -> u64 {
    let mut sim = st.clone();
    if let Some(s) = sim.sds.get_mut(&sds) {
        match device {
            None => s.removing = true,
            Some(id) => s
                .devices
                .iter_mut()
                .filter(|d| d.id == id)
                .for_each(|d| d.removing = true),
        }
    }
    loop {
        let m = moves(&sim, pool, 1024);
        let applied = crate::mdm::change::start_copies(&mut sim, &m);
        if applied.is_empty() {
            break;
        }
        let done: Vec<_> = applied.iter().map(|&(c, _, t)| (c, t)).collect();
        crate::mdm::change::finish_copies(&mut sim, &done);
    }
    let leaving =
        |d: u64| sim.sds_of(d).is_some_and(|s| s.id == sds) && device.is_none_or(|x| x == d);
    sim.volumes
        .values()
        .filter(|v| v.pool == pool)
        .flat_map(|v| {
            let leaving = &leaving;
            (0..v.chunks.len()).filter(move |&c| {
                !v.syncing.contains(&(c as u64)) && v.copies(c).into_iter().flatten().any(leaving)
            })
        })
        .count() as u64
}

/// Protection of a pool's data. A single-copy pool's chunk on a running SDS is
/// unprotected by design (moving or not), never degraded: it has every copy its pool
/// keeps.
pub fn health(st: &State, pool: u64) -> Health {
    let down = crate::mdm::change::down_devices(st);
    let single = st.protection(pool) == Protection::SingleCopy;
    let mut h = Health::default();
    for v in st.volumes.values().filter(|v| v.pool == pool) {
        for (c, &[p, s]) in v.chunks.iter().enumerate() {
            let bytes = CHUNK_SIZE;
            if down.contains(&v.devices[p as usize]) {
                h.failed_bytes += bytes;
            } else if single {
                h.unprotected_bytes += bytes;
            } else if s == NO_COPY || v.syncing.contains(&(c as u64)) {
                h.degraded_bytes += bytes;
            } else {
                h.protected_bytes += bytes;
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::change::tests::World;
    use crate::mdm::change::{fail_sds, finish_copies, start_copies};

    fn copies_per_sds(st: &State) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for v in st.volumes.values() {
            for c in 0..v.chunks.len() {
                for d in v.copies(c).into_iter().flatten() {
                    *out.entry(st.sds_of(d).unwrap().id).or_default() += 1;
                }
            }
        }
        out
    }

    /// Plans and completes moves, `batch` at a time, until none is left.
    fn settle(w: &mut World, pool: u64, batch: usize) {
        loop {
            let m = moves(&w.st, pool, batch);
            if m.is_empty() {
                return;
            }
            start_copies(&mut w.st, &m);
            let done: Vec<_> = m.iter().map(|&(c, _, t)| (c, t)).collect();
            finish_copies(&mut w.st, &done);
        }
    }

    fn pool(w: &World) -> u64 {
        w.st.pools.values().find(|p| p.name == "pool1").unwrap().id
    }

    #[test]
    fn rebuild_targets_are_on_other_sds_and_spread() {
        let mut w = World::new();
        let sds: Vec<u64> = (1..=4)
            .map(|i| w.sds(&format!("10.0.0.{i}"), &[1000]))
            .collect();
        let v = w.volume("v", 400, true);
        fail_sds(&mut w.st, sds[0]).unwrap();
        let pool = pool(&w);
        assert!(health(&w.st, pool).degraded_bytes > 0);
        let starts = rebuilds(&w.st, pool, usize::MAX, &HashSet::new());
        assert_eq!(
            starts.len() as u64,
            health(&w.st, pool).degraded_bytes / CHUNK_SIZE
        );
        let mut per_target: BTreeMap<u64, u64> = BTreeMap::new();
        for &((_, c), from, to) in &starts {
            assert_eq!(from, None);
            let p = w.st.volumes[&v].copies(c as usize)[0].unwrap();
            assert_ne!(w.st.sds_of(p).unwrap().id, w.st.sds_of(to).unwrap().id);
            assert_ne!(w.st.sds_of(to).unwrap().id, sds[0]);
            *per_target.entry(w.st.sds_of(to).unwrap().id).or_default() += 1;
        }
        assert_eq!(per_target.len(), 3, "{per_target:?}");
        start_copies(&mut w.st, &starts);
        let done: Vec<_> = starts.iter().map(|&(c, _, t)| (c, t)).collect();
        finish_copies(&mut w.st, &done);
        let h = health(&w.st, pool);
        assert_eq!((h.degraded_bytes, h.failed_bytes), (0, 0));
        assert!(rebuilds(&w.st, pool, 10, &HashSet::new()).is_empty());
        w.st.check().unwrap();
    }

    #[test]
    fn a_new_sds_is_filled_to_its_fair_share() {
        let mut w = World::new();
        for i in 1..=4 {
            w.sds(&format!("10.0.0.{i}"), &[1000]);
        }
        w.volume("v", 1000, true);
        let fifth = w.sds("10.0.0.5", &[1000]);
        let pool = pool(&w);
        assert!(moves_left(&w.st, pool) >= 390);
        settle(&mut w, pool, 64);
        let per = copies_per_sds(&w.st);
        for (&s, &n) in &per {
            assert!(
                (n as f64 - 400.0).abs() <= 4.0,
                "SDS {s:x} holds {n}: {per:?}"
            );
        }
        assert!(per[&fifth] >= 396);
        assert_eq!(moves_left(&w.st, pool), 0);
        w.st.check().unwrap();
    }

    /// A single-copy pool on `sds` SDS of one 100-slot device each, and a thin volume
    /// of `chunks` chunks.
    fn single_copy_world(sds: u8, chunks: u64) -> (World, Vec<u64>) {
        let mut w = World::new();
        w.single_copy();
        let ids = (1..=sds)
            .map(|i| w.sds(&format!("10.0.0.{i}"), &[100]))
            .collect();
        w.volume("v", chunks, true);
        (w, ids)
    }

    /// Every chunk of the pool has one copy and no secondary.
    fn assert_single_copies(st: &State) {
        for v in st.volumes.values() {
            assert!(v.syncing.is_empty());
            for c in 0..v.chunks.len() {
                let [p, s] = v.copies(c);
                assert!(p.is_some() && s.is_none(), "chunk {c}: {p:?} {s:?}");
            }
        }
    }

    #[test]
    fn a_single_copy_pool_is_never_rebuilt_and_its_health_is_unprotected() {
        let (mut w, sds) = single_copy_world(3, 60);
        let pool = pool(&w);
        let h = health(&w.st, pool);
        assert_eq!(
            (h.protected_bytes, h.degraded_bytes, h.unprotected_bytes),
            (0, 0, 60 * CHUNK_SIZE)
        );
        assert!(settled(&w.st, pool));
        assert!(rebuilds(&w.st, pool, usize::MAX, &HashSet::new()).is_empty());
        fail_sds(&mut w.st, sds[0]).unwrap();
        let h = health(&w.st, pool);
        assert!(h.failed_bytes > 0 && h.degraded_bytes == 0);
        assert_eq!(h.failed_bytes + h.unprotected_bytes, 60 * CHUNK_SIZE);
        assert!(rebuilds(&w.st, pool, usize::MAX, &HashSet::new()).is_empty());
        // The failed copies stay put: moving them would need a running source.
        assert!(moves(&w.st, pool, 1024).iter().all(|&(_, from, _)| w
            .st
            .sds_of(from.unwrap())
            .unwrap()
            .id
            != sds[0]));
    }

    #[test]
    fn a_single_copy_pool_rebalances_and_drains_down_to_one_sds() {
        let (mut w, sds) = single_copy_world(3, 150);
        let fourth = w.sds("10.0.0.4", &[100]);
        let pool = pool(&w);
        assert!(moves_left(&w.st, pool) >= 35);
        // A move in flight is not counted twice: nothing more is planned meanwhile.
        let m = moves(&w.st, pool, 4);
        start_copies(&mut w.st, &m);
        assert!(!settled(&w.st, pool));
        let done: Vec<_> = m.iter().map(|&(c, _, t)| (c, t)).collect();
        finish_copies(&mut w.st, &done);
        settle(&mut w, pool, 16);
        assert_single_copies(&w.st);
        let per = copies_per_sds(&w.st);
        assert!(per.values().all(|&n| (36..=39).contains(&n)), "{per:?}");
        assert!(per[&fourth] >= 36);
        // 150 copies fit on two SDS (200 slots), and one SDS is enough for one copy.
        for &gone in &sds[..2] {
            removal_fits(&w.st, gone, None).unwrap();
            w.st.sds.get_mut(&gone).unwrap().removing = true;
            settle(&mut w, pool, 16);
        }
        let e = removal_fits(&w.st, sds[2], None).unwrap_err();
        assert!(e.contains("room for 25 of the 75"), "{e}");
        w.sds("10.0.0.5", &[100]);
        removal_fits(&w.st, sds[2], None).unwrap();
        w.st.sds.get_mut(&sds[2]).unwrap().removing = true;
        settle(&mut w, pool, 16);
        removal_fits(&w.st, fourth, None).unwrap_err();
        assert_single_copies(&w.st);
        let per = copies_per_sds(&w.st);
        assert_eq!(per.keys().copied().collect::<Vec<_>>().len(), 2, "{per:?}");
        assert_eq!(per.values().sum::<u64>(), 150);
        w.st.check().unwrap();
    }

    #[test]
    fn a_single_copy_pool_can_leave_one_sds_but_not_none() {
        let (mut w, sds) = single_copy_world(2, 20);
        let (a, b) = (sds[0], sds[1]);
        removal_fits(&w.st, a, None).unwrap();
        w.st.sds.get_mut(&a).unwrap().removing = true;
        let e = removal_fits(&w.st, b, None).unwrap_err();
        assert_eq!(
            e,
            "storage pool pool1 would keep no running SDS for its chunks; add an SDS first"
        );
    }

    #[test]
    fn removal_drains_and_is_refused_when_it_cannot_fit() {
        let mut w = World::new();
        let sds: Vec<u64> = (1..=3)
            .map(|i| w.sds(&format!("10.0.0.{i}"), &[100]))
            .collect();
        w.volume("v", 90, true);
        // 180 copies: two SDS hold 200 slots, so one may leave.
        removal_fits(&w.st, sds[2], None).unwrap();
        w.st.sds.get_mut(&sds[2]).unwrap().removing = true;
        let e = removal_fits(&w.st, sds[1], None).unwrap_err();
        assert!(e.contains("two copies of a chunk need two"), "{e}");
        let pool = pool(&w);
        settle(&mut w, pool, 16);
        assert_eq!(copies_per_sds(&w.st).get(&sds[2]), None);
        w.st.check().unwrap();
        let mut w = World::new();
        let sds: Vec<u64> = (1..=3)
            .map(|i| w.sds(&format!("10.0.0.{i}"), &[100]))
            .collect();
        w.volume("v", 120, true);
        let e = removal_fits(&w.st, sds[0], None).unwrap_err();
        assert!(e.contains("room for"), "{e}");
        // Room in sum, but only on the SDS that holds the other copies.
        let mut w = World::new();
        w.sds("10.0.0.1", &[1000]);
        let r = w.sds("10.0.0.2", &[100]);
        w.volume("v", 90, true);
        w.sds("10.0.0.3", &[60]);
        let e = removal_fits(&w.st, r, None).unwrap_err();
        assert!(e.contains("only go to SDS that already hold"), "{e}");
    }
}
