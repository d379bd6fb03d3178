//! Reservations: PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE (6) and (10), and the
//! check every command passes before it runs.
//!
//! The state is the volume's, not this unit's: it lives in the unit's [`SharedStore`]
//! as JSON ([`PrState`]). A command that changes it loads it, runs the pure rules in
//! [`state`], and stores the result against the version it loaded; if another
//! gateway (or command) got there first, it runs again on the newer state. The unit
//! attentions a change owes other nexuses travel with the store, which delivers them
//! everywhere the volume is served. The per-command check decodes nothing: the state
//! is cached per unit, keyed by the store's version.
//!
//! When the store cannot be updated (the MDM is unreachable for a pool volume), the
//! command fails with ABORTED COMMAND / LOGICAL UNIT COMMUNICATION FAILURE (0B/08/00):
//! nothing was applied and initiators retry ABORTED COMMAND.

pub(crate) mod state;
mod wire;

use super::mode::ModePages;
use super::sense::{asc, Sense, SenseKey};
use super::shared::{NexusId, SharedError, SharedEvent};
use super::{cdb, BoxFut, Ctx, Done, HandlerResult, ItNexus, LogicalUnit};
use serde::{Deserialize, Serialize};
use state::{Change, PrError, PrState};
use std::sync::Arc;

pub(crate) use state::Access;

/// How many times a command re-runs on a newer state before giving up.
const MAX_ATTEMPTS: usize = 16;

/// What the volume's shared store holds: its reservations, and the current mode
/// pages once a MODE SELECT changed them. Mode pages are the logical unit's, not a
/// port's: software write protect set through one gateway must protect the volume
/// through every gateway. Reservation fields stay at the top level, so blobs written
/// before mode pages were shared still decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blob {
    #[serde(flatten)]
    pr: PrState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode_pages: Option<Vec<Vec<u8>>>,
}

/// The last decoded blob and the store version it came from.
#[derive(Debug, Default)]
pub(crate) struct PrCache(Option<(u64, Arc<Blob>)>);

impl PrCache {
    fn get(&self, version: u64) -> Option<Arc<Blob>> {
        match &self.0 {
            Some((v, s)) if *v == version => Some(s.clone()),
            _ => None,
        }
    }
}

/// Installs a newly decoded blob: the cache, and the unit's working copy of the mode
/// pages when the blob carries them.
fn install(unit: &LogicalUnit, version: u64, blob: Arc<Blob>) {
    let mut st = unit.lock();
    if let Some(pages) = blob
        .mode_pages
        .as_ref()
        .and_then(|p| ModePages::from_pages(p))
    {
        st.mode = pages;
    }
    st.pr.0 = Some((version, blob));
}

/// The store's blob could not be decoded: nothing can be said about who may do
/// what, so commands that depend on it fail.
fn damaged() -> Sense {
    Sense::new(SenseKey::HardwareError, asc::INTERNAL_TARGET_FAILURE)
}

fn unavailable() -> Sense {
    Sense::new(
        SenseKey::AbortedCommand,
        asc::LOGICAL_UNIT_COMMUNICATION_FAILURE,
    )
}

/// The volume's shared state as the store has it, and its version.
fn current(unit: &LogicalUnit) -> Result<(u64, Arc<Blob>), Sense> {
    let (version, blob) = unit.shared().load();
    if let Some(s) = unit.lock().pr.get(version) {
        return Ok((version, s));
    }
    let state = if blob.is_empty() {
        Blob::default()
    } else {
        serde_json::from_slice(&blob).map_err(|e| {
            tracing::error!(volume = %unit.identity().name, version, error = %e,
                "reservation state does not decode");
            damaged()
        })?
    };
    let state = Arc::new(state);
    install(unit, version, state.clone());
    Ok((version, state))
}

/// Brings the unit's copy of the shared state (mode pages included) up to the
/// store's version and returns it; a blob that does not decode is reported by the
/// commands that need it (see [`allows`]).
pub(crate) fn refresh(unit: &LogicalUnit) -> Result<Arc<Blob>, Sense> {
    current(unit).map(|(_, s)| s)
}

/// Whether a command of class `access` from `nexus` may run under `state` (what
/// [`refresh`] returned); `Err` when the state cannot be read.
pub(crate) fn allows(
    state: &Result<Arc<Blob>, Sense>,
    nexus: &ItNexus,
    access: Access,
) -> Result<bool, Sense> {
    if matches!(access, Access::Any | Access::Own) {
        return Ok(true);
    }
    let s = state.as_ref().map_err(Clone::clone)?;
    Ok(s.pr.unreserved() || s.pr.permits(&NexusId::from(nexus), access))
}

/// [`allows`] on `unit`'s current state.
pub(crate) fn permits(unit: &LogicalUnit, nexus: &ItNexus, access: Access) -> Result<bool, Sense> {
    allows(&refresh(unit), nexus, access)
}

/// Why [`transact`] did not store a change.
enum Failed {
    Refused(PrError),
    Store(Sense),
}

/// Runs `rule` on the current state and stores what it returns, re-running it on a
/// newer state after a lost race. `Ok(false)`: the rule changed nothing.
async fn transact<F>(unit: &LogicalUnit, rule: F) -> Result<bool, Failed>
where
    F: Fn(&PrState) -> Result<Option<Change>, PrError>,
{
    update(unit, |b| {
        let Some(change) = rule(&b.pr)? else {
            return Ok(None);
        };
        let next = Blob {
            pr: change.state,
            mode_pages: b.mode_pages.clone(),
        };
        Ok(Some((next, change.events)))
    })
    .await
}

/// Replaces the volume's mode pages with `pages` (a MODE SELECT through `origin`);
/// every other nexus, on every gateway, gets MODE PARAMETERS CHANGED.
pub(crate) async fn store_mode(
    unit: &LogicalUnit,
    origin: &ItNexus,
    pages: Vec<Vec<u8>>,
) -> Result<(), Sense> {
    let origin = NexusId::from(origin);
    let r = update(unit, |b| {
        if b.mode_pages.as_ref() == Some(&pages) {
            return Ok(None);
        }
        let next = Blob {
            pr: b.pr.clone(),
            mode_pages: Some(pages.clone()),
        };
        let ev = SharedEvent::UnitAttentionOthers {
            origin: Some(origin.clone()),
            asc: asc::MODE_PARAMETERS_CHANGED,
        };
        Ok(Some((next, vec![ev])))
    })
    .await;
    match r {
        Ok(_) => Ok(()),
        Err(Failed::Refused(PrError::Sense(s)) | Failed::Store(s)) => Err(s),
        Err(Failed::Refused(PrError::Conflict)) => Err(unavailable()),
    }
}

/// Runs `rule` on the current blob and stores what it returns, re-running it on a
/// newer blob after a lost race. `Ok(false)`: the rule changed nothing.
async fn update<F>(unit: &LogicalUnit, rule: F) -> Result<bool, Failed>
where
    F: Fn(&Blob) -> Result<Option<(Blob, Vec<SharedEvent>)>, PrError>,
{
    for _ in 0..MAX_ATTEMPTS {
        let (version, b) = current(unit).map_err(Failed::Store)?;
        let Some((next, events)) = rule(&b).map_err(Failed::Refused)? else {
            return Ok(false);
        };
        let blob = serde_json::to_vec(&next).expect("the shared state serializes");
        match unit.shared().store(version, blob.into(), events).await {
            Ok(v) => {
                let s = &next.pr;
                tracing::info!(volume = %unit.identity().name, version = v,
                    generation = s.generation, registrations = s.registrations.len(),
                    reservation = ?s.reservation.as_ref().map(|r| r.kind),
                    spc2 = s.reserved_by.is_some(), mode_pages = next.mode_pages.is_some(),
                    "shared SCSI state changed");
                install(unit, v, Arc::new(next));
                return Ok(true);
            }
            Err(SharedError::Conflict(_)) => continue,
            Err(e @ SharedError::Unavailable(_)) => {
                tracing::warn!(volume = %unit.identity().name, error = %e,
                    "shared SCSI state change not applied");
                return Err(Failed::Store(unavailable()));
            }
        }
    }
    tracing::warn!(volume = %unit.identity().name, attempts = MAX_ATTEMPTS,
        "shared SCSI state change kept losing races with other updates; not applied");
    Err(Failed::Store(unavailable()))
}

/// A command's answer from [`transact`].
fn answer(r: Result<bool, Failed>) -> HandlerResult {
    match r {
        Ok(_) => Ok(Done::good()),
        Err(Failed::Refused(PrError::Conflict)) => Ok(Done::conflict()),
        Err(Failed::Refused(PrError::Sense(s)) | Failed::Store(s)) => Err(s),
    }
}

/// PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL
/// STATUS (the table routes only these four service actions here).
pub(crate) fn persistent_reserve_in(c: &Ctx<'_>) -> HandlerResult {
    let alloc = usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0));
    let (_, b) = current(c.unit)?;
    let s = &b.pr;
    if s.prin_allowed().is_err() {
        return Ok(Done::conflict());
    }
    let data = match c.cdb[1] & 0x1F {
        0x00 => wire::read_keys(s),
        0x01 => wire::read_reservation(s),
        0x02 => wire::report_capabilities(s),
        0x03 => wire::read_full_status(s),
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    };
    Ok(Done::data(data, alloc))
}

/// PERSISTENT RESERVE OUT, every service action.
pub(crate) fn persistent_reserve_out<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let pll = cdb::u32_at(c.cdb, 5).unwrap_or(0) as usize;
        let data = c.data_out.prefix(pll).to_bytes();
        if data.len() < pll {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let (req, keys) = wire::parse_prout(c.cdb, &data)?;
        let issuer = NexusId::from(c.nexus);
        if let state::Prout::Preempt { abort: true, .. } = req {
            // The preempted nexuses' tasks are not aborted: they may run on other
            // gateways, and the task sets belong to the transport. Their registrations
            // are gone, so their next commands meet the new reservation.
            tracing::info!(initiator = %issuer.initiator,
                "PREEMPT AND ABORT: preempting without aborting the preempted tasks");
        }
        answer(transact(c.unit, |s| s.prout(&issuer, &req, &keys)).await)
    })
}

/// RESERVE(6) and RESERVE(10) (SPC-2 7.21): third-party reservations are refused.
pub(crate) fn reserve<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        if c.cdb[0] == 0x56 && c.cdb[1] & 0x10 != 0 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let n = NexusId::from(c.nexus);
        answer(transact(c.unit, |s| s.reserve_spc2(&n)).await)
    })
}

/// RELEASE(6) and RELEASE(10).
pub(crate) fn release<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        if c.cdb[0] == 0x57 && c.cdb[1] & 0x10 != 0 {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let n = NexusId::from(c.nexus);
        answer(transact(c.unit, |s| s.release_spc2(&n)).await)
    })
}

/// A reset (`who` = None) or the loss of I_T nexus `who` ends an SPC-2 reservation
/// (SPC-2 5.5.1); persistent reservations stay. A store that cannot be reached
/// leaves the reservation in place, logged.
pub(crate) async fn drop_spc2(unit: &LogicalUnit, who: Option<&ItNexus>) {
    let who = who.map(NexusId::from);
    if let Err(Failed::Store(_)) = transact(unit, |s| Ok(s.drop_spc2(who.as_ref()))).await {
        tracing::warn!(volume = %unit.identity().name,
            "RESERVE(6)/(10) reservation not released after reset or nexus loss");
    }
}

#[cfg(test)]
mod tests;
