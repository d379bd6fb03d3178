//! Failures and recovery as layout changes: an SDS declared down, an SDS back, copies
//! started by rebuild and rebalance, and copies made whole.
//!
//! The rules that keep acknowledged writes safe live here:
//! - a copy leaves a chunk's write set only in a layout committed with a new epoch;
//! - a chunk's last copy never leaves its layout, so when its SDS returns the chunk is
//!   readable again with nothing to rebuild;
//! - a copy that is being filled (`syncing`) is never promoted to primary;
//! - the copy that left a chunk when its SDS went down is remembered (`absent`) until
//!   rebuild replaces it, so a returning SDS can take it back cheaply;
//! - a chunk of a single-copy pool has its one copy and nothing else: a missing
//!   secondary is its normal shape, never a loss to rebuild or remember, and its copy
//!   moves by staying primary until the new copy is whole, then handing over.

use super::{touch, ChangeError};
use crate::cluster::api::{By, Protection, NO_COPY};
use crate::mdm::model::{State, Volume};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// What declaring an SDS down did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Failed {
    /// Chunks of two-copy pools left with one whole copy.
    pub degraded: u64,
    /// Chunks whose only copy is on a down SDS: unreadable until it returns.
    pub unavailable: u64,
}

/// A chunk of a volume.
pub type ChunkId = (u64, u64);

/// Marks `sds` down and takes its copies out of every layout: a secondary is dropped,
/// a primary hands over to a whole secondary. Moves the epoch of every volume that
/// changed.
pub fn fail_sds(st: &mut State, sds: u64) -> Result<Failed, ChangeError> {
    st.sds_by(&By::Id(sds))?;
    st.sds.get_mut(&sds).expect("just found").down = true;
    Ok(drop_down_copies(st))
}

/// Marks one device failed (its SDS said it fails I/O) and takes its copies out of
/// every layout like `fail_sds` does for a whole SDS.
pub fn fail_device(st: &mut State, device: u64) -> Result<Failed, ChangeError> {
    let sds = st
        .sds_of(device)
        .ok_or_else(|| ChangeError::Refused(format!("no device {device:016x}")))?
        .id;
    let s = st.sds.get_mut(&sds).expect("found");
    if let Some(d) = s.devices.iter_mut().find(|d| d.id == device) {
        d.failed = true;
    }
    Ok(drop_down_copies(st))
}

/// Takes every copy on a down SDS or a failed device out of the layouts (a chunk's
/// last copy excepted); idempotent.
fn drop_down_copies(st: &mut State) -> Failed {
    let down: HashSet<u64> = down_devices(st);
    let mut out = Failed::default();
    let ids: Vec<u64> = st.volumes.keys().copied().collect();
    for id in ids {
        let two_copies = keeps(st, id) == Protection::TwoCopies;
        let v = st.volumes.get_mut(&id).expect("listed");
        let before = (v.chunks.clone(), v.syncing.clone(), v.absent.clone());
        for c in 0..v.chunks.len() {
            let [p, s] = v.chunks[c];
            let key = c as u64;
            let on_down = |x: u32| x != NO_COPY && down.contains(&v.devices[x as usize]);
            let syncing = v.syncing.contains(&key);
            let mut lost_secondary = false;
            if on_down(s) {
                // A copy being filled is worth nothing; a whole one is remembered.
                if !syncing {
                    v.absent.insert(key, s);
                }
                v.syncing.remove(&key);
                v.chunks[c][1] = NO_COPY;
                lost_secondary = true;
            }
            let s = v.chunks[c][1];
            if on_down(p) {
                if s != NO_COPY && !syncing {
                    v.chunks[c] = [s, NO_COPY];
                    v.absent.insert(key, p);
                    out.degraded += 1;
                } else {
                    if s != NO_COPY {
                        v.syncing.remove(&key);
                        v.chunks[c][1] = NO_COPY;
                    }
                    out.unavailable += 1;
                }
            } else if lost_secondary && two_copies {
                // (A single copy that lost its move target is simply whole again.)
                out.degraded += 1;
            }
        }
        if (v.chunks.clone(), v.syncing.clone(), v.absent.clone()) != before
            || layout_names(v, &down)
        {
            v.epoch += 1;
            touch(st, id);
        }
    }
    out
}

/// The protection of volume `id`'s pool.
fn keeps(st: &State, id: u64) -> Protection {
    st.protection(st.volumes[&id].pool)
}

/// Whether any device of the volume's layout is down (the layout shows which, so a
/// change in that set is a layout change).
fn layout_names(v: &Volume, down: &HashSet<u64>) -> bool {
    v.devices.iter().any(|d| down.contains(d))
}

/// Devices of every SDS marked down, and every failed device.
pub fn down_devices(st: &State) -> HashSet<u64> {
    st.sds
        .values()
        .flat_map(|s| s.devices.iter().filter(move |d| s.down || d.failed))
        .map(|d| d.id)
        .collect()
}

/// Marks `sds` up again. Every degraded chunk whose remembered copy is on it gets that
/// copy back as its secondary, marked syncing: it takes writes at once, and is
/// trusted (`confirm_whole`) or refilled once the primary says whether it wrote the
/// chunk meanwhile. Remembered copies that rebuild already replaced are forgotten
/// (their slots are swept later). Returns the chunks given back.
pub fn return_sds(st: &mut State, sds: u64) -> Result<Vec<(ChunkId, u64)>, ChangeError> {
    let devices: HashSet<u64> = st
        .sds_by(&By::Id(sds))?
        .devices
        .iter()
        .map(|d| d.id)
        .collect();
    st.sds.get_mut(&sds).expect("just found").down = false;
    let down = down_devices(st);
    let mut back = Vec::new();
    let ids: Vec<u64> = st.volumes.keys().copied().collect();
    for id in ids {
        let v = st.volumes.get_mut(&id).expect("listed");
        if !v.devices.iter().any(|d| devices.contains(d)) {
            continue;
        }
        let absent: Vec<(u64, u32)> = v
            .absent
            .iter()
            .filter(|(_, &x)| devices.contains(&v.devices[x as usize]))
            .map(|(&c, &x)| (c, x))
            .collect();
        for (c, x) in absent {
            let [p, s] = v.chunks[c as usize];
            let primary_up = !down.contains(&v.devices[p as usize]);
            if down.contains(&v.devices[x as usize]) {
                // Its device failed meanwhile: that copy never comes back.
                v.absent.remove(&c);
            } else if s == NO_COPY && primary_up {
                v.chunks[c as usize][1] = x;
                v.syncing.insert(c);
                v.absent.remove(&c);
                back.push(((id, c), v.devices[x as usize]));
            } else if s != NO_COPY {
                v.absent.remove(&c);
            }
            // Primary down too: the remembered copy may be older than the primary's,
            // so it waits for the primary.
        }
        v.epoch += 1;
        touch(st, id);
    }
    Ok(back)
}

/// Copies that were given back by `return_sds` (chunk, the device given back) and
/// that their primary did not write while they were away: whole already, no data
/// moves. A chunk whose secondary is no longer that device (a rebuild planned from an
/// older state replaced it) is left syncing, to be filled.
pub fn confirm_whole(st: &mut State, chunks: &[(ChunkId, u64)]) {
    for &((v, c), device) in chunks {
        if let Some(v) = st.volumes.get_mut(&v) {
            if v.device_at(v.chunks[c as usize][1]) == Some(device) {
                v.syncing.remove(&c);
            }
        }
    }
}

/// A new copy for each chunk: `(chunk, device replacing, target device)`. `None` as
/// the device replacing fills a degraded chunk's missing secondary (two-copy pools);
/// a device gives the chunk a new copy in place of that one (a move): the other copy
/// becomes (or stays) primary and the new one is its syncing secondary. A chunk's only
/// copy (single-copy pools) stays primary while the new one fills as its secondary,
/// and hands over when that is whole (`finish_copies`). Moves the volumes' epochs.
///
/// Plans are made from a snapshot; a start whose chunk no longer has the shape it was
/// planned for (a failure, a returning SDS or another change came between) is
/// skipped, so a stale plan can never drop a whole copy or bless an empty one.
/// Returns the starts applied.
pub fn start_copies(
    st: &mut State,
    starts: &[(ChunkId, Option<u64>, u64)],
) -> Vec<(ChunkId, Option<u64>, u64)> {
    let down = down_devices(st);
    let open = |st: &State, d: u64| {
        st.device(d)
            .is_some_and(|(s, dev)| s.takes_copies() && !dev.removing && !dev.failed)
    };
    let sds_of = |st: &State, d: u64| st.sds_of(d).map(|s| s.id);
    let mut applied = Vec::new();
    for &((id, c), from, to) in starts {
        let Some(v) = st.volumes.get(&id) else {
            continue;
        };
        let Some(&[p, s]) = v.chunks.get(c as usize) else {
            continue;
        };
        let (pd, sd) = (v.device_at(p), v.device_at(s));
        let whole = !v.syncing.contains(&c);
        // The copy that stays primary while the target fills.
        let keep = match (keeps(st, id), from) {
            (Protection::TwoCopies, None) if sd.is_none() => pd,
            (Protection::TwoCopies, Some(d)) if pd == Some(d) && whole => sd,
            (Protection::TwoCopies, Some(d)) if sd == Some(d) && whole => pd,
            (Protection::SingleCopy, Some(d)) if pd == Some(d) && sd.is_none() => pd,
            _ => None,
        };
        let fits = keep
            .is_some_and(|k| !down.contains(&k) && open(st, to) && sds_of(st, k) != sds_of(st, to));
        if !fits {
            continue;
        }
        let keep = keep.expect("checked");
        let v = st.volumes.get_mut(&id).expect("found");
        let (k, t) = (v.index_of(keep), v.index_of(to));
        v.chunks[c as usize] = [k, t];
        v.syncing.insert(c);
        v.absent.remove(&c);
        applied.push(((id, c), from, to));
    }
    let touched: BTreeSet<u64> = applied.iter().map(|((v, _), _, _)| *v).collect();
    for id in touched {
        if let Some(v) = st.volumes.get_mut(&id) {
            v.epoch += 1;
        }
        touch(st, id);
    }
    applied
}

/// What committing a copy Replicate made whole does to its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// The chunk moved on meanwhile (its target failed, or a newer plan replaced it).
    Stale,
    /// The target is a whole secondary beside the primary.
    Whole,
    /// The target replaces the chunk's only copy (a single-copy move): it becomes the
    /// primary, and this device's copy leaves the layout.
    Replaces(u64),
}

fn finish_of(st: &State, (v, c): ChunkId, target: u64) -> Finish {
    let Some(vol) = st.volumes.get(&v) else {
        return Finish::Stale;
    };
    let [p, s] = vol.copies(c as usize);
    if s != Some(target) || !vol.syncing.contains(&c) {
        return Finish::Stale;
    }
    match (keeps(st, v), p) {
        (Protection::SingleCopy, Some(p)) => Finish::Replaces(p),
        _ => Finish::Whole,
    }
}

/// The copies committing `done` would take out of the layouts, as (volume, device):
/// old primaries of single-copy moves, which must be fenced before that commit.
pub fn replaced_by_finish(st: &State, done: &[(ChunkId, u64)]) -> Vec<(u64, u64)> {
    done.iter()
        .filter_map(|&(chunk, target)| match finish_of(st, chunk, target) {
            Finish::Replaces(old) => Some((chunk.0, old)),
            _ => None,
        })
        .collect()
}

/// The copies committing `starts` would take out of the layouts that gateways read, as
/// (volume, device): the primaries two-copy moves replace, which must be fenced before
/// that commit. A replaced secondary is never read, and a write it took through an
/// older layout went through the primary, whose Replicate fills the new copy; a single
/// copy stays primary while its target fills (`replaced_by_finish` fences its handover).
pub fn replaced_by_start(st: &State, starts: &[(ChunkId, Option<u64>, u64)]) -> Vec<(u64, u64)> {
    starts
        .iter()
        .filter_map(|&((v, c), from, _)| {
            let vol = st.volumes.get(&v)?;
            let primary = vol.device_at(vol.chunks.get(c as usize)?[0]);
            let two = keeps(st, v) == Protection::TwoCopies;
            (two && from.is_some() && from == primary).then_some((v, from?))
        })
        .collect()
}

/// Copies made whole by Replicate: `(chunk, target device)`. The target stops
/// syncing; in a single-copy pool it becomes the chunk's primary and only copy (the
/// old one is left to the sweep), which moves the volume's epoch. A chunk whose
/// secondary moved on meanwhile (its target failed) is left alone.
pub fn finish_copies(st: &mut State, done: &[(ChunkId, u64)]) {
    let mut handed_over = BTreeSet::new();
    for &(chunk, target) in done {
        let finish = finish_of(st, chunk, target);
        let Some(v) = st.volumes.get_mut(&chunk.0) else {
            continue;
        };
        let c = chunk.1 as usize;
        match finish {
            Finish::Stale => continue,
            Finish::Whole => {}
            Finish::Replaces(_) => {
                v.chunks[c] = [v.chunks[c][1], NO_COPY];
                handed_over.insert(v.id);
            }
        }
        v.syncing.remove(&chunk.1);
    }
    for id in handed_over {
        if let Some(v) = st.volumes.get_mut(&id) {
            v.epoch += 1;
        }
        touch(st, id);
    }
}

/// Chunks whose only copy is on one of `devices`, counted per volume name. For devices
/// down or failed, whose copies the layouts keep only where they are a chunk's last
/// (`drop_down_copies`), as its primary.
pub fn last_copies_on(st: &State, devices: &HashSet<u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in st.volumes.values() {
        let n = (0..v.chunks.len())
            .filter(|&c| v.copies(c)[0].is_some_and(|p| devices.contains(&p)))
            .count() as u64;
        if n > 0 {
            out.insert(v.name.clone(), n);
        }
    }
    out
}

/// Every device a layout still points at (copies, syncing copies, remembered copies):
/// what an SDS being removed must no longer hold before it goes.
pub fn referenced_devices(st: &State) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for v in st.volumes.values() {
        for c in 0..v.chunks.len() {
            out.extend(v.copies(c).into_iter().flatten());
        }
        out.extend(v.absent.values().map(|&x| v.devices[x as usize]));
    }
    out
}

/// Forgets remembered copies on `sds`'s devices (it is being removed: they will never
/// come back).
pub fn forget_absent_on(st: &mut State, sds: u64) {
    let devices: HashSet<u64> = st
        .sds
        .get(&sds)
        .map(|s| s.devices.iter().map(|d| d.id).collect())
        .unwrap_or_default();
    let ids: Vec<u64> = st.volumes.keys().copied().collect();
    for id in ids {
        let v = st.volumes.get_mut(&id).expect("listed");
        let before = v.absent.len();
        let devs = v.devices.clone();
        v.absent
            .retain(|_, x| !devices.contains(&devs[*x as usize]));
        if v.absent.len() != before {
            v.epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdm::change::tests::World;

    /// Three SDS with one device each, and a thin volume of `chunks` chunks.
    fn world(chunks: u64) -> (World, u64, [u64; 3]) {
        world_of(chunks, false)
    }

    fn world_of(chunks: u64, single_copy: bool) -> (World, u64, [u64; 3]) {
        let mut w = World::new();
        if single_copy {
            w.single_copy();
        }
        let sds = [
            w.sds("10.0.0.1", &[100]),
            w.sds("10.0.0.2", &[100]),
            w.sds("10.0.0.3", &[100]),
        ];
        let v = w.volume("v", chunks, true);
        (w, v, sds)
    }

    fn sds_of(st: &State, v: u64, c: usize, which: usize) -> Option<u64> {
        st.volumes[&v].copies(c)[which].map(|d| st.sds_of(d).unwrap().id)
    }

    #[test]
    fn a_failed_sds_leaves_every_chunk_with_a_whole_primary_elsewhere() {
        let (mut w, v, sds) = world(30);
        let epoch = w.st.volumes[&v].epoch;
        let f = fail_sds(&mut w.st, sds[0]).unwrap();
        let vol = &w.st.volumes[&v];
        assert_eq!(vol.epoch, epoch + 1);
        assert_eq!(f.unavailable, 0);
        assert!(f.degraded > 0);
        for c in 0..30 {
            assert_ne!(sds_of(&w.st, v, c, 0), Some(sds[0]));
            assert_ne!(sds_of(&w.st, v, c, 1), Some(sds[0]));
            let had = vol.absent.contains_key(&(c as u64));
            assert_eq!(had, vol.chunks[c][1] == NO_COPY, "chunk {c}");
        }
        assert_eq!(vol.absent.len() as u64, f.degraded);
        w.st.check().unwrap();
    }

    #[test]
    fn a_chunks_last_copy_stays_and_a_syncing_copy_is_never_promoted() {
        let (mut w, v, sds) = world(30);
        fail_sds(&mut w.st, sds[0]).unwrap();
        // Rebuild starts on every degraded chunk toward whichever SDS is not the primary.
        let starts: Vec<_> = (0..30u64)
            .filter(|&c| w.st.volumes[&v].chunks[c as usize][1] == NO_COPY)
            .map(|c| {
                let p = sds_of(&w.st, v, c as usize, 0).unwrap();
                let target = if p == sds[1] { sds[2] } else { sds[1] };
                ((v, c), None, w.st.sds[&target].devices[0].id)
            })
            .collect();
        start_copies(&mut w.st, &starts);
        assert_eq!(w.st.volumes[&v].syncing.len(), starts.len());
        let f = fail_sds(&mut w.st, sds[1]).unwrap();
        let vol = &w.st.volumes[&v];
        for &((_, c), _, _) in &starts {
            let c = c as usize;
            // Its primary (s2 or s3) kept; a copy being filled on s2 dropped.
            assert!(vol.chunks[c][0] != NO_COPY);
            assert!(!vol.syncing.contains(&(c as u64)) || vol.chunks[c][1] != NO_COPY);
        }
        assert!(
            f.unavailable > 0,
            "chunks whose whole copies were s1 and s2"
        );
        w.st.check().unwrap();
    }

    #[test]
    fn a_returning_sds_takes_back_its_copies_of_chunks_still_degraded() {
        let (mut w, v, sds) = world(30);
        fail_sds(&mut w.st, sds[0]).unwrap();
        let degraded: BTreeSet<u64> = w.st.volumes[&v].absent.keys().copied().collect();
        // Rebuild replaced one chunk's copy before the SDS came back.
        let first = *degraded.iter().next().unwrap();
        let p = sds_of(&w.st, v, first as usize, 0).unwrap();
        let target = if p == sds[1] { sds[2] } else { sds[1] };
        let to = w.st.sds[&target].devices[0].id;
        start_copies(&mut w.st, &[((v, first), None, to)]);
        let back = return_sds(&mut w.st, sds[0]).unwrap();
        assert_eq!(back.len(), degraded.len() - 1);
        let vol = &w.st.volumes[&v];
        assert!(vol.absent.is_empty());
        for &((_, c), d) in &back {
            assert_eq!(sds_of(&w.st, v, c as usize, 1), Some(sds[0]));
            assert_eq!(w.st.sds_of(d).unwrap().id, sds[0]);
            assert!(vol.syncing.contains(&c));
        }
        // A copy confirmed after its chunk moved on to another secondary stays
        // syncing: the stale confirmation names a device the chunk no longer uses.
        let (moved, _) = back[0];
        let other = if sds_of(&w.st, v, moved.1 as usize, 0) == Some(sds[1]) {
            sds[2]
        } else {
            sds[1]
        };
        let elsewhere = w.st.sds[&other].devices[0].id;
        let vol = w.st.volumes.get_mut(&v).unwrap();
        let t = vol.index_of(elsewhere);
        vol.chunks[moved.1 as usize][1] = t;
        confirm_whole(&mut w.st, &back);
        assert_eq!(w.st.volumes[&v].syncing.len(), 2);
        assert!(w.st.volumes[&v].syncing.contains(&moved.1));
        w.st.check().unwrap();
    }

    #[test]
    fn stale_plans_are_skipped() {
        let (mut w, v, _) = world(4);
        let [p, s] = w.st.volumes[&v].copies(0).map(Option::unwrap);
        let third =
            w.st.sds
                .values()
                .flat_map(|x| x.devices.iter().map(|d| d.id))
                .find(|d| *d != p && *d != s)
                .unwrap();
        // A move planned before the other copy's SDS failed must not leave the
        // chunk without a primary.
        let other = w.st.sds_of(s).unwrap().id;
        fail_sds(&mut w.st, other).unwrap();
        let before = w.st.volumes[&v].chunks[0];
        assert!(start_copies(&mut w.st, &[((v, 0), Some(p), third)]).is_empty());
        assert_eq!(w.st.volumes[&v].chunks[0], before);
        // A rebuild planned for a chunk that got its secondary back meanwhile too.
        return_sds(&mut w.st, other).unwrap();
        assert!(start_copies(&mut w.st, &[((v, 0), None, third)]).is_empty());
        // A target on a failed SDS is refused.
        let t = w.st.sds_of(third).unwrap().id;
        fail_sds(&mut w.st, t).unwrap();
        let c = (0..4)
            .find(|&c| w.st.volumes[&v].chunks[c][1] == NO_COPY)
            .unwrap() as u64;
        assert!(start_copies(&mut w.st, &[((v, c), None, third)]).is_empty());
        w.st.check().unwrap();
    }

    /// `world`, with pool1 keeping one copy per chunk.
    fn single_copy_world(chunks: u64) -> (World, u64, [u64; 3]) {
        world_of(chunks, true)
    }

    #[test]
    fn a_single_copy_on_a_failed_sds_is_unavailable_until_it_returns() {
        let (mut w, v, sds) = single_copy_world(30);
        let before = w.st.volumes[&v].chunks.clone();
        let on_first = (0..30).filter(|&c| sds_of(&w.st, v, c, 0) == Some(sds[0]));
        let on_first = on_first.count() as u64;
        assert!(on_first > 0);
        let f = fail_sds(&mut w.st, sds[0]).unwrap();
        assert_eq!(
            f,
            Failed {
                degraded: 0,
                unavailable: on_first
            }
        );
        let vol = &w.st.volumes[&v];
        // Every copy stays where it was, the lost ones marked down by their SDS.
        assert_eq!(vol.chunks, before);
        assert!(vol.absent.is_empty() && vol.syncing.is_empty());
        w.st.check().unwrap();
        let epoch = w.st.volumes[&v].epoch;
        assert!(return_sds(&mut w.st, sds[0]).unwrap().is_empty());
        let vol = &w.st.volumes[&v];
        assert_eq!(vol.chunks, before);
        assert!(vol.syncing.is_empty(), "nothing to copy back");
        assert_eq!(
            vol.epoch,
            epoch + 1,
            "the layout no longer marks the SDS down"
        );
        w.st.check().unwrap();
    }

    #[test]
    fn a_single_copy_moves_by_handing_over_once_its_target_is_whole() {
        let (mut w, v, sds) = single_copy_world(4);
        let p = w.st.volumes[&v].copies(0)[0].unwrap();
        let owner = w.st.sds_of(p).unwrap().id;
        let to = sds
            .iter()
            .find(|&&s| s != owner)
            .map(|s| w.st.sds[s].devices[0].id)
            .unwrap();
        // Rebuild has nothing to fill, and a move never targets the copy's own SDS.
        assert!(start_copies(&mut w.st, &[((v, 0), None, to)]).is_empty());
        let same = w.st.sds[&owner].devices[0].id;
        assert!(start_copies(&mut w.st, &[((v, 0), Some(p), same)]).is_empty());
        let epoch = w.st.volumes[&v].epoch;
        assert_eq!(start_copies(&mut w.st, &[((v, 0), Some(p), to)]).len(), 1);
        // The only copy stays primary while the target fills as its secondary.
        assert_eq!(w.st.volumes[&v].copies(0), [Some(p), Some(to)]);
        assert!(w.st.volumes[&v].syncing.contains(&0));
        w.st.check().unwrap();
        let done = [((v, 0), to)];
        assert_eq!(replaced_by_finish(&w.st, &done), [(v, p)]);
        finish_copies(&mut w.st, &done);
        let vol = &w.st.volumes[&v];
        assert_eq!(vol.copies(0), [Some(to), None]);
        assert!(vol.syncing.is_empty());
        assert_eq!(
            vol.epoch,
            epoch + 2,
            "the start and the handover both move it"
        );
        w.st.check().unwrap();
        // A second report of the same copy changes nothing.
        assert!(replaced_by_finish(&w.st, &done).is_empty());
        finish_copies(&mut w.st, &done);
        assert_eq!(w.st.volumes[&v].copies(0), [Some(to), None]);
    }

    #[test]
    fn a_single_copy_move_whose_target_fails_leaves_the_copy_whole() {
        let (mut w, v, _) = single_copy_world(4);
        let p = w.st.volumes[&v].copies(0)[0].unwrap();
        let to =
            w.st.sds
                .values()
                .find(|s| !s.devices.iter().any(|d| d.id == p))
                .map(|s| s.devices[0].id)
                .unwrap();
        start_copies(&mut w.st, &[((v, 0), Some(p), to)]);
        let target_sds = w.st.sds_of(to).unwrap().id;
        let f = fail_sds(&mut w.st, target_sds).unwrap();
        assert_eq!(f.degraded, 0, "a lost move target degrades nothing");
        assert_eq!(w.st.volumes[&v].copies(0), [Some(p), None]);
        assert!(replaced_by_finish(&w.st, &[((v, 0), to)]).is_empty());
        finish_copies(&mut w.st, &[((v, 0), to)]);
        assert_eq!(w.st.volumes[&v].copies(0), [Some(p), None]);
        w.st.check().unwrap();
    }

    #[test]
    fn a_move_promotes_the_other_copy_when_the_primary_moves() {
        let (mut w, v, _) = world(4);
        let [p, s] = w.st.volumes[&v].copies(0).map(Option::unwrap);
        let free =
            w.st.sds
                .values()
                .flat_map(|x| x.devices.iter().map(|d| d.id))
                .find(|d| *d != p && *d != s)
                .unwrap();
        start_copies(&mut w.st, &[((v, 0), Some(p), free)]);
        assert_eq!(w.st.volumes[&v].copies(0), [Some(s), Some(free)]);
        finish_copies(&mut w.st, &[((v, 0), free)]);
        assert!(w.st.volumes[&v].syncing.is_empty());
        assert!(!referenced_devices(&w.st).is_empty());
        w.st.check().unwrap();
    }
}
