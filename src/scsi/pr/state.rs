//! A volume's reservations and the rules that change them: persistent reservations
//! (SPC-4 5.13) and SPC-2 RESERVE/RELEASE, with the exceptions SPC-4 5.13.3 makes for
//! a device server reporting CRH=1. Pure: a state and a request in, a new state and
//! the unit attentions it owes other nexuses out. The caller (`pr::transact`) loads,
//! runs and stores; nothing here knows where the state lives.

use crate::scsi::sense::{asc, AscCode, Sense};
use crate::scsi::shared::{NexusId, SharedEvent};
use serde::{Deserialize, Serialize};

/// Persistent reservation types (SPC-4 6.15.3, table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => Self::WriteExclusive,
            0x3 => Self::ExclusiveAccess,
            0x5 => Self::WriteExclusiveRegistrantsOnly,
            0x6 => Self::ExclusiveAccessRegistrantsOnly,
            0x7 => Self::WriteExclusiveAllRegistrants,
            0x8 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            Self::WriteExclusive => 0x1,
            Self::ExclusiveAccess => 0x3,
            Self::WriteExclusiveRegistrantsOnly => 0x5,
            Self::ExclusiveAccessRegistrantsOnly => 0x6,
            Self::WriteExclusiveAllRegistrants => 0x7,
            Self::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registered nexus holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }

    fn registrants_only(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveRegistrantsOnly | Self::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Registered nexuses have full access (registrants only and all registrants).
    fn shared_by_registrants(self) -> bool {
        self.registrants_only() || self.all_registrants()
    }

    /// Only writes are fenced; others may still read.
    fn write_exclusive(self) -> bool {
        matches!(
            self,
            Self::WriteExclusive
                | Self::WriteExclusiveRegistrantsOnly
                | Self::WriteExclusiveAllRegistrants
        )
    }
}

/// How a command fares against a reservation held through another nexus (SPC-4
/// tables 62-63 in 5.13.1, SBC-3 table 13; SPC-2 5.5.1 for RESERVE/RELEASE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts: INQUIRY, REPORT LUNS, REQUEST SENSE, PREVENT ALLOW with
    /// PREVENT=0.
    Any,
    /// Allowed through every persistent reservation, refused under another nexus's
    /// SPC-2 reservation: TEST UNIT READY, READ CAPACITY, START STOP UNIT with START=1.
    Status,
    /// Reads the medium or reports on it: allowed through Write Exclusive types, and
    /// for registrants through the registrants only / all registrants types.
    Read,
    /// Everything else: only the holder and, under registrants only / all
    /// registrants types, registered nexuses.
    Write,
    /// The command applies the reservation rules itself (PERSISTENT RESERVE IN/OUT,
    /// RESERVE, RELEASE).
    Own,
}

/// One registered I_T nexus (or, with ALL_TG_PT, one initiator port through every
/// target port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: NexusId,
    pub key: u64,
    #[serde(default)]
    pub all_tg_pt: bool,
}

impl Registration {
    fn covers(&self, n: &NexusId) -> bool {
        self.nexus.initiator == n.initiator
            && self.nexus.isid == n.isid
            && (self.all_tg_pt || self.nexus.tpgt == n.tpgt)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The holder's registration (its `nexus`). Unused for all registrants types,
    /// where every registration holds the reservation.
    pub holder: NexusId,
    pub kind: PrType,
}

/// Everything a volume's units must agree on about reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRGENERATION: bumped by every successful REGISTER, REGISTER AND IGNORE
    /// EXISTING KEY, CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE.
    #[serde(default)]
    pub generation: u32,
    /// The last APTPL bit received; reported as PTPL_A.
    #[serde(default)]
    pub aptpl: bool,
    /// In registration order (READ KEYS lists them so).
    #[serde(default)]
    pub registrations: Vec<Registration>,
    #[serde(default)]
    pub reservation: Option<Reservation>,
    /// The nexus holding an SPC-2 RESERVE(6)/(10) reservation.
    #[serde(default)]
    pub reserved_by: Option<NexusId>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Sense(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> Self {
        Self::Sense(s)
    }
}

/// A new state and the unit attentions its commit owes other nexuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub state: PrState,
    pub events: Vec<SharedEvent>,
}

/// What a PERSISTENT RESERVE OUT asks for, decoded from its CDB and parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prout {
    Register {
        ignore_existing: bool,
        all_tg_pt: bool,
    },
    Reserve(PrType),
    /// Raw SCOPE and TYPE: they only have to match the reservation being released.
    Release {
        scope: u8,
        code: u8,
    },
    Clear,
    Preempt {
        kind: PrType,
        abort: bool,
    },
    RegisterAndMove {
        dest: NexusId,
        unreg: bool,
    },
}

/// The parameter list fields every service action shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keys {
    /// RESERVATION KEY: must match the issuer's registration.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    pub aptpl: bool,
}

/// The outcome of a request: `None` when it succeeds without changing anything.
pub type Outcome = Result<Option<Change>, PrError>;

fn ua(n: &NexusId, code: AscCode) -> SharedEvent {
    SharedEvent::UnitAttention {
        nexus: n.clone(),
        asc: code,
    }
}

impl PrState {
    /// The registration covering `n`, if any.
    pub fn registration(&self, n: &NexusId) -> Option<usize> {
        self.registrations.iter().position(|r| r.covers(n))
    }

    /// Whether registration `i` holds the persistent reservation.
    pub fn holds(&self, i: usize) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.kind.all_registrants() => true,
            Some(r) => self.registrations[i].nexus == r.holder,
        }
    }

    /// The reservation key READ RESERVATION reports: zero for all registrants types.
    pub fn holder_key(&self) -> Option<u64> {
        let r = self.reservation.as_ref()?;
        if r.kind.all_registrants() {
            return Some(0);
        }
        self.registrations
            .iter()
            .find(|reg| reg.nexus == r.holder)
            .map(|reg| reg.key)
    }

    /// Nothing is reserved: every command passes without looking at the nexus.
    pub fn unreserved(&self) -> bool {
        self.reservation.is_none() && self.reserved_by.is_none()
    }

    /// Whether a command of class `access` from `n` may run.
    pub fn permits(&self, n: &NexusId, access: Access) -> bool {
        if matches!(access, Access::Any | Access::Own) {
            return true;
        }
        if let Some(h) = &self.reserved_by {
            return h == n;
        }
        let Some(res) = &self.reservation else {
            return true;
        };
        if access == Access::Status {
            return true;
        }
        match self.registration(n) {
            Some(i) if self.holds(i) || res.kind.shared_by_registrants() => true,
            _ => access == Access::Read && res.kind.write_exclusive(),
        }
    }

    /// SPC-4 5.13.3 with CRH=1: while registrations exist, RESERVE and RELEASE do
    /// nothing (GOOD) for a nexus the persistent reservation already lets through,
    /// and conflict for every other.
    fn crh_exempt(&self, n: &NexusId) -> bool {
        match (&self.reservation, self.registration(n)) {
            (Some(res), Some(i)) => self.holds(i) || res.kind.shared_by_registrants(),
            _ => false,
        }
    }

    /// RESERVE(6)/(10).
    pub fn reserve_spc2(&self, n: &NexusId) -> Outcome {
        if !self.registrations.is_empty() {
            return if self.crh_exempt(n) {
                Ok(None)
            } else {
                Err(PrError::Conflict)
            };
        }
        match &self.reserved_by {
            Some(h) if h == n => Ok(None),
            Some(_) => Err(PrError::Conflict),
            None => Ok(Some(Change {
                state: PrState {
                    reserved_by: Some(n.clone()),
                    ..self.clone()
                },
                events: vec![],
            })),
        }
    }

    /// RELEASE(6)/(10): releasing someone else's reservation, or none, is not an
    /// error and changes nothing.
    pub fn release_spc2(&self, n: &NexusId) -> Outcome {
        if !self.registrations.is_empty() {
            return if self.crh_exempt(n) {
                Ok(None)
            } else {
                Err(PrError::Conflict)
            };
        }
        match &self.reserved_by {
            Some(h) if h == n => Ok(Some(self.without_spc2())),
            _ => Ok(None),
        }
    }

    /// A reset (`who` = None) or the loss of nexus `who` ends the SPC-2 reservation;
    /// persistent reservations are untouched.
    pub fn drop_spc2(&self, who: Option<&NexusId>) -> Option<Change> {
        let h = self.reserved_by.as_ref()?;
        if who.is_some_and(|w| w != h) {
            return None;
        }
        Some(self.without_spc2())
    }

    fn without_spc2(&self) -> Change {
        Change {
            state: PrState {
                reserved_by: None,
                ..self.clone()
            },
            events: vec![],
        }
    }

    /// PERSISTENT RESERVE IN: refused while an SPC-2 reservation exists (SPC-4
    /// 5.13.3), whoever holds it.
    pub fn prin_allowed(&self) -> Result<(), PrError> {
        match self.reserved_by {
            Some(_) => Err(PrError::Conflict),
            None => Ok(()),
        }
    }

    /// PERSISTENT RESERVE OUT from `issuer`.
    pub fn prout(&self, issuer: &NexusId, req: &Prout, k: &Keys) -> Outcome {
        self.prin_allowed()?;
        if let Prout::Register {
            ignore_existing,
            all_tg_pt,
        } = req
        {
            return self.register(issuer, k, *ignore_existing, *all_tg_pt);
        }
        // Every other service action needs a registered nexus and its key.
        let i = match self.registration(issuer) {
            Some(i) if self.registrations[i].key == k.key => i,
            _ => return Err(PrError::Conflict),
        };
        match req {
            Prout::Register { .. } => unreachable!("handled above"),
            Prout::Reserve(kind) => self.reserve(i, *kind),
            Prout::Release { scope, code } => self.release(i, *scope, *code),
            Prout::Clear => Ok(Some(self.clear(i))),
            Prout::Preempt { kind, .. } => self.preempt(i, k.sa_key, *kind),
            Prout::RegisterAndMove { dest, unreg } => self.register_and_move(i, k, dest, *unreg),
        }
    }

    fn bumped(&self) -> PrState {
        PrState {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        }
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 5.13.7, tables 51-52).
    fn register(&self, issuer: &NexusId, k: &Keys, ignore: bool, all_tg_pt: bool) -> Outcome {
        let mut events = vec![];
        let mut s = self.bumped();
        match self.registration(issuer) {
            None => {
                if !ignore && k.key != 0 {
                    return Err(PrError::Conflict);
                }
                if k.sa_key == 0 {
                    // Unregistering an unregistered nexus: GOOD, nothing happens.
                    return Ok(None);
                }
                s.registrations.push(Registration {
                    nexus: issuer.clone(),
                    key: k.sa_key,
                    all_tg_pt,
                });
            }
            Some(i) => {
                if !ignore && k.key != self.registrations[i].key {
                    return Err(PrError::Conflict);
                }
                // ALL_TG_PT is ignored for a nexus that is already registered.
                if k.sa_key == 0 {
                    s.unregister(i, &mut events);
                } else {
                    s.registrations[i].key = k.sa_key;
                }
            }
        }
        s.aptpl = k.aptpl;
        Ok(Some(Change { state: s, events }))
    }

    /// Removes registration `i`; the reservation goes with it if `i` held it alone
    /// (SPC-4 5.13.11.2.2), or with the last registration of an all registrants type.
    fn unregister(&mut self, i: usize, events: &mut Vec<SharedEvent>) {
        let gone = self.registrations.remove(i);
        let Some(res) = &self.reservation else { return };
        if res.kind.all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if res.holder == gone.nexus {
            if res.kind.registrants_only() {
                for r in &self.registrations {
                    events.push(ua(&r.nexus, asc::RESERVATIONS_RELEASED));
                }
            }
            self.reservation = None;
        }
    }

    /// RESERVE (SPC-4 5.13.9): not counted in PRGENERATION.
    fn reserve(&self, i: usize, kind: PrType) -> Outcome {
        match &self.reservation {
            Some(res) if self.holds(i) && res.kind == kind => Ok(None),
            Some(_) => Err(PrError::Conflict),
            None => Ok(Some(Change {
                state: PrState {
                    reservation: Some(Reservation {
                        holder: self.registrations[i].nexus.clone(),
                        kind,
                    }),
                    ..self.clone()
                },
                events: vec![],
            })),
        }
    }

    /// RELEASE (SPC-4 5.13.11.2): releasing nothing, or a reservation this nexus
    /// does not hold, is GOOD and changes nothing.
    fn release(&self, i: usize, scope: u8, code: u8) -> Outcome {
        let Some(res) = &self.reservation else {
            return Ok(None);
        };
        if !self.holds(i) {
            return Ok(None);
        }
        if scope != 0 || code != res.kind.code() {
            return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION).into());
        }
        let mut events = vec![];
        if res.kind.shared_by_registrants() {
            for (j, r) in self.registrations.iter().enumerate() {
                if j != i {
                    events.push(ua(&r.nexus, asc::RESERVATIONS_RELEASED));
                }
            }
        }
        Ok(Some(Change {
            state: PrState {
                reservation: None,
                ..self.clone()
            },
            events,
        }))
    }

    /// CLEAR (SPC-4 5.13.11.2.6): every registration and the reservation go; every
    /// other registered nexus learns RESERVATIONS PREEMPTED.
    fn clear(&self, i: usize) -> Change {
        let events = self
            .registrations
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| ua(&r.nexus, asc::RESERVATIONS_PREEMPTED))
            .collect();
        let mut s = self.bumped();
        s.registrations.clear();
        s.reservation = None;
        Change { state: s, events }
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 5.13.11.4).
    fn preempt(&self, i: usize, sa_key: u64, kind: PrType) -> Outcome {
        let me = self.registrations[i].nexus.clone();
        let mut s = self.bumped();
        let mut events = vec![];
        let res = self.reservation.clone();
        match res {
            Some(res) if res.kind.all_registrants() && sa_key == 0 => {
                // Everyone else loses their registration; a new reservation for us.
                for (j, r) in self.registrations.iter().enumerate() {
                    if j != i {
                        events.push(ua(&r.nexus, asc::REGISTRATIONS_PREEMPTED));
                    }
                }
                s.registrations = vec![self.registrations[i].clone()];
                s.reservation = Some(Reservation { holder: me, kind });
            }
            Some(res) if !res.kind.all_registrants() && self.holder_key() == Some(sa_key) => {
                // Preempting the holder (possibly ourselves): its reservation moves to
                // us with the new type; its registration goes unless it is ours.
                let removed = s.remove_keyed(sa_key, Some(i));
                for r in &removed {
                    events.push(ua(&r.nexus, asc::REGISTRATIONS_PREEMPTED));
                }
                if res.kind != kind {
                    for r in s.registrations.iter().filter(|r| r.nexus != me) {
                        events.push(ua(&r.nexus, asc::RESERVATIONS_RELEASED));
                    }
                }
                s.reservation = Some(Reservation { holder: me, kind });
            }
            _ => {
                // No reservation, or the key names registrants that do not hold it:
                // only their registrations go.
                if sa_key == 0 {
                    return Err(Sense::invalid_param(8, None).into());
                }
                let all_reg = self
                    .reservation
                    .as_ref()
                    .is_some_and(|r| r.kind.all_registrants());
                // Under an all registrants reservation the issuer keeps its own.
                let keep = all_reg.then_some(i);
                let removed = s.remove_keyed(sa_key, keep);
                if removed.is_empty() {
                    return Err(PrError::Conflict);
                }
                for r in removed.iter().filter(|r| r.nexus != me) {
                    events.push(ua(&r.nexus, asc::REGISTRATIONS_PREEMPTED));
                }
                if all_reg && s.registrations.is_empty() {
                    s.reservation = None;
                }
            }
        }
        Ok(Some(Change { state: s, events }))
    }

    /// Removes the registrations with `key` (but not registration `keep`), returning
    /// them.
    fn remove_keyed(&mut self, key: u64, keep: Option<usize>) -> Vec<Registration> {
        let mut removed = vec![];
        let mut kept = vec![];
        for (j, r) in std::mem::take(&mut self.registrations)
            .into_iter()
            .enumerate()
        {
            if r.key == key && Some(j) != keep {
                removed.push(r);
            } else {
                kept.push(r);
            }
        }
        self.registrations = kept;
        removed
    }

    /// REGISTER AND MOVE (SPC-4 5.13.8): the holder hands its reservation to another
    /// I_T nexus, registering it with the service action key.
    fn register_and_move(&self, i: usize, k: &Keys, dest: &NexusId, unreg: bool) -> Outcome {
        if k.sa_key == 0 {
            return Err(Sense::invalid_param(8, None).into());
        }
        let res = match &self.reservation {
            Some(res) if !res.kind.all_registrants() && self.holds(i) => res.clone(),
            _ => return Err(PrError::Conflict),
        };
        let me = &self.registrations[i].nexus;
        if me.initiator == dest.initiator && me.isid == dest.isid {
            // The TransportID names our own initiator port.
            return Err(Sense::invalid_param(24, None).into());
        }
        let mut s = self.bumped();
        let holder = match s.registration(dest) {
            Some(j) => {
                s.registrations[j].key = k.sa_key;
                s.registrations[j].nexus.clone()
            }
            None => {
                s.registrations.push(Registration {
                    nexus: dest.clone(),
                    key: k.sa_key,
                    all_tg_pt: false,
                });
                dest.clone()
            }
        };
        s.reservation = Some(Reservation {
            holder,
            kind: res.kind,
        });
        if unreg {
            s.registrations.remove(i);
        }
        s.aptpl = k.aptpl;
        Ok(Some(Change {
            state: s,
            events: vec![],
        }))
    }
}

#[cfg(test)]
mod tests;
