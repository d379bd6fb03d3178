//! SDC (gateways) and the volumes mapped to them, each at a LUN that never moves.

use super::{check_name, lowest_free_lun, touch_all, ChangeError};
use crate::cluster::api::By;
use crate::mdm::ids::IdGen;
use crate::mdm::model::{Mapping, Sdc, State, SDC};
use std::collections::HashSet;

/// Maps a volume to an SDC at the lowest LUN that SDC has free; returns the LUN.
pub fn map_volume(st: &mut State, volume: &By, sdc: &By) -> Result<u64, ChangeError> {
    let vol = st.volume(volume)?;
    let sdc = st.sdc_by(sdc)?;
    if let Some(m) = sdc.mappings.iter().find(|m| m.volume == vol.id) {
        return Err(ChangeError::AlreadyMapped {
            volume: vol.name.clone(),
            noun: SDC.noun,
            to: sdc.name.clone(),
            lun: m.lun,
        });
    }
    let used: HashSet<u64> = sdc.mappings.iter().map(|m| m.lun).collect();
    let lun = lowest_free_lun(&used).ok_or_else(|| ChangeError::NoFreeLun {
        noun: SDC.noun,
        name: sdc.name.clone(),
    })?;
    let (volume, sdc) = (vol.id, sdc.id);
    let sdc = st.sdc.get_mut(&sdc).expect("just found");
    sdc.mappings.push(Mapping { volume, lun });
    sdc.generation += 1;
    Ok(lun)
}

/// Returns the LUN the mapping had.
pub fn unmap_volume(st: &mut State, volume: &By, sdc: &By) -> Result<u64, ChangeError> {
    let vol = st.volume(volume)?;
    let sdc = st.sdc_by(sdc)?;
    let Some(at) = sdc.mappings.iter().position(|m| m.volume == vol.id) else {
        return Err(ChangeError::NotMapped {
            volume: vol.name.clone(),
            noun: SDC.noun,
            to: sdc.name.clone(),
            list: "--query_volume",
        });
    };
    let id = sdc.id;
    let sdc = st.sdc.get_mut(&id).expect("just found");
    let lun = sdc.mappings.remove(at).lun;
    sdc.generation += 1;
    Ok(lun)
}

/// Creates the SDC named `name`, or refreshes its IP; returns its id and whether the
/// state changed.
pub fn register_sdc(
    st: &mut State,
    ids: &mut IdGen,
    name: &str,
    ip: &str,
) -> Result<(u64, bool), ChangeError> {
    check_name(&SDC, name)?;
    if let Some(sdc) = st.sdc.values_mut().find(|s| s.name == name) {
        let changed = sdc.ip != ip;
        sdc.ip = ip.to_string();
        return Ok((sdc.id, changed));
    }
    let number = st.next_sdc_number();
    if number == 0 {
        return Err(ChangeError::TooManySdc);
    }
    // Every gateway lists the others that serve its volumes (ALUA port groups).
    touch_all(st);
    let id = ids.fresh();
    st.sdc.insert(
        id,
        Sdc {
            id,
            name: name.to_string(),
            ip: ip.to_string(),
            number,
            generation: 1,
            mappings: Vec::new(),
        },
    );
    Ok((id, true))
}

#[cfg(test)]
mod tests {
    use super::super::remove_volume;
    use super::super::tests::{by, World};
    use super::*;
    #[test]
    fn mapped_volumes_are_not_removed_and_mappings_are_checked() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        w.volume("v", 1, true);
        w.sdc("gw1", "10.0.1.1");
        map_volume(&mut w.st, &by("v"), &by("gw1")).unwrap();
        let e = w.refuse(|st, _| remove_volume(st, &by("v")));
        assert_eq!(
            e,
            "volume v is mapped to SDC gw1; unmap it first with --unmap_volume_from_sdc"
        );
        let e = w.refuse(|st, _| map_volume(st, &by("v"), &by("gw1")));
        assert!(e.contains("already mapped to SDC gw1 as LUN 0"), "{e}");
        let e = w.refuse(|st, _| map_volume(st, &by("v"), &by("gw9")));
        assert!(e.contains("SDC gw9 (--sdc_name) does not exist"), "{e}");
        let e = w.refuse(|st, _| map_volume(st, &by("nope"), &by("gw1")));
        assert!(
            e.contains("volume nope (--volume_name) does not exist"),
            "{e}"
        );
        w.sdc("gw2", "10.0.1.1");
        let e = w.refuse(|st, _| map_volume(st, &by("v"), &By::Ip("10.0.1.1".into())));
        assert!(e.contains("name one with --sdc_name"), "{e}");
        let e = w.refuse(|st, _| unmap_volume(st, &by("v"), &by("gw2")));
        assert!(e.contains("not mapped to SDC gw2"), "{e}");
        assert_eq!(unmap_volume(&mut w.st, &by("v"), &by("gw1")).unwrap(), 0);
        remove_volume(&mut w.st, &by("v")).unwrap();
        assert!(w.st.volumes.is_empty());
    }

    #[test]
    fn luns_are_the_lowest_free_and_stay_put() {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        for v in ["a", "b", "c", "d"] {
            w.volume(v, 1, true);
        }
        w.sdc("gw1", "10.0.1.1");
        w.sdc("gw2", "10.0.1.2");
        let map = |w: &mut World, v: &str, s: &str| map_volume(&mut w.st, &by(v), &by(s)).unwrap();
        assert_eq!(map(&mut w, "a", "gw1"), 0);
        assert_eq!(map(&mut w, "b", "gw1"), 1);
        assert_eq!(map(&mut w, "c", "gw1"), 2);
        assert_eq!(map(&mut w, "c", "gw2"), 0, "LUNs are per SDC");
        unmap_volume(&mut w.st, &by("b"), &by("gw1")).unwrap();
        assert_eq!(map(&mut w, "d", "gw1"), 1, "the hole is reused");
        assert_eq!(map(&mut w, "b", "gw1"), 3);
        let luns: Vec<(String, u64)> =
            w.st.mappings_of(w.st.volume(&by("c")).unwrap().id)
                .map(|(s, l)| (s.name.clone(), l))
                .collect();
        assert!(luns.contains(&("gw1".into(), 2)) && luns.contains(&("gw2".into(), 0)));
    }

    #[test]
    fn sdc_registration_creates_once_then_refreshes() {
        let mut w = World::new();
        let (id, created) = register_sdc(&mut w.st, &mut w.ids, "gw1", "10.0.1.1").unwrap();
        assert!(created);
        assert_eq!(
            register_sdc(&mut w.st, &mut w.ids, "gw1", "10.0.1.1").unwrap(),
            (id, false)
        );
        assert_eq!(
            register_sdc(&mut w.st, &mut w.ids, "gw1", "10.0.1.9").unwrap(),
            (id, true)
        );
        assert_eq!(w.st.sdc[&id].ip, "10.0.1.9");
        assert_eq!(w.st.sdc[&id].number, 1);
        let g = w.st.sdc[&id].generation;
        let (id2, _) = register_sdc(&mut w.st, &mut w.ids, "gw2", "10.0.1.2").unwrap();
        assert_eq!(w.st.sdc[&id2].number, 2);
        assert_eq!(w.st.sdc[&id].generation, g + 1, "gw1 must learn of gw2");
        w.st.check().unwrap();
        let e = w.refuse(|st, ids| register_sdc(st, ids, "", "10.0.1.1"));
        assert!(e.contains("SDC name"), "{e}");
    }
}
