//! The declarative initiator map (`conf/initiators.toml`): the whole registry and its
//! mappings replaced in one change. The map is checked whole before anything is
//! built, so one bad entry changes nothing. Initiators are matched to registered ones
//! by iSCSI name, so a host keeps its id, its CHAP (when the map says keep) and, where
//! the map gives none, its LUNs.

use super::initiator::{chap_problem, chap_words};
use super::{name_problem, touch_all, ChangeError};
use crate::cluster::api::{AccessMode, Chap, InitiatorMap, MapChap};
use crate::cluster::iscsi_name::{self, NameError};
use crate::mdm::ids::IdGen;
use crate::mdm::model::{LunMapping, ScsiInitiator, State, MAX_LUN};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Why a map was refused; each names the initiator (as the map names it).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("initiator map: SCSI initiator name {name:?} is not usable: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("initiator map: SCSI initiator name {name} is listed twice; give each initiator its own name")]
    DuplicateName { name: String },
    #[error("initiator map: SCSI initiator {initiator}: {error}")]
    BadIqn { initiator: String, error: NameError },
    #[error("initiator map: SCSI initiators {first} and {second} have the same iSCSI name {iqn}; list each host once")]
    DuplicateIqn {
        first: String,
        second: String,
        iqn: String,
    },
    /// Never shows a secret: errors are logged.
    #[error("initiator map: CHAP for SCSI initiator {initiator} is not usable: {reason}")]
    BadChap {
        initiator: String,
        reason: &'static str,
    },
    #[error("initiator map: SCSI initiator {initiator} keeps its CHAP unchanged, but {why}; give its CHAP secrets or no CHAP")]
    NothingToKeep {
        initiator: String,
        why: &'static str,
    },
    #[error("initiator map: SCSI initiator {initiator}: volume {volume} does not exist; list them with --query_all_volumes")]
    UnknownVolume { initiator: String, volume: String },
    #[error("initiator map: SCSI initiator {initiator} lists volume {volume} twice; map each volume once per initiator")]
    VolumeTwice { initiator: String, volume: String },
    #[error("initiator map: SCSI initiator {initiator}: LUN {lun} of volume {volume} is over the highest LUN {MAX_LUN}")]
    LunRange {
        initiator: String,
        volume: String,
        lun: u64,
    },
    #[error("initiator map: SCSI initiator {initiator} gives LUN {lun} to both volume {first} and volume {second}; give each its own LUN or leave one out for the lowest free")]
    LunTwice {
        initiator: String,
        lun: u64,
        first: String,
        second: String,
    },
    #[error("initiator map: SCSI initiator {initiator} maps {count} volumes but has only {} LUNs", MAX_LUN + 1)]
    TooManyVolumes { initiator: String, count: usize },
}

/// One initiator of a checked map, with names resolved.
struct Planned {
    name: String,
    iqn: String,
    /// The registered initiator with this iSCSI name.
    existing: Option<u64>,
    chap: Option<Chap>,
    /// (volume id, LUN if the map gives one, access).
    entries: Vec<(u64, Option<u64>, AccessMode)>,
}

/// Replaces the registry with `map`; returns one line per change (none: the map was
/// already in force, and nothing changed).
pub fn apply_map(
    st: &mut State,
    ids: &mut IdGen,
    map: &InitiatorMap,
) -> Result<Vec<String>, ChangeError> {
    let planned = check(st, map)?;
    let order: Vec<u64> = planned
        .iter()
        .map(|p| p.existing.unwrap_or_else(|| ids.fresh()))
        .collect();
    let next: BTreeMap<u64, ScsiInitiator> = order
        .iter()
        .zip(planned)
        .map(|(&id, p)| (id, build(st, id, p)))
        .collect();
    let lines = describe(st, &next, &order);
    if next != st.initiators {
        st.initiators = next;
        touch_all(st);
    }
    Ok(lines)
}

fn check(st: &State, map: &InitiatorMap) -> Result<Vec<Planned>, MapError> {
    let mut names = HashSet::new();
    let mut iqns: HashMap<String, &str> = HashMap::new();
    let mut out = Vec::with_capacity(map.initiators.len());
    for mi in &map.initiators {
        let initiator = mi.name.clone();
        if let Some(reason) = name_problem(&mi.name) {
            return Err(MapError::BadName {
                name: initiator,
                reason,
            });
        }
        if !names.insert(&mi.name) {
            return Err(MapError::DuplicateName { name: initiator });
        }
        let iqn = iscsi_name::normalize(&mi.iqn).map_err(|error| MapError::BadIqn {
            initiator: initiator.clone(),
            error,
        })?;
        if let Some(first) = iqns.insert(iqn.clone(), &mi.name) {
            return Err(MapError::DuplicateIqn {
                first: first.to_string(),
                second: initiator,
                iqn,
            });
        }
        let existing = st.initiators.values().find(|i| i.iqn == iqn);
        let chap = match &mi.chap {
            MapChap::None => None,
            MapChap::Keep => {
                let kept = existing.and_then(|i| i.chap.clone());
                let why = match existing {
                    None => "it is not registered yet",
                    Some(_) => "it has no CHAP set",
                };
                Some(kept.ok_or(MapError::NothingToKeep {
                    initiator: initiator.clone(),
                    why,
                })?)
            }
            MapChap::Set(c) => {
                if let Some(reason) = chap_problem(c) {
                    return Err(MapError::BadChap { initiator, reason });
                }
                Some(c.clone())
            }
        };
        if mi.mappings.len() as u64 > MAX_LUN + 1 {
            return Err(MapError::TooManyVolumes {
                initiator,
                count: mi.mappings.len(),
            });
        }
        let mut volumes = HashSet::new();
        let mut luns: HashMap<u64, &str> = HashMap::new();
        let mut entries = Vec::with_capacity(mi.mappings.len());
        for e in &mi.mappings {
            let Some(vol) = st.volumes.values().find(|v| v.name == e.volume) else {
                return Err(MapError::UnknownVolume {
                    initiator,
                    volume: e.volume.clone(),
                });
            };
            if !volumes.insert(vol.id) {
                return Err(MapError::VolumeTwice {
                    initiator,
                    volume: e.volume.clone(),
                });
            }
            if let Some(lun) = e.lun {
                if lun > MAX_LUN {
                    return Err(MapError::LunRange {
                        initiator,
                        volume: e.volume.clone(),
                        lun,
                    });
                }
                if let Some(first) = luns.insert(lun, &e.volume) {
                    return Err(MapError::LunTwice {
                        initiator,
                        lun,
                        first: first.to_string(),
                        second: e.volume.clone(),
                    });
                }
            }
            entries.push((vol.id, e.lun, e.access));
        }
        out.push(Planned {
            name: initiator,
            iqn,
            existing: existing.map(|i| i.id),
            chap,
            entries,
        });
    }
    Ok(out)
}

/// The initiator `p` describes. LUNs: the map's; else the one the volume has now, if
/// the map gives it to no other volume; else the lowest free.
fn build(st: &State, id: u64, p: Planned) -> ScsiInitiator {
    let old = p.existing.map(|id| &st.initiators[&id]);
    let mut used: HashSet<u64> = p.entries.iter().filter_map(|e| e.1).collect();
    let mut luns: Vec<Option<u64>> = p.entries.iter().map(|e| e.1).collect();
    for (lun, e) in luns.iter_mut().zip(&p.entries) {
        if let (None, Some(m)) = (*lun, old.and_then(|o| o.mapping(e.0))) {
            if used.insert(m.lun) {
                *lun = Some(m.lun);
            }
        }
    }
    let mut free = (0..=MAX_LUN).filter(|l| !used.contains(l));
    for lun in luns.iter_mut().filter(|l| l.is_none()) {
        *lun = Some(free.next().expect("checked: no more volumes than LUNs"));
    }
    let mut mappings: Vec<LunMapping> = luns
        .into_iter()
        .zip(&p.entries)
        .map(|(lun, &(volume, _, access))| LunMapping {
            volume,
            lun: lun.expect("every LUN assigned above"),
            access,
        })
        .collect();
    mappings.sort_by_key(|m| m.lun);
    ScsiInitiator {
        id,
        name: p.name,
        iqn: p.iqn,
        chap: p.chap,
        mappings,
    }
}

/// One line per difference between the registry in `st` and `next`: initiators gone,
/// then those of the map in its order, each with its CHAP change, its volumes unmapped,
/// then its mappings in LUN order.
fn describe(st: &State, next: &BTreeMap<u64, ScsiInitiator>, order: &[u64]) -> Vec<String> {
    let vol = |id: u64| st.volumes[&id].name.as_str();
    let mut gone: Vec<&ScsiInitiator> = st
        .initiators
        .values()
        .filter(|i| !next.contains_key(&i.id))
        .collect();
    gone.sort_by(|a, b| a.name.cmp(&b.name));
    let mut lines: Vec<String> = gone
        .iter()
        .map(|i| format!("removed SCSI initiator {} ({})", i.name, i.iqn))
        .collect();
    for new in order.iter().map(|id| &next[id]) {
        let old = st.initiators.get(&new.id);
        let name = &new.name;
        match old {
            None => lines.push(format!("added SCSI initiator {name} ({})", new.iqn)),
            Some(o) if o.name != *name => lines.push(format!(
                "renamed SCSI initiator {} to {name} ({})",
                o.name, new.iqn
            )),
            Some(_) => {}
        }
        if old.and_then(|o| o.chap.as_ref()) != new.chap.as_ref() {
            lines.push(match &new.chap {
                Some(c) => format!("set CHAP ({}) for {name}", chap_words(c)),
                None => format!("cleared CHAP for {name}"),
            });
        }
        let before = old.map_or(&[][..], |o| &o.mappings[..]);
        for m in before.iter().filter(|m| new.mapping(m.volume).is_none()) {
            lines.push(format!(
                "unmapped {} (LUN {}) from {name}",
                vol(m.volume),
                m.lun
            ));
        }
        for m in &new.mappings {
            let v = vol(m.volume);
            let Some(o) = before.iter().find(|o| o.volume == m.volume) else {
                lines.push(format!(
                    "mapped {v} to {name} as LUN {} ({:?})",
                    m.lun, m.access
                ));
                continue;
            };
            if o.lun != m.lun {
                lines.push(format!(
                    "moved {v} on {name} from LUN {} to LUN {}",
                    o.lun, m.lun
                ));
            }
            if o.access != m.access {
                lines.push(format!("changed access of {v} on {name} to {:?}", m.access));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::super::initiator::tests::{chap, generations, world, IQN1, IQN2};
    use super::super::initiator::{map_to_initiator, set_chap};
    use super::super::tests::{by, World};
    use super::*;
    use crate::cluster::api::{MapEntry, MapInitiator};
    use crate::mdm::query;

    fn entry(volume: &str, lun: Option<u64>, access: AccessMode) -> MapEntry {
        MapEntry {
            volume: volume.into(),
            lun,
            access,
        }
    }

    fn rw(volume: &str, lun: Option<u64>) -> MapEntry {
        entry(volume, lun, AccessMode::ReadWrite)
    }

    fn initiator(name: &str, iqn: &str, chap: MapChap, mappings: Vec<MapEntry>) -> MapInitiator {
        MapInitiator {
            name: name.into(),
            iqn: iqn.into(),
            chap,
            mappings,
        }
    }

    fn apply(w: &mut World, initiators: Vec<MapInitiator>) -> Vec<String> {
        apply_map(&mut w.st, &mut w.ids, &InitiatorMap { initiators }).unwrap()
    }

    fn refused(w: &mut World, initiators: Vec<MapInitiator>) -> String {
        let map = InitiatorMap { initiators };
        w.refuse(|st, ids| apply_map(st, ids, &map))
    }

    /// svrsan2011 with CHAP, a at LUN 0 and b at LUN 1; svrsan2012 with c at LUN 4.
    fn mapped_world() -> World {
        let mut w = world();
        let ro = AccessMode::ReadOnly;
        let rw = AccessMode::ReadWrite;
        for (v, i, lun, access) in [
            ("a", "svrsan2011", None, rw),
            ("b", "svrsan2011", None, ro),
            ("c", "svrsan2012", Some(4), rw),
        ] {
            map_to_initiator(&mut w.st, &by(v), &by(i), lun, access).unwrap();
        }
        set_chap(
            &mut w.st,
            &by("svrsan2011"),
            Some(&chap("twelve-bytes", None)),
        )
        .unwrap();
        w
    }

    #[test]
    fn an_exported_map_applies_as_no_change() {
        let mut w = mapped_world();
        let before = w.st.clone();
        let map = query::initiator_map(&w.st);
        let lines = apply_map(&mut w.st, &mut w.ids, &map).unwrap();
        assert_eq!(lines, Vec::<String>::new());
        assert_eq!(w.st, before, "not even a generation moved");
    }

    #[test]
    fn a_map_adds_renames_removes_and_remaps() {
        let mut w = mapped_world();
        let ids_before: Vec<u64> = w.st.initiators.keys().copied().collect();
        let g = generations(&w.st);
        let lines = apply(
            &mut w,
            vec![
                initiator(
                    "esx1",
                    &IQN1.to_uppercase(),
                    MapChap::Keep,
                    vec![
                        entry("b", None, AccessMode::ReadWrite),
                        rw("c", None),
                        rw("a", Some(3)),
                    ],
                ),
                initiator(
                    "esx3",
                    "eui.02004567A425678D",
                    MapChap::Set(chap("twelve-bytes", Some("mutual-secret"))),
                    vec![rw("a", None)],
                ),
            ],
        );
        assert_eq!(
            lines,
            [
                "removed SCSI initiator svrsan2012 (iqn.1998-01.com.vmware:svrsan2012)",
                "renamed SCSI initiator svrsan2011 to esx1 (iqn.1998-01.com.vmware:svrsan2011)",
                "mapped c to esx1 as LUN 0 (ReadWrite)",
                "changed access of b on esx1 to ReadWrite",
                "moved a on esx1 from LUN 0 to LUN 3",
                "added SCSI initiator esx3 (eui.02004567a425678d)",
                "set CHAP (mutual) for esx3",
                "mapped a to esx3 as LUN 0 (ReadWrite)",
            ]
        );
        let esx1 = w.st.initiator(&by("esx1")).unwrap();
        assert!(
            ids_before.contains(&esx1.id),
            "matched by iSCSI name, id kept"
        );
        assert_eq!(esx1.chap, Some(chap("twelve-bytes", None)), "CHAP kept");
        let luns: Vec<u64> = esx1.mappings.iter().map(|m| m.lun).collect();
        assert_eq!(luns, [0, 1, 3], "b kept LUN 1, c took the lowest free");
        assert!(w.st.initiator(&by("svrsan2012")).is_err());
        assert!(generations(&w.st).iter().zip(&g).all(|(a, b)| a > b));
        w.st.check().unwrap();
    }

    #[test]
    fn chap_is_kept_set_or_cleared() {
        let mut w = mapped_world();
        let one = |chap| {
            vec![initiator(
                "svrsan2011",
                IQN1,
                chap,
                vec![rw("a", None), entry("b", None, AccessMode::ReadOnly)],
            )]
        };
        let other = initiator("svrsan2012", IQN2, MapChap::None, vec![rw("c", Some(4))]);
        let mut map = one(MapChap::Keep);
        map.push(other.clone());
        assert!(apply(&mut w, map).is_empty());
        let mut map = one(MapChap::Set(chap("another-secret", None)));
        map.push(other.clone());
        assert_eq!(apply(&mut w, map), ["set CHAP (one-way) for svrsan2011"]);
        let i = w.st.initiator(&by("svrsan2011")).unwrap();
        assert_eq!(i.chap, Some(chap("another-secret", None)));
        let mut map = one(MapChap::None);
        map.push(other);
        assert_eq!(apply(&mut w, map), ["cleared CHAP for svrsan2011"]);
        assert_eq!(w.st.initiator(&by("svrsan2011")).unwrap().chap, None);
    }

    #[test]
    fn an_empty_map_removes_everything() {
        let mut w = mapped_world();
        let lines = apply(&mut w, Vec::new());
        assert_eq!(lines.len(), 2);
        assert!(w.st.initiators.is_empty());
        super::super::remove_volume(&mut w.st, &by("a")).unwrap();
    }

    #[test]
    fn one_bad_entry_changes_nothing_and_is_named() {
        let mut w = mapped_world();
        let good = || initiator("esx9", "iqn.2026-01.io.example:esx9", MapChap::None, vec![]);
        let cases: Vec<(MapInitiator, &str)> = vec![
            (
                initiator("svrsan2011", "svrsan2011", MapChap::None, vec![]),
                "initiator map: SCSI initiator svrsan2011: iSCSI name \"svrsan2011\" must start with iqn., eui. or naa.",
            ),
            (
                initiator("bad name", IQN1, MapChap::None, vec![]),
                "SCSI initiator name \"bad name\" is not usable: it contains a space",
            ),
            (
                initiator("esx9", IQN1, MapChap::None, vec![]),
                "SCSI initiator name esx9 is listed twice",
            ),
            (
                initiator("other", "IQN.2026-01.io.example:ESX9", MapChap::None, vec![]),
                "SCSI initiators esx9 and other have the same iSCSI name iqn.2026-01.io.example:esx9",
            ),
            (
                initiator("x", IQN1, MapChap::Set(chap("short", None)), vec![]),
                "CHAP for SCSI initiator x is not usable: the CHAP secret must be 12 to 255 bytes",
            ),
            (
                initiator("x", IQN2, MapChap::Keep, vec![]),
                "SCSI initiator x keeps its CHAP unchanged, but it has no CHAP set",
            ),
            (
                initiator("x", "eui.02004567A425678D", MapChap::Keep, vec![]),
                "SCSI initiator x keeps its CHAP unchanged, but it is not registered yet",
            ),
            (
                initiator("x", IQN1, MapChap::None, vec![rw("nope", None)]),
                "SCSI initiator x: volume nope does not exist; list them with --query_all_volumes",
            ),
            (
                initiator("x", IQN1, MapChap::None, vec![rw("a", None), rw("a", Some(2))]),
                "SCSI initiator x lists volume a twice",
            ),
            (
                initiator("x", IQN1, MapChap::None, vec![rw("a", Some(MAX_LUN + 1))]),
                "SCSI initiator x: LUN 16384 of volume a is over the highest LUN 16383",
            ),
            (
                initiator("x", IQN1, MapChap::None, vec![rw("a", Some(2)), rw("b", Some(2))]),
                "SCSI initiator x gives LUN 2 to both volume a and volume b",
            ),
        ];
        for (bad, want) in cases {
            let e = refused(&mut w, vec![good(), bad]);
            assert!(e.contains(want), "{e}\nwanted: {want}");
            assert!(!e.contains("short"), "a secret in an error: {e}");
        }
    }

    #[test]
    fn more_volumes_than_luns_is_refused() {
        let mut w = world();
        let mappings = (0..=MAX_LUN + 1)
            .map(|n| rw(&format!("v{n}"), None))
            .collect();
        let e = refused(&mut w, vec![initiator("x", IQN1, MapChap::None, mappings)]);
        assert_eq!(
            e,
            "initiator map: SCSI initiator x maps 16385 volumes but has only 16384 LUNs"
        );
    }

    #[test]
    fn a_given_lun_wins_over_a_kept_one() {
        let mut w = mapped_world();
        // a had LUN 0 and b LUN 1; the map gives LUN 0 to b and none to a.
        let lines = apply(
            &mut w,
            vec![initiator(
                "svrsan2011",
                IQN1,
                MapChap::Keep,
                vec![rw("a", None), entry("b", Some(0), AccessMode::ReadOnly)],
            )],
        );
        assert!(lines.contains(&"moved b on svrsan2011 from LUN 1 to LUN 0".to_string()));
        assert!(lines.contains(&"moved a on svrsan2011 from LUN 0 to LUN 1".to_string()));
    }
}
