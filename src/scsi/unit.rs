//! A logical unit: the backend plus the SCSI state shared by every nexus that reaches it.

use super::copy::CopyResults;
use super::mode::ModePages;
use super::pr::{self, PrCache};
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

#[derive(Debug)]
pub struct LogicalUnit {
    backend: Arc<dyn BlockBackend>,
    identity: Identity,
    read_only: bool,
    state: Arc<Mutex<UnitState>>,
    /// Reservations and cross-gateway events, shared by every unit of the volume.
    shared: Arc<dyn SharedStore>,
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
        }
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
