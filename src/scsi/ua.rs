//! Unit attention conditions, queued per I_T nexus (SAM-5 5.14).
//!
//! A nexus the unit has never seen owes the initiator a POWER ON, RESET, OR BUS DEVICE
//! RESET OCCURRED: from its point of view the unit just appeared.

use super::sense::{asc, AscCode};
use super::shared::NexusId;
use super::ItNexus;
use std::collections::{HashMap, VecDeque};

/// More than this many queued conditions means the initiator is not listening; the
/// oldest are dropped rather than letting the queue grow without bound.
const MAX_PENDING: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct UaQueues {
    pending: HashMap<ItNexus, VecDeque<AscCode>>,
}

impl UaQueues {
    /// Notes a command from `nexus`; a first command queues the power-on condition.
    pub fn touch(&mut self, nexus: &ItNexus) {
        if !self.pending.contains_key(nexus) {
            let mut q = VecDeque::new();
            q.push_back(asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET);
            self.pending.insert(nexus.clone(), q);
        }
    }

    pub fn pop(&mut self, nexus: &ItNexus) -> Option<AscCode> {
        self.pending.get_mut(nexus)?.pop_front()
    }

    /// A reset supersedes every older condition (SAM-5 5.14: the reset UA reports the
    /// loss of state the older ones described).
    pub fn reset_all(&mut self, code: AscCode) {
        for q in self.pending.values_mut() {
            q.clear();
            q.push_back(code);
        }
    }

    /// Queues `code` for one nexus (after the power-on condition if it is new here).
    pub fn raise(&mut self, nexus: &ItNexus, code: AscCode) {
        self.touch(nexus);
        if let Some(q) = self.pending.get_mut(nexus) {
            if !q.contains(&code) {
                if q.len() >= MAX_PENDING {
                    q.pop_front();
                }
                q.push_back(code);
            }
        }
    }

    /// Queues `code` for the nexus `id` names, if it has reached this unit here (a
    /// nexus of another gateway is that gateway's to notify).
    pub fn raise_matching(&mut self, id: &NexusId, code: AscCode) {
        let known: Vec<ItNexus> = self
            .pending
            .keys()
            .filter(|n| id.matches(n))
            .cloned()
            .collect();
        for n in known {
            self.raise(&n, code);
        }
    }

    /// Queues `code` for every known nexus but the one `origin` names.
    pub fn raise_unless(&mut self, origin: Option<&NexusId>, code: AscCode) {
        let others: Vec<ItNexus> = self
            .pending
            .keys()
            .filter(|n| origin.is_none_or(|o| !o.matches(n)))
            .cloned()
            .collect();
        for n in others {
            self.raise(&n, code);
        }
    }

    pub fn forget(&mut self, nexus: &ItNexus) {
        self.pending.remove(nexus);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn nexus(i: u8) -> ItNexus {
        ItNexus {
            initiator: Arc::from("iqn.test"),
            isid: [0, 0, 0, 0, 0, i],
            tpgt: 1,
        }
    }

    #[test]
    fn first_command_gets_power_on_once() {
        let mut q = UaQueues::default();
        q.touch(&nexus(1));
        q.touch(&nexus(1));
        assert_eq!(
            q.pop(&nexus(1)),
            Some(asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET)
        );
        assert_eq!(q.pop(&nexus(1)), None);
    }

    #[test]
    fn raise_unless_skips_origin_and_dedups() {
        let mut q = UaQueues::default();
        for i in 1..=2 {
            q.touch(&nexus(i));
            q.pop(&nexus(i));
        }
        let origin = NexusId::from(&nexus(1));
        q.raise_unless(Some(&origin), asc::MODE_PARAMETERS_CHANGED);
        q.raise_unless(Some(&origin), asc::MODE_PARAMETERS_CHANGED);
        assert_eq!(q.pop(&nexus(1)), None);
        assert_eq!(q.pop(&nexus(2)), Some(asc::MODE_PARAMETERS_CHANGED));
        assert_eq!(q.pop(&nexus(2)), None);
    }

    #[test]
    fn reset_replaces_and_forget_restarts() {
        let mut q = UaQueues::default();
        q.touch(&nexus(1));
        q.reset_all(asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
        assert_eq!(
            q.pop(&nexus(1)),
            Some(asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED)
        );
        q.forget(&nexus(1));
        q.touch(&nexus(1));
        assert_eq!(
            q.pop(&nexus(1)),
            Some(asc::POWER_ON_RESET_OR_BUS_DEVICE_RESET)
        );
    }
}
