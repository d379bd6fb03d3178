//! A logical unit: the backend plus the SCSI state shared by every nexus that reaches it.

use super::alua::PortGroups;
use super::copy::CopyResults;
use super::mode::ModePages;
use super::pr::{self, PrCache};
use super::sanitize::{self, Progress};
use super::sense::asc;
use super::shared::{SharedEvent, SharedStore, UnitSink};
use super::ua::UaQueues;
use super::{Identity, ItNexus, ResetKind};
use crate::backend::BlockBackend;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::warn;

/// Everything mutable about a unit. Guarded by one std mutex that is never held across
/// an `.await`: handlers copy what they need out and drop the guard before I/O.
#[derive(Debug, Default)]
pub(crate) struct UnitState {
    pub ua: UaQueues,
    pub mode: ModePages,
    /// Nexuses holding PREVENT MEDIUM REMOVAL.
    pub prevent: HashSet<ItNexus>,
    /// The volume's reservation state, decoded once per store version.
    pub pr: PrCache,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS.
    pub copies: CopyResults,
}

/// What the units of one volume in this process (its read-write and read-only ones)
/// share besides the [`SharedStore`]: the medium's sanitize state and the port groups
/// that reach the volume.
#[derive(Debug, Default)]
struct Medium {
    sanitize: Arc<Mutex<sanitize::Status>>,
    ports: PortGroups,
}

#[derive(Debug)]
pub struct LogicalUnit {
    backend: Arc<dyn BlockBackend>,
    identity: Identity,
    read_only: bool,
    state: Arc<Mutex<UnitState>>,
    /// Reservations and cross-gateway events, shared by every unit of the volume.
    shared: Arc<dyn SharedStore>,
    medium: Arc<Medium>,
}

impl LogicalUnit {
    /// `shared` is the volume's: units of one volume (a read-write and a read-only
    /// one, here and on other gateways) must be given the same store.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        identity: Identity,
        read_only: bool,
        shared: Arc<dyn SharedStore>,
    ) -> Self {
        let state = Arc::new(Mutex::new(UnitState::default()));
        shared.attach(UnitSink(Arc::downgrade(&state)));
        Self {
            backend,
            identity,
            read_only,
            state,
            shared,
            medium: Arc::default(),
        }
    }

    /// Another unit over the same volume (a read-only one beside a read-write one):
    /// same backend, identity, shared store, sanitize state and port groups; its own
    /// unit attentions, mode pages and PREVENT state.
    pub fn twin(&self, read_only: bool) -> Self {
        let state = Arc::new(Mutex::new(UnitState::default()));
        self.shared.attach(UnitSink(Arc::downgrade(&state)));
        Self {
            backend: self.backend.clone(),
            identity: self.identity.clone(),
            read_only,
            state,
            shared: self.shared.clone(),
            medium: self.medium.clone(),
        }
    }

    /// The target port groups (gateways) serving this volume; the gateway replaces
    /// them when the cluster's view changes.
    pub fn ports(&self) -> &PortGroups {
        &self.medium.ports
    }

    pub(crate) fn shared(&self) -> &dyn SharedStore {
        &*self.shared
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn num_blocks(&self) -> u64 {
        self.backend.num_blocks()
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn backend(&self) -> &dyn BlockBackend {
        &*self.backend
    }

    pub(crate) fn backend_arc(&self) -> Arc<dyn BlockBackend> {
        self.backend.clone()
    }

    /// The sense a command gets because a sanitize runs or failed, unless `opcode` is
    /// one that may run anyway.
    pub(crate) fn sanitize_hold(&self, opcode: Option<u8>) -> Option<super::Sense> {
        let st = self
            .medium
            .sanitize
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        st.condition().filter(|_| !st.admits(opcode))
    }

    /// The sanitize condition REQUEST SENSE reports, if any.
    pub(crate) fn sanitize_condition(&self) -> Option<super::Sense> {
        let st = self
            .medium
            .sanitize
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        st.condition()
    }

    pub(crate) fn begin_sanitize(
        &self,
        progress: Arc<Progress>,
    ) -> Result<Arc<Mutex<sanitize::Status>>, super::Sense> {
        sanitize::begin(&self.medium.sanitize, progress)?;
        Ok(self.medium.sanitize.clone())
    }

    pub(crate) fn exit_sanitize_failure(&self) -> Result<(), super::Sense> {
        sanitize::exit_failure(&self.medium.sanitize)
    }

    /// The volume's size changed: every nexus that has reached this unit learns it
    /// through CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self) {
        self.lock()
            .ua
            .raise_unless(None, asc::CAPACITY_DATA_HAS_CHANGED);
    }

    /// The state lock; a poisoned lock still holds consistent state (every update is a
    /// plain assignment), so it is recovered rather than propagated as a panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, UnitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// LOGICAL UNIT RESET or target reset: PREVENT state is cleared, mode pages stay,
    /// every nexus learns about it through a unit attention, on every gateway that
    /// serves the volume (the logical unit is one, whichever port it is reached by),
    /// and an SPC-2 RESERVE is released (persistent reservations stay).
    pub async fn reset(&self, kind: ResetKind) {
        // SAM-5: a LUN reset and a target (warm) reset report BUS DEVICE RESET FUNCTION
        // OCCURRED; RFC 7143 makes a cold reset the equivalent of a power cycle.
        let asc = match kind {
            ResetKind::LogicalUnit | ResetKind::TargetWarm => {
                asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED
            }
            ResetKind::TargetCold => asc::POWER_ON_OCCURRED,
        };
        // The store delivers to this gateway's units first, so a failure to reach the
        // others still resets the unit here.
        if let Err(e) = self.shared.publish(vec![SharedEvent::Reset { asc }]).await {
            warn!(serial = %self.identity.serial, error = %e, "reset not propagated to the other gateways");
        }
        pr::drop_spc2(self, None).await;
    }

    /// The LUN inventory this nexus sees has changed (a volume was mapped or
    /// unmapped): it learns through REPORTED LUNS DATA HAS CHANGED on this unit.
    pub fn luns_changed(&self, nexus: &ItNexus) {
        self.lock()
            .ua
            .raise(nexus, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    }

    /// The nexus is gone: its PREVENT, pending unit attentions, held copy results and
    /// SPC-2 RESERVE go with it (its persistent reservations stay), and a reconnect
    /// under the same identity starts afresh with a power-on condition.
    pub async fn nexus_lost(&self, nexus: &ItNexus) {
        {
            let mut st = self.lock();
            st.prevent.remove(nexus);
            st.copies.forget(nexus);
            st.ua.forget(nexus);
        }
        pr::drop_spc2(self, Some(nexus)).await;
    }
}

impl LogicalUnit {
    /// DATA PROTECT for a read-only volume, or one an initiator protected through the
    /// Control page SWP bit.
    pub(crate) fn check_writable(&self) -> Result<(), super::Sense> {
        use super::{Sense, SenseKey};
        if self.read_only {
            return Err(Sense::new(SenseKey::DataProtect, asc::WRITE_PROTECTED));
        }
        if self.lock().mode.swp() {
            return Err(Sense::new(
                SenseKey::DataProtect,
                asc::SOFTWARE_WRITE_PROTECTED,
            ));
        }
        Ok(())
    }

    /// Whether writes must be durable on completion (Caching page WCE cleared).
    pub(crate) fn write_through(&self) -> bool {
        !self.lock().mode.write_cache()
    }
}
