//! Volumes: creation with every chunk placed, growth, removal and renaming.

use super::{check_name, duplicate, peer, touch, unique_default, ChangeError, MAX_VOLUME_BYTES};
use crate::cluster::api::{fmt_id, By, SdsControl, CHUNK_SIZE, NO_COPY};
use crate::mdm::ids::IdGen;
use crate::mdm::link::Peer;
use crate::mdm::model::{Device, Kind, State, Volume, INITIATOR, SDC, VOLUME};
use crate::mdm::placement::{PlacementError, Placer, Target};
use std::collections::{BTreeMap, HashMap};

/// Size in bytes rounded up to whole chunks.
pub fn round_size(bytes: u64) -> Result<u64, ChangeError> {
    if bytes == 0 {
        return Err(ChangeError::ZeroSize);
    }
    if bytes > MAX_VOLUME_BYTES {
        return Err(ChangeError::TooBig { bytes });
    }
    Ok(bytes.div_ceil(CHUNK_SIZE) * CHUNK_SIZE)
}

/// Places `count` more chunks for `vol` with the copies its pool keeps, counting every
/// chunk already in the pool (`vol`'s own included, when it is in `st`).
fn place(st: &State, vol: &mut Volume, count: u64) -> Result<(), ChangeError> {
    let pool_name = st.pool_name(vol.pool);
    let protection = st.protection(vol.pool);
    let devices: Vec<(u64, &Device)> = st.pool_devices(vol.pool).map(|(s, d)| (s.id, d)).collect();
    // Failed or draining SDS and devices get no new copies.
    let open =
        |d: &Device| st.sds_of(d.id).is_some_and(|s| s.takes_copies()) && !d.removing && !d.failed;
    let index: HashMap<u64, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, (_, d))| (d.id, i))
        .collect();
    let mut placer = Placer::new(
        devices
            .iter()
            .map(|&(sds, d)| Target {
                sds,
                slots: if open(d) { d.slots } else { 0 },
            })
            .collect(),
    );
    for v in st.volumes.values().filter(|v| v.pool == vol.pool) {
        for i in 0..v.chunks.len() {
            placer.record(v.copies(i).map(|d| d.map(|d| index[&d])), !v.thin);
        }
    }
    let free = placer.unreserved() / protection.copies() * CHUNK_SIZE;
    let placed = placer
        .place(count, protection, !vol.thin)
        .map_err(|e| match e {
            PlacementError::TooFewSds { sds, .. } => ChangeError::TooFewSds {
                pool: pool_name.clone(),
                sds,
                protection,
            },
            PlacementError::Full { .. } => ChangeError::ThickTooLarge {
                volume: vol.name.clone(),
                pool: pool_name.clone(),
                requested: count * CHUNK_SIZE,
                free,
            },
        })?;
    let mut slot: HashMap<u64, u32> = vol
        .devices
        .iter()
        .enumerate()
        .map(|(i, &d)| (d, i as u32))
        .collect();
    for pair in placed {
        let at = pair.map(|t| {
            t.map_or(NO_COPY, |t| {
                let dev = devices[t].1.id;
                *slot.entry(dev).or_insert_with(|| {
                    vol.devices.push(dev);
                    vol.devices.len() as u32 - 1
                })
            })
        });
        vol.chunks.push(at);
    }
    Ok(())
}

/// Creates a volume with every chunk placed; returns its id and rounded size.
pub fn add_volume(
    st: &mut State,
    ids: &mut IdGen,
    pd: &By,
    pool: &By,
    name: Option<&str>,
    size_bytes: u64,
    thin: bool,
) -> Result<(u64, u64), ChangeError> {
    let pool = st.pool(pd, pool)?.id;
    let size = round_size(size_bytes)?;
    let id = ids.fresh();
    let name = match name {
        Some(n) => {
            check_name(&VOLUME, n)?;
            if st.volumes.values().any(|v| v.name == n) {
                return Err(duplicate(&VOLUME, n));
            }
            n.to_string()
        }
        None => unique_default(format!("vol_{}", fmt_id(id)), |n| {
            st.volumes.values().any(|v| v.name == n)
        }),
    };
    let mut vol = Volume {
        id,
        name,
        pool,
        size_bytes: size,
        thin,
        epoch: 1,
        devices: Vec::new(),
        chunks: Vec::new(),
        syncing: Default::default(),
        absent: Default::default(),
    };
    place(st, &mut vol, size / CHUNK_SIZE)?;
    st.volumes.insert(id, vol);
    Ok((id, size))
}

/// Grows a volume, placing the new chunks and moving its epoch. Returns the volume id,
/// the rounded size, and the first new chunk (None if the size did not change).
pub fn grow_volume(
    st: &mut State,
    volume: &By,
    size_bytes: u64,
) -> Result<(u64, u64, Option<u64>), ChangeError> {
    let mut vol = st.volume(volume)?.clone();
    let size = round_size(size_bytes)?;
    if size < vol.size_bytes {
        return Err(ChangeError::Shrink {
            volume: vol.name,
            current: vol.size_bytes,
            requested: size,
        });
    }
    if size == vol.size_bytes {
        return Ok((vol.id, size, None));
    }
    let first_new = vol.chunks.len() as u64;
    let more = (size - vol.size_bytes) / CHUNK_SIZE;
    place(st, &mut vol, more)?;
    vol.size_bytes = size;
    vol.epoch += 1;
    let id = vol.id;
    st.volumes.insert(id, vol);
    touch(st, id);
    Ok((id, size, Some(first_new)))
}

/// Per SDS, the `AllocateThick` that reserves a volume's copies from chunk `from` on.
pub fn thick_allocations(st: &State, volume: u64, from: u64) -> Vec<(Peer, SdsControl)> {
    let vol = &st.volumes[&volume];
    let mut per_sds: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for i in from as usize..vol.chunks.len() {
        for dev in vol.copies(i).into_iter().flatten() {
            let (sds, _) = st.device(dev).expect("layout devices exist");
            per_sds.entry(sds.id).or_default().push((i as u64, dev));
        }
    }
    per_sds
        .into_iter()
        .map(|(sds, chunks)| {
            (
                peer(&st.sds[&sds]),
                SdsControl::AllocateThick { volume, chunks },
            )
        })
        .collect()
}

/// Refused while the volume is mapped to an SDC or an initiator: a host would lose a
/// disk it may be using.
pub fn remove_volume(st: &mut State, volume: &By) -> Result<Volume, ChangeError> {
    let vol = st.volume(volume)?;
    let mapped = |noun, unmap, names: Vec<&str>| {
        (!names.is_empty()).then(|| ChangeError::Mapped {
            volume: vol.name.clone(),
            noun,
            to: names.join(", "),
            unmap,
        })
    };
    let sdc = st
        .mappings_of(vol.id)
        .map(|(s, _)| s.name.as_str())
        .collect();
    if let Some(e) = mapped(SDC.noun, "--unmap_volume_from_sdc", sdc) {
        return Err(e);
    }
    let initiators = st
        .initiators_of(vol.id)
        .map(|(i, _)| i.name.as_str())
        .collect();
    if let Some(e) = mapped(
        INITIATOR.noun,
        "--unmap_volume_from_scsi_initiator",
        initiators,
    ) {
        return Err(e);
    }
    let id = vol.id;
    st.scsi.remove(&id);
    Ok(st.volumes.remove(&id).expect("just found"))
}

/// Returns the old name.
pub fn rename_volume(st: &mut State, volume: &By, new_name: &str) -> Result<String, ChangeError> {
    let new_kind = Kind {
        name_opt: "--new_name",
        ..VOLUME
    };
    check_name(&new_kind, new_name)?;
    let id = st.volume(volume)?.id;
    if st
        .volumes
        .values()
        .any(|v| v.name == new_name && v.id != id)
    {
        return Err(duplicate(&new_kind, new_name));
    }
    let vol = st.volumes.get_mut(&id).expect("just found");
    let old = std::mem::replace(&mut vol.name, new_name.to_string());
    if old != new_name {
        touch(st, id);
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::super::map_volume;
    use super::super::tests::{by, World};
    use super::*;
    #[test]
    fn volume_sizes_round_up_to_whole_chunks() {
        assert_eq!(round_size(1).unwrap(), CHUNK_SIZE);
        assert_eq!(round_size(CHUNK_SIZE).unwrap(), CHUNK_SIZE);
        assert_eq!(round_size(CHUNK_SIZE + 1).unwrap(), 2 * CHUNK_SIZE);
        assert!(matches!(round_size(0), Err(ChangeError::ZeroSize)));
        assert!(matches!(
            round_size(u64::MAX),
            Err(ChangeError::TooBig { .. })
        ));
    }

    #[test]
    fn a_volume_is_placed_on_two_sds_per_chunk() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100, 100]);
        w.sds("10.0.0.2", &[200]);
        w.sds("10.0.0.3", &[200]);
        let (id, size) = add_volume(
            &mut w.st,
            &mut w.ids,
            &by("pd1"),
            &by("pool1"),
            None,
            100 * CHUNK_SIZE - 5,
            false,
        )
        .unwrap();
        assert_eq!(size, 100 * CHUNK_SIZE);
        let v = &w.st.volumes[&id];
        assert_eq!(v.name, format!("vol_{}", fmt_id(id)));
        assert_eq!((v.chunks.len(), v.epoch, v.thin), (100, 1, false));
        assert_eq!(v.devices.len(), 4);
        w.st.check().unwrap();
        let alloc = thick_allocations(&w.st, id, 0);
        assert_eq!(alloc.len(), 3);
        let copies: usize = alloc
            .iter()
            .map(|(_, m)| match m {
                SdsControl::AllocateThick { chunks, .. } => chunks.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(copies, 200);
    }

    #[test]
    fn a_single_copy_volume_has_a_primary_per_chunk_and_reserves_one_slot_each() {
        let mut w = World::new();
        w.single_copy();
        let add = |name: &'static str, chunks: u64, thin: bool| {
            move |st: &mut State, ids: &mut IdGen| {
                add_volume(
                    st,
                    ids,
                    &by("pd1"),
                    &by("pool1"),
                    Some(name),
                    chunks * CHUNK_SIZE,
                    thin,
                )
            }
        };
        let e = w.refuse(add("v", 1, true));
        assert_eq!(
            e,
            "storage pool pool1 has devices on 0 SDS; a volume needs devices on at least one \
             SDS; add SDS with --add_sds"
        );
        // One SDS is enough, and its 100 slots hold 100 thick chunks, not 50.
        w.sds("10.0.0.1", &[60, 40]);
        let id = w.volume("v", 100, false);
        let v = &w.st.volumes[&id];
        assert!(v.chunks.iter().all(|&[p, s]| p != NO_COPY && s == NO_COPY));
        assert_eq!(v.devices.len(), 2);
        w.st.check().unwrap();
        let alloc = thick_allocations(&w.st, id, 0);
        let copies: Vec<usize> = alloc
            .iter()
            .map(|(_, m)| match m {
                SdsControl::AllocateThick { chunks, .. } => chunks.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(copies, [100]);
        let e = w.refuse(add("w", 1, false));
        assert!(e.contains("has 0 GB free for thick"), "{e}");
        w.volume("thin", 10, true);
        w.st.check().unwrap();
    }

    #[test]
    fn volume_refusals() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        let add = |name: Option<&'static str>, pool: &'static str, size: u64, thin: bool| {
            move |st: &mut State, ids: &mut IdGen| {
                add_volume(st, ids, &by("pd1"), &by(pool), name, size, thin)
            }
        };
        let e = w.refuse(add(Some("v"), "pool1", CHUNK_SIZE, true));
        assert!(e.contains("pool1 has devices on 1 SDS"), "{e}");
        w.sds("10.0.0.2", &[100]);
        w.volume("v", 1, true);
        let e = w.refuse(add(Some("v"), "pool1", CHUNK_SIZE, true));
        assert!(e.contains("volume name v is taken"), "{e}");
        let e = w.refuse(add(Some("w"), "pool1", 0, true));
        assert!(e.contains("above 0"), "{e}");
        let e = w.refuse(add(Some("w"), "pool2", CHUNK_SIZE, true));
        assert!(e.contains("pool2 belongs to protection domain pd2"), "{e}");
        let e = w.refuse(add(Some("w"), "pool1b", CHUNK_SIZE, true));
        assert!(e.contains("pool1b has devices on 0 SDS"), "{e}");
        // 100 slots on each of two SDS: room for 100 thick chunks.
        let e = w.refuse(add(Some("w"), "pool1", 101 * CHUNK_SIZE, false));
        assert_eq!(
            e,
            "thick volume w needs 0.099 GB but storage pool pool1 has 0.098 GB free for thick \
             volumes; make it thin (--thin_provisioned) or add devices to the pool"
        );
        add_volume(
            &mut w.st,
            &mut w.ids,
            &by("pd1"),
            &by("pool1"),
            Some("t"),
            60 * CHUNK_SIZE,
            false,
        )
        .unwrap();
        let e = w.refuse(add(Some("w"), "pool1", 41 * CHUNK_SIZE, false));
        assert!(e.contains("thick"), "{e}");
        // Thin volumes over-provision.
        w.volume("big", 1024, true);
        w.st.check().unwrap();
    }

    #[test]
    fn volumes_grow_but_never_shrink() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[1000]);
        w.sds("10.0.0.2", &[1000]);
        let id = w.volume("v", 1, true);
        let sdc = w.sdc("gw", "10.0.1.1");
        map_volume(&mut w.st, &by("v"), &By::Id(sdc)).unwrap();
        let generation = w.st.sdc[&sdc].generation;
        let e = w.refuse(|st, _| grow_volume(st, &By::Id(id), 0));
        assert!(e.contains("above 0"), "{e}");
        let grown = grow_volume(&mut w.st, &By::Id(id), 10 * CHUNK_SIZE).unwrap();
        assert_eq!(grown, (id, 10 * CHUNK_SIZE, Some(1)));
        let grown = grow_volume(&mut w.st, &by("v"), 12 * CHUNK_SIZE - 1).unwrap();
        assert_eq!(grown, (id, 12 * CHUNK_SIZE, Some(10)));
        let v = &w.st.volumes[&id];
        assert_eq!((v.chunks.len(), v.epoch), (12, 3));
        assert_eq!(w.st.sdc[&sdc].generation, generation + 2);
        let e = w.refuse(|st, _| grow_volume(st, &by("v"), 5 * CHUNK_SIZE));
        assert!(e.contains("can only grow"), "{e}");
        let same = grow_volume(&mut w.st, &by("v"), 12 * CHUNK_SIZE).unwrap();
        assert_eq!(same, (id, 12 * CHUNK_SIZE, None));
        assert_eq!(w.st.volumes[&id].epoch, 3);
        w.st.check().unwrap();
    }

    #[test]
    fn a_thick_grow_checks_capacity() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[10]);
        w.sds("10.0.0.2", &[10]);
        let id = w.volume("v", 4, false);
        let e = w.refuse(|st, _| grow_volume(st, &By::Id(id), 11 * CHUNK_SIZE));
        assert!(e.contains("free for thick"), "{e}");
        grow_volume(&mut w.st, &By::Id(id), 10 * CHUNK_SIZE).unwrap();
        let alloc = thick_allocations(&w.st, id, 4);
        assert!(alloc.iter().all(|(_, m)| matches!(m,
            SdsControl::AllocateThick { chunks, .. } if chunks.len() == 6
                && chunks.iter().all(|c| c.0 >= 4))));
    }

    #[test]
    fn renames_are_unique_and_bump_mapped_sdc() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        w.volume("a", 1, true);
        w.volume("b", 1, true);
        let sdc = w.sdc("gw1", "10.0.1.1");
        map_volume(&mut w.st, &by("a"), &by("gw1")).unwrap();
        let generation = w.st.sdc[&sdc].generation;
        let e = w.refuse(|st, _| rename_volume(st, &by("a"), "b"));
        assert_eq!(e, "volume name b is taken; choose another --new_name");
        assert_eq!(rename_volume(&mut w.st, &by("a"), "c").unwrap(), "a");
        assert_eq!(w.st.sdc[&sdc].generation, generation + 1);
        rename_volume(&mut w.st, &by("b"), "d").unwrap();
        assert_eq!(w.st.sdc[&sdc].generation, generation + 1, "b is not mapped");
    }
}
