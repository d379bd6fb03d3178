//! The targets this gateway exports and who may reach them: the [`TargetDirectory`]
//! the login phase consults. Config-driven for now; the MDM's initiator map replaces
//! the allow-list later.

use super::login::{ChapSecrets, Lookup, SendTarget, TargetDirectory};
use crate::scsi::LunMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// One iSCSI target: a name and the LUNs behind it.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub chap: Option<ChapSecrets>,
    /// Every initiator sees every LUN (first-run demo). Logged loudly at start.
    pub demo_mode: bool,
    /// Initiator names allowed in when not in demo mode.
    pub allowed_initiators: Vec<String>,
    /// Replaced whole when the MDM maps or unmaps a volume; a session keeps the map it
    /// logged in with.
    luns: RwLock<Arc<LunMap>>,
}

impl Target {
    pub fn new(
        name: String,
        alias: Option<String>,
        chap: Option<ChapSecrets>,
        demo_mode: bool,
        allowed_initiators: Vec<String>,
        luns: LunMap,
    ) -> Self {
        Self {
            name,
            alias,
            chap,
            demo_mode,
            allowed_initiators,
            luns: RwLock::new(Arc::new(luns)),
        }
    }

    pub fn luns(&self) -> Arc<LunMap> {
        self.luns.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_luns(&self, luns: Arc<LunMap>) {
        *self.luns.write().unwrap_or_else(|p| p.into_inner()) = luns;
    }

    pub fn admits(&self, initiator: &str) -> bool {
        self.demo_mode || self.allowed_initiators.iter().any(|i| i == initiator)
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
            Some(t) if !t.admits(initiator_name) => Lookup::NotAuthorized,
            Some(t) => Lookup::Found {
                chap: t.chap.clone(),
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
            .filter(|t| t.admits(initiator_name))
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
