//! SCSI initiators (the hosts allowed in) and the volumes mapped to them, one admin
//! request at a time. Every gateway enforces the whole registry, so each change here
//! moves every SDC's generation.

use super::{check_name, duplicate, lowest_free_lun, touch_all, ChangeError};
use crate::cluster::api::{AccessMode, By, Chap};
use crate::cluster::iscsi_name;
use crate::mdm::ids::IdGen;
use crate::mdm::model::{Kind, LunMapping, ScsiInitiator, State, INITIATOR, MAX_LUN};
use std::collections::HashSet;

/// Why CHAP secrets cannot be used, if they cannot. The gateway's own `ChapConfig`
/// rules: RFC 7143 section 12.1.3 asks for secrets of at least 96 bits, and a mutual
/// secret equal to the initiator's would let a recorded exchange be replayed.
pub(super) fn chap_problem(chap: &Chap) -> Option<&'static str> {
    if chap.username.is_empty() {
        return Some("the CHAP username is empty");
    }
    if !(12..=255).contains(&chap.secret.len()) {
        return Some("the CHAP secret must be 12 to 255 bytes");
    }
    match &chap.mutual {
        Some((user, _)) if user.is_empty() => Some("the mutual CHAP username is empty"),
        Some((_, secret)) if secret.len() < 12 || *secret == chap.secret => {
            Some("the mutual CHAP secret must be 12 bytes or more and differ from the CHAP secret")
        }
        _ => None,
    }
}

/// How CHAP is described to an admin; never the secrets.
pub fn chap_words(chap: &Chap) -> &'static str {
    match chap.mutual {
        Some(_) => "mutual",
        None => "one-way",
    }
}

fn check_chap(initiator: &str, chap: Option<&Chap>) -> Result<(), ChangeError> {
    match chap.and_then(chap_problem) {
        Some(reason) => Err(ChangeError::BadChap {
            initiator: initiator.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Registers a host; returns its id.
pub fn add_initiator(
    st: &mut State,
    ids: &mut IdGen,
    name: &str,
    iqn: &str,
    chap: Option<&Chap>,
) -> Result<u64, ChangeError> {
    check_name(&INITIATOR, name)?;
    let iqn = iscsi_name::normalize(iqn).map_err(|error| ChangeError::BadIqn { error })?;
    if st.initiators.values().any(|i| i.name == name) {
        return Err(duplicate(&INITIATOR, name));
    }
    if let Some(other) = st.initiators.values().find(|i| i.iqn == iqn) {
        return Err(ChangeError::IqnTaken {
            iqn,
            initiator: other.name.clone(),
        });
    }
    check_chap(name, chap)?;
    let id = ids.fresh();
    st.initiators.insert(
        id,
        ScsiInitiator {
            id,
            name: name.to_string(),
            iqn,
            chap: chap.cloned(),
            mappings: Vec::new(),
        },
    );
    touch_all(st);
    Ok(id)
}

/// Removes the initiator with its mappings; returns what was removed.
pub fn remove_initiator(st: &mut State, initiator: &By) -> Result<ScsiInitiator, ChangeError> {
    let id = st.initiator(initiator)?.id;
    let gone = st.initiators.remove(&id).expect("just found");
    touch_all(st);
    Ok(gone)
}

/// Returns the old name.
pub fn rename_initiator(
    st: &mut State,
    initiator: &By,
    new_name: &str,
) -> Result<String, ChangeError> {
    let new_kind = Kind {
        name_opt: "--new_name",
        ..INITIATOR
    };
    check_name(&new_kind, new_name)?;
    let id = st.initiator(initiator)?.id;
    if st
        .initiators
        .values()
        .any(|i| i.name == new_name && i.id != id)
    {
        return Err(duplicate(&new_kind, new_name));
    }
    let i = st.initiators.get_mut(&id).expect("just found");
    let old = std::mem::replace(&mut i.name, new_name.to_string());
    if old != new_name {
        touch_all(st);
    }
    Ok(old)
}

/// Sets (Some) or clears (None) the initiator's CHAP secrets; returns its name.
pub fn set_chap(
    st: &mut State,
    initiator: &By,
    chap: Option<&Chap>,
) -> Result<String, ChangeError> {
    let i = st.initiator(initiator)?;
    check_chap(&i.name, chap)?;
    let (id, name) = (i.id, i.name.clone());
    let i = st.initiators.get_mut(&id).expect("just found");
    if i.chap.as_ref() != chap {
        i.chap = chap.cloned();
        touch_all(st);
    }
    Ok(name)
}

/// Maps a volume to an initiator at `lun`, or at the lowest LUN it has free; returns
/// the LUN. LUNs of its other volumes never move.
pub fn map_to_initiator(
    st: &mut State,
    volume: &By,
    initiator: &By,
    lun: Option<u64>,
    access: AccessMode,
) -> Result<u64, ChangeError> {
    let vol = st.volume(volume)?;
    let ini = st.initiator(initiator)?;
    if let Some(m) = ini.mapping(vol.id) {
        return Err(ChangeError::AlreadyMapped {
            volume: vol.name.clone(),
            noun: INITIATOR.noun,
            to: ini.name.clone(),
            lun: m.lun,
        });
    }
    let lun = match lun {
        Some(lun) if lun > MAX_LUN => return Err(ChangeError::LunRange { lun }),
        Some(lun) => {
            if let Some(m) = ini.mappings.iter().find(|m| m.lun == lun) {
                return Err(ChangeError::LunTaken {
                    lun,
                    initiator: ini.name.clone(),
                    volume: st.volumes[&m.volume].name.clone(),
                });
            }
            lun
        }
        None => {
            let used: HashSet<u64> = ini.mappings.iter().map(|m| m.lun).collect();
            lowest_free_lun(&used).ok_or_else(|| ChangeError::NoFreeLun {
                noun: INITIATOR.noun,
                name: ini.name.clone(),
            })?
        }
    };
    let (volume, id) = (vol.id, ini.id);
    let ini = st.initiators.get_mut(&id).expect("just found");
    let at = ini.mappings.partition_point(|m| m.lun < lun);
    ini.mappings.insert(
        at,
        LunMapping {
            volume,
            lun,
            access,
        },
    );
    touch_all(st);
    Ok(lun)
}

/// Returns the LUN the mapping had.
pub fn unmap_from_initiator(
    st: &mut State,
    volume: &By,
    initiator: &By,
) -> Result<u64, ChangeError> {
    let vol = st.volume(volume)?;
    let ini = st.initiator(initiator)?;
    let Some(at) = ini.mappings.iter().position(|m| m.volume == vol.id) else {
        return Err(ChangeError::NotMapped {
            volume: vol.name.clone(),
            noun: INITIATOR.noun,
            to: ini.name.clone(),
            list: "--query_scsi_initiator",
        });
    };
    let id = ini.id;
    let lun = st
        .initiators
        .get_mut(&id)
        .expect("just found")
        .mappings
        .remove(at)
        .lun;
    touch_all(st);
    Ok(lun)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{by, World};
    use super::super::{grow_volume, remove_volume, rename_volume};
    use super::*;
    use crate::cluster::api::CHUNK_SIZE;

    pub(crate) const IQN1: &str = "iqn.1998-01.com.vmware:svrsan2011";
    pub(crate) const IQN2: &str = "iqn.1998-01.com.vmware:svrsan2012";

    pub(crate) fn chap(secret: &str, mutual: Option<&str>) -> Chap {
        Chap {
            username: "chapuser".into(),
            secret: secret.into(),
            mutual: mutual.map(|m| ("target".into(), m.into())),
        }
    }

    /// Two SDS, volumes a, b, c, two gateways, initiators svrsan2011 and svrsan2012.
    pub(crate) fn world() -> World {
        let mut w = World::new();
        w.sds("10.0.0.1", &[100]);
        w.sds("10.0.0.2", &[100]);
        for v in ["a", "b", "c"] {
            w.volume(v, 1, true);
        }
        w.sdc("gw1", "10.0.1.1");
        w.sdc("gw2", "10.0.1.2");
        add_initiator(&mut w.st, &mut w.ids, "svrsan2011", IQN1, None).unwrap();
        add_initiator(&mut w.st, &mut w.ids, "svrsan2012", IQN2, None).unwrap();
        w
    }

    pub(crate) fn generations(st: &State) -> Vec<u64> {
        st.sdc.values().map(|s| s.generation).collect()
    }

    fn map(w: &mut World, v: &str, i: &str, lun: Option<u64>) -> u64 {
        map_to_initiator(&mut w.st, &by(v), &by(i), lun, AccessMode::ReadWrite).unwrap()
    }

    #[test]
    fn an_initiator_is_registered_under_its_normalized_name() {
        let mut w = world();
        let id = add_initiator(
            &mut w.st,
            &mut w.ids,
            "esx3",
            " IQN.1998-01.com.VMware:ESX3 ",
            Some(&chap("twelve-bytes", None)),
        )
        .unwrap();
        let i = &w.st.initiators[&id];
        assert_eq!(i.iqn, "iqn.1998-01.com.vmware:esx3");
        assert_eq!(i.chap, Some(chap("twelve-bytes", None)));
        assert!(w.st.ids().filter(|&x| x == id).count() == 1);
        w.st.check().unwrap();
    }

    #[test]
    fn bad_and_duplicate_names_are_refused() {
        let mut w = world();
        let add = |name: &'static str, iqn: &'static str| {
            move |st: &mut State, ids: &mut IdGen| add_initiator(st, ids, name, iqn, None)
        };
        let e = w.refuse(add("x", "svrsan2011"));
        assert_eq!(
            e,
            "iSCSI name \"svrsan2011\" must start with iqn., eui. or naa. (--iqn)"
        );
        let e = w.refuse(add("x", "eui.02004567A425678"));
        assert!(e.contains("16 hex digits (--iqn)"), "{e}");
        let e = w.refuse(add("x", "naa.1234"));
        assert!(e.contains("16 or 32 hex digits (--iqn)"), "{e}");
        let e = w.refuse(add("x", "iqn.1998-13.com.vmware:x"));
        assert!(e.contains("yyyy-mm"), "{e}");
        let e = w.refuse(add("svrsan2011", "iqn.1998-01.com.vmware:other"));
        assert_eq!(
            e,
            "SCSI initiator name svrsan2011 is taken; choose another --initiator_name"
        );
        let e = w.refuse(add("other", "IQN.1998-01.com.vmware:SVRSAN2011"));
        assert_eq!(
            e,
            "iSCSI name iqn.1998-01.com.vmware:svrsan2011 (--iqn) is already registered as \
             SCSI initiator svrsan2011; see it with --query_scsi_initiator"
        );
        let e = w.refuse(add("has space", "iqn.1998-01.com.vmware:x"));
        assert!(
            e.contains("(--initiator_name) is not usable: it contains a space"),
            "{e}"
        );
    }

    #[test]
    fn bad_chap_is_refused_without_showing_the_secret() {
        let mut w = world();
        let cases = [
            (
                Chap {
                    username: String::new(),
                    ..chap("twelve-bytes", None)
                },
                "username is empty",
            ),
            (chap("eleven-byte", None), "12 to 255 bytes"),
            (chap(&"s".repeat(256), None), "12 to 255 bytes"),
            (chap("twelve-bytes", Some("too-short")), "differ"),
            (chap("twelve-bytes", Some("twelve-bytes")), "differ"),
            (
                Chap {
                    mutual: Some((String::new(), "mutual-secret".into())),
                    ..chap("twelve-bytes", None)
                },
                "mutual CHAP username is empty",
            ),
        ];
        assert_eq!(
            chap_problem(&chap("twelve-bytes", Some("mutual-secret"))),
            None
        );
        assert_eq!(chap_problem(&chap(&"s".repeat(255), None)), None);
        for (c, why) in cases {
            let secret = c.secret.clone();
            let e =
                w.refuse(|st, ids| add_initiator(st, ids, "x", "eui.02004567A425678D", Some(&c)));
            assert!(
                e.starts_with("CHAP for SCSI initiator x is not usable") && e.contains(why),
                "{e}"
            );
            let e = w.refuse(|st, _| set_chap(st, &by("svrsan2011"), Some(&c)));
            assert!(e.contains(why) && !e.contains(&secret), "{e}");
        }
    }

    #[test]
    fn chap_is_set_and_cleared_and_an_unchanged_chap_moves_nothing() {
        let mut w = world();
        let g = generations(&w.st);
        let c = chap("twelve-bytes", Some("mutual-secret"));
        set_chap(&mut w.st, &by("svrsan2011"), Some(&c)).unwrap();
        assert_eq!(
            w.st.initiator(&by("svrsan2011")).unwrap().chap,
            Some(c.clone())
        );
        let g1 = generations(&w.st);
        assert!(g1.iter().zip(&g).all(|(a, b)| *a == b + 1));
        set_chap(&mut w.st, &by("svrsan2011"), Some(&c)).unwrap();
        assert_eq!(generations(&w.st), g1);
        set_chap(&mut w.st, &by("svrsan2011"), None).unwrap();
        assert_eq!(w.st.initiator(&by("svrsan2011")).unwrap().chap, None);
        let e = w.refuse(|st, _| set_chap(st, &by("nope"), None));
        assert!(e.contains("SCSI initiator nope (--initiator_name)"), "{e}");
    }

    #[test]
    fn mapping_refusals() {
        let mut w = world();
        map(&mut w, "a", "svrsan2011", Some(5));
        let try_map = |v: &'static str, i: &'static str, lun: Option<u64>| {
            move |st: &mut State, _: &mut IdGen| {
                map_to_initiator(st, &by(v), &by(i), lun, AccessMode::ReadOnly)
            }
        };
        let e = w.refuse(try_map("a", "svrsan2011", None));
        assert_eq!(
            e,
            "volume a is already mapped to SCSI initiator svrsan2011 as LUN 5"
        );
        let e = w.refuse(try_map("b", "svrsan2011", Some(5)));
        assert_eq!(
            e,
            "LUN 5 (--lun) of SCSI initiator svrsan2011 is taken by volume a; pick another \
             --lun or leave it out for the lowest free"
        );
        let e = w.refuse(try_map("b", "svrsan2011", Some(MAX_LUN + 1)));
        assert!(
            e.contains("LUN 16384 (--lun) is over the highest LUN 16383"),
            "{e}"
        );
        let e = w.refuse(try_map("nope", "svrsan2011", None));
        assert!(
            e.contains("volume nope (--volume_name) does not exist"),
            "{e}"
        );
        let e = w.refuse(try_map("b", "nope", None));
        assert_eq!(
            e,
            "SCSI initiator nope (--initiator_name) does not exist; list them with \
             --query_all_scsi_initiators"
        );
        let e = w.refuse(|st, _| unmap_from_initiator(st, &by("b"), &by("svrsan2011")));
        assert_eq!(
            e,
            "volume b is not mapped to SCSI initiator svrsan2011; see its mappings with \
             --query_scsi_initiator"
        );
        let e = w.refuse(|st, _| remove_volume(st, &by("a")));
        assert_eq!(
            e,
            "volume a is mapped to SCSI initiator svrsan2011; unmap it first with \
             --unmap_volume_from_scsi_initiator"
        );
        // The same LUN on another initiator is fine, and a LUN up to 16383 is accepted.
        assert_eq!(map(&mut w, "a", "svrsan2012", Some(5)), 5);
        assert_eq!(map(&mut w, "b", "svrsan2012", Some(MAX_LUN)), MAX_LUN);
        w.st.check().unwrap();
    }

    #[test]
    fn luns_are_the_lowest_free_and_never_renumbered() {
        let mut w = world();
        assert_eq!(map(&mut w, "a", "svrsan2011", None), 0);
        assert_eq!(map(&mut w, "b", "svrsan2011", None), 1);
        assert_eq!(map(&mut w, "c", "svrsan2011", None), 2);
        assert_eq!(
            unmap_from_initiator(&mut w.st, &by("a"), &by("svrsan2011")).unwrap(),
            0
        );
        let luns = |w: &World| -> Vec<(u64, u64)> {
            let i = w.st.initiator(&by("svrsan2011")).unwrap();
            i.mappings.iter().map(|m| (m.lun, m.volume)).collect()
        };
        let id = |w: &World, v| w.st.volume(&by(v)).unwrap().id;
        assert_eq!(luns(&w), [(1, id(&w, "b")), (2, id(&w, "c"))]);
        assert_eq!(map(&mut w, "a", "svrsan2011", Some(7)), 7);
        unmap_from_initiator(&mut w.st, &by("b"), &by("svrsan2011")).unwrap();
        assert_eq!(
            map(&mut w, "b", "svrsan2011", None),
            0,
            "the hole is reused"
        );
        assert_eq!(
            luns(&w),
            [(0, id(&w, "b")), (2, id(&w, "c")), (7, id(&w, "a"))],
            "the others kept their LUNs, in LUN order"
        );
    }

    #[test]
    fn every_change_moves_every_gateway() {
        let mut w = world();
        let mut last = generations(&w.st);
        let mut moved = |w: &World, what: &str| {
            let now = generations(&w.st);
            assert!(now.iter().zip(&last).all(|(a, b)| a > b), "{what}: {now:?}");
            last = now;
        };
        map(&mut w, "a", "svrsan2011", None);
        moved(&w, "map");
        rename_initiator(&mut w.st, &by("svrsan2011"), "esx1").unwrap();
        moved(&w, "rename");
        grow_volume(&mut w.st, &by("a"), 2 * CHUNK_SIZE).unwrap();
        moved(&w, "grow a volume mapped to an initiator");
        rename_volume(&mut w.st, &by("a"), "a2").unwrap();
        moved(&w, "rename a volume mapped to an initiator");
        unmap_from_initiator(&mut w.st, &by("a2"), &by("esx1")).unwrap();
        moved(&w, "unmap");
        set_chap(&mut w.st, &by("esx1"), Some(&chap("twelve-bytes", None))).unwrap();
        moved(&w, "chap");
        add_initiator(&mut w.st, &mut w.ids, "esx3", "eui.02004567A425678D", None).unwrap();
        moved(&w, "add");
        remove_initiator(&mut w.st, &by("esx3")).unwrap();
        moved(&w, "remove");
        rename_volume(&mut w.st, &by("b"), "b2").unwrap();
        assert_eq!(generations(&w.st), last, "b is mapped nowhere");
    }

    #[test]
    fn renames_are_unique_and_removal_takes_the_mappings() {
        let mut w = world();
        map(&mut w, "a", "svrsan2011", None);
        let e = w.refuse(|st, _| rename_initiator(st, &by("svrsan2011"), "svrsan2012"));
        assert_eq!(
            e,
            "SCSI initiator name svrsan2012 is taken; choose another --new_name"
        );
        let g = generations(&w.st);
        assert_eq!(
            rename_initiator(&mut w.st, &by("svrsan2011"), "svrsan2011").unwrap(),
            "svrsan2011"
        );
        assert_eq!(
            generations(&w.st),
            g,
            "a rename to the same name changes nothing"
        );
        let gone = remove_initiator(&mut w.st, &by("svrsan2011")).unwrap();
        assert_eq!(gone.mappings.len(), 1);
        assert!(w.st.initiators_of(gone.mappings[0].volume).next().is_none());
        remove_volume(&mut w.st, &by("a")).unwrap();
        w.st.check().unwrap();
    }
}
