//! The targets this gateway exports and who may reach them: the [`TargetDirectory`]
//! the login phase consults, and the LUN map each initiator gets.
//!
//! A target's [`Access`] is replaced whole whenever the MDM's map changes; sessions
//! watch it, so a mapping change reaches logged-in initiators (see the connection).

use super::login::{ChapSecrets, Lookup, SendTarget, TargetDirectory};
use crate::cluster::iscsi_name;
use crate::scsi::LunMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// What one registered initiator may use.
#[derive(Debug, Clone, Default)]
pub struct InitiatorAccess {
    /// Its own CHAP secrets, replacing the target's.
    pub chap: Option<ChapSecrets>,
    pub luns: Arc<LunMap>,
}

/// Who sees what through a target.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The LUNs of a local target, or of a mapped target in demo mode: the same for
    /// every admitted initiator.
    pub shared: Arc<LunMap>,
    /// The initiator map, by normalized iSCSI name; used by mapped targets outside
    /// demo mode, where an initiator not listed here is refused.
    pub initiators: HashMap<String, InitiatorAccess>,
}

/// One iSCSI target: a name and the LUNs behind it.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    /// CHAP for every initiator (local and demo-mode targets).
    pub chap: Option<ChapSecrets>,
    /// Every initiator sees every LUN (first-run demo). Logged loudly at start.
    pub demo_mode: bool,
    /// Initiator names allowed into a local target when not in demo mode.
    pub allowed_initiators: Vec<String>,
    /// The LUNs come from the MDM: per initiator (the initiator map) unless in demo mode.
    pub mapped: bool,
    access: watch::Sender<Arc<Access>>,
}

/// Initiator names compare case-insensitively (RFC 3722); a name that is not a valid
/// iSCSI name can still be compared in lower case.
fn key(initiator: &str) -> String {
    iscsi_name::normalize(initiator).unwrap_or_else(|_| initiator.to_ascii_lowercase())
}

impl Target {
    pub fn new(
        name: String,
        alias: Option<String>,
        chap: Option<ChapSecrets>,
        demo_mode: bool,
        allowed_initiators: Vec<String>,
        mapped: bool,
        access: Access,
    ) -> Self {
        Self {
            name,
            alias,
            chap,
            demo_mode,
            allowed_initiators,
            mapped,
            access: watch::channel(Arc::new(access)).0,
        }
    }

    fn by_initiator(&self) -> bool {
        self.mapped && !self.demo_mode
    }

    pub fn set_access(&self, access: Access) {
        self.access.send_replace(Arc::new(access));
    }

    /// Wakes when the access view changes; sessions re-read their LUNs then.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Access>> {
        self.access.subscribe()
    }

    /// The LUNs `initiator` may use, or None if it may not log in.
    pub fn luns_for(&self, initiator: &str) -> Option<Arc<LunMap>> {
        let a = self.access.borrow().clone();
        if self.by_initiator() {
            a.initiators.get(&key(initiator)).map(|i| i.luns.clone())
        } else if self.demo_mode
            || self
                .allowed_initiators
                .iter()
                .any(|i| key(i) == key(initiator))
        {
            Some(a.shared.clone())
        } else {
            None
        }
    }

    fn chap_for(&self, initiator: &str) -> Option<ChapSecrets> {
        if self.by_initiator() {
            let a = self.access.borrow();
            a.initiators
                .get(&key(initiator))
                .and_then(|i| i.chap.clone())
        } else {
            self.chap.clone()
        }
    }

    /// SendTargets lists a mapped target only to initiators that have a LUN there.
    fn listed_for(&self, initiator: &str) -> bool {
        match self.luns_for(initiator) {
            None => false,
            Some(l) => !self.by_initiator() || !l.is_empty(),
        }
    }
}

/// All targets of this gateway, the portals they are reached through and the portal
/// group those portals form.
#[derive(Debug)]
pub struct TargetSet {
    pub targets: Vec<Arc<Target>>,
    pub portals: Vec<SocketAddr>,
    pub portal_group_tag: u16,
    pub discovery_chap: Option<ChapSecrets>,
}

impl TargetSet {
    pub fn get(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.name == name)
    }

    fn addresses(&self) -> Vec<String> {
        self.portals
            .iter()
            .map(|p| format!("{},{}", p, self.portal_group_tag))
            .collect()
    }
}

impl TargetDirectory for TargetSet {
    fn lookup(&self, target_name: &str, initiator_name: &str) -> Lookup {
        match self.get(target_name) {
            None => Lookup::NotFound,
            Some(t) if t.luns_for(initiator_name).is_none() => Lookup::NotAuthorized,
            Some(t) => Lookup::Found {
                chap: t.chap_for(initiator_name),
            },
        }
    }

    fn target_alias(&self, target_name: &str) -> Option<String> {
        self.get(target_name).and_then(|t| t.alias.clone())
    }

    fn portal_group_tag(&self) -> u16 {
        self.portal_group_tag
    }

    fn send_targets(&self, initiator_name: &str, which: Option<&str>) -> Vec<SendTarget> {
        self.targets
            .iter()
            .filter(|t| t.listed_for(initiator_name))
            .filter(|t| which.is_none_or(|w| w == t.name))
            .map(|t| SendTarget {
                name: t.name.clone(),
                addresses: self.addresses(),
            })
            .collect()
    }

    fn discovery_chap(&self) -> Option<ChapSecrets> {
        self.discovery_chap.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(u: &str) -> ChapSecrets {
        ChapSecrets {
            username: u.into(),
            secret: "averysecretpw".into(),
            mutual: None,
        }
    }

    fn mapped(demo: bool) -> TargetSet {
        let mut initiators = HashMap::new();
        initiators.insert(
            "iqn.1998-01.com.vmware:a".to_string(),
            InitiatorAccess {
                chap: Some(secrets("a")),
                luns: Arc::new(LunMap::new()),
            },
        );
        let t = Target::new(
            "iqn.2026-11.io.dreadnought:t".into(),
            None,
            Some(secrets("target")),
            demo,
            vec![],
            true,
            Access {
                shared: Arc::default(),
                initiators,
            },
        );
        TargetSet {
            targets: vec![Arc::new(t)],
            portals: vec!["127.0.0.1:3260".parse().unwrap()],
            portal_group_tag: 1,
            discovery_chap: None,
        }
    }

    #[test]
    fn initiator_map_admits_only_registered_names_with_their_own_chap() {
        let set = mapped(false);
        let t = "iqn.2026-11.io.dreadnought:t";
        assert_eq!(
            set.lookup(t, "iqn.1998-01.com.vmware:other"),
            Lookup::NotAuthorized
        );
        // Names compare case-insensitively.
        match set.lookup(t, "iqn.1998-01.com.VMware:A") {
            Lookup::Found { chap } => assert_eq!(chap.unwrap().username, "a"),
            other => panic!("{other:?}"),
        }
        // No LUN there: not listed by SendTargets, though it may log in.
        assert!(set
            .send_targets("iqn.1998-01.com.vmware:a", None)
            .is_empty());
    }

    #[test]
    fn demo_mode_admits_everyone_with_the_target_chap() {
        let set = mapped(true);
        match set.lookup(
            "iqn.2026-11.io.dreadnought:t",
            "iqn.1998-01.com.vmware:other",
        ) {
            Lookup::Found { chap } => assert_eq!(chap.unwrap().username, "target"),
            other => panic!("{other:?}"),
        }
        assert_eq!(set.send_targets("iqn.x", None).len(), 1);
    }
}
