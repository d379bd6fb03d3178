//! State of a logical unit that every gateway serving its volume must agree on.
//!
//! Reservations (SPC-2 RESERVE and persistent reservations) belong to the volume, not
//! to one gateway: a host that reserves through gateway A must be fenced on gateway B
//! the moment its PERSISTENT RESERVE OUT completes. So does a unit attention one
//! gateway's command owes the nexuses of another (a LUN reset, a preempted
//! registration). A [`SharedStore`] holds that state as an opaque, versioned blob the
//! SCSI engine encodes: in this process for local volumes ([`LocalStore`]), with the
//! MDM for pool volumes (`sdc::shared`), which hands every update to the other gateways
//! before it answers.
//!
//! Updates are compare-and-swap on the version, so two gateways racing a PERSISTENT
//! RESERVE OUT cannot both win: the loser re-reads and re-runs its command.

use super::sense::AscCode;
use super::unit::UnitState;
use super::ItNexus;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Mutex, Weak};

/// An I_T nexus as it travels between gateways: initiator port (name, lower-cased
/// since iSCSI names compare case-insensitively, and ISID) and target port (the
/// gateway's portal group tag, unique per gateway in a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NexusId {
    pub initiator: String,
    pub isid: [u8; 6],
    pub tpgt: u16,
}

impl From<&ItNexus> for NexusId {
    fn from(n: &ItNexus) -> Self {
        Self {
            initiator: n.initiator.to_ascii_lowercase(),
            isid: n.isid,
            tpgt: n.tpgt,
        }
    }
}

impl NexusId {
    pub fn matches(&self, n: &ItNexus) -> bool {
        self.isid == n.isid
            && self.tpgt == n.tpgt
            && self.initiator.eq_ignore_ascii_case(&n.initiator)
    }
}

/// What one gateway's command does to the units of the volume on every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SharedEvent {
    /// A unit attention for one nexus (e.g. REGISTRATIONS PREEMPTED).
    UnitAttention { nexus: NexusId, asc: AscCode },
    /// A unit attention for every nexus but `origin` (e.g. RESERVATIONS RELEASED).
    UnitAttentionOthers {
        origin: Option<NexusId>,
        asc: AscCode,
    },
    /// A logical unit reset: PREVENT state cleared, every nexus gets `asc` in place of
    /// its older conditions.
    Reset { asc: AscCode },
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Someone else updated the state first; re-read it and run the command again.
    #[error("the volume's shared SCSI state moved to version {0} meanwhile; re-read it and retry")]
    Conflict(u64),
    /// The authority (the MDM) could not be reached or refused; nothing was applied.
    #[error(
        "the volume's shared SCSI state could not be updated: {0}; check that the MDM is reachable"
    )]
    Unavailable(String),
}

/// Where a volume's shared SCSI state lives.
#[async_trait]
pub trait SharedStore: Send + Sync + std::fmt::Debug {
    /// The state as this process last saw it, and its version (0 and empty: never
    /// written). Cheap: called on every command that must check for a reservation
    /// conflict.
    fn load(&self) -> (u64, Bytes);

    /// Replaces the state written as `version` with `state`, then delivers `events` to
    /// the units of this volume on every gateway (this one included) before it returns.
    async fn store(
        &self,
        version: u64,
        state: Bytes,
        events: Vec<SharedEvent>,
    ) -> Result<u64, SharedError>;

    /// Delivers `events` to every unit of the volume, leaving the state as it is.
    async fn publish(&self, events: Vec<SharedEvent>) -> Result<(), SharedError>;

    /// Registers a unit of this process to receive events (a volume may have a
    /// read-write and a read-only unit on the same gateway).
    fn attach(&self, sink: UnitSink);
}

/// A unit's mailbox for [`SharedEvent`]s; weak, so a store never keeps a unit alive.
#[derive(Debug, Clone)]
pub struct UnitSink(pub(crate) Weak<Mutex<UnitState>>);

impl UnitSink {
    /// Applies `ev` to the unit; false once the unit is gone.
    pub fn deliver(&self, ev: &SharedEvent) -> bool {
        let Some(state) = self.0.upgrade() else {
            return false;
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            SharedEvent::UnitAttention { nexus, asc } => st.ua.raise_matching(nexus, *asc),
            SharedEvent::UnitAttentionOthers { origin, asc } => {
                st.ua.raise_unless(origin.as_ref(), *asc)
            }
            SharedEvent::Reset { asc } => {
                st.prevent.clear();
                st.copies.clear();
                st.ua.reset_all(*asc);
            }
        }
        true
    }
}

/// The units of one volume in this process.
#[derive(Debug, Default)]
pub struct Sinks(Mutex<Vec<UnitSink>>);

impl Sinks {
    pub fn attach(&self, sink: UnitSink) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(sink);
    }

    /// Delivers every event to every live unit, dropping the dead.
    pub fn deliver(&self, events: &[SharedEvent]) {
        let mut sinks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        sinks.retain(|s| events.iter().all(|ev| s.deliver(ev)));
    }
}

/// The state of a volume no other gateway serves (a local file volume): in memory,
/// and in a file beside the volume when one is given, so reservations made with APTPL
/// (and the rest: the unit never lost power as far as the volume knows) survive a
/// gateway restart.
#[derive(Debug, Default)]
pub struct LocalStore {
    state: Mutex<(u64, Bytes)>,
    sinks: Sinks,
    file: Option<PathBuf>,
    /// Orders writers, file write included.
    writer: tokio::sync::Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    version: u64,
    state: String,
}

impl LocalStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store kept in `file` too, starting from what it holds (nothing if absent).
    pub fn persistent(file: PathBuf) -> Result<Self, SharedError> {
        let bad = |e: &dyn std::fmt::Display| {
            SharedError::Unavailable(format!("{}: {e}", file.display()))
        };
        let (version, state) = match std::fs::read(&file) {
            Ok(b) => {
                let s: Saved = serde_json::from_slice(&b).map_err(|e| bad(&e))?;
                (s.version, Bytes::from(s.state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, Bytes::new()),
            Err(e) => return Err(bad(&e)),
        };
        Ok(Self {
            state: Mutex::new((version, state)),
            file: Some(file),
            ..Self::default()
        })
    }
}

#[async_trait]
impl SharedStore for LocalStore {
    fn load(&self) -> (u64, Bytes) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn store(
        &self,
        version: u64,
        state: Bytes,
        events: Vec<SharedEvent>,
    ) -> Result<u64, SharedError> {
        let _writer = self.writer.lock().await;
        let have = self.load().0;
        if have != version {
            return Err(SharedError::Conflict(have));
        }
        if let Some(file) = &self.file {
            let saved = Saved {
                version: version + 1,
                state: String::from_utf8(state.to_vec()).map_err(|_| {
                    SharedError::Unavailable(
                        "the SCSI engine produced a state that is not UTF-8".into(),
                    )
                })?,
            };
            let body = serde_json::to_vec(&saved).expect("the state always serializes");
            let path = file.clone();
            tokio::task::spawn_blocking(move || crate::durable::replace(&path, &body))
                .await
                .expect("the writer does not panic")
                .map_err(|e| SharedError::Unavailable(format!("{}: {e}", file.display())))?;
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (version + 1, state);
        self.sinks.deliver(&events);
        Ok(version + 1)
    }

    async fn publish(&self, events: Vec<SharedEvent>) -> Result<(), SharedError> {
        self.sinks.deliver(&events);
        Ok(())
    }

    fn attach(&self, sink: UnitSink) {
        self.sinks.attach(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_version_is_refused_and_changes_nothing() {
        let s = LocalStore::new();
        assert_eq!(s.load(), (0, Bytes::new()));
        let v = s.store(0, Bytes::from_static(b"a"), vec![]).await.unwrap();
        assert_eq!(v, 1);
        assert!(matches!(
            s.store(0, Bytes::from_static(b"b"), vec![]).await,
            Err(SharedError::Conflict(1))
        ));
        assert_eq!(s.load(), (1, Bytes::from_static(b"a")));
    }

    #[tokio::test]
    async fn a_persistent_store_comes_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.pr.json");
        let s = LocalStore::persistent(f.clone()).unwrap();
        assert_eq!(s.load().0, 0);
        s.store(0, Bytes::from_static(b"{}"), vec![]).await.unwrap();
        drop(s);
        let s = LocalStore::persistent(f.clone()).unwrap();
        assert_eq!(s.load(), (1, Bytes::from_static(b"{}")));
        std::fs::write(&f, b"garbage").unwrap();
        let e = LocalStore::persistent(f).unwrap_err().to_string();
        assert!(e.contains("v.pr.json"), "{e}");
    }

    #[test]
    fn nexus_ids_compare_names_case_insensitively() {
        let n = ItNexus {
            initiator: "iqn.2000-01.COM.Example:Host".into(),
            isid: [1, 2, 3, 4, 5, 6],
            tpgt: 2,
        };
        let id = NexusId::from(&n);
        assert_eq!(id.initiator, "iqn.2000-01.com.example:host");
        assert!(id.matches(&n));
        assert!(!NexusId { tpgt: 1, ..id }.matches(&n));
    }
}
