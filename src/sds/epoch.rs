//! Epoch fencing: the highest layout epoch seen per volume. A request routed with an
//! older layout is refused, so a gateway that missed a failover cannot read or write a
//! copy the MDM has since replaced.
//!
//! The mark rises from two sources: the requests themselves, and the MDM's answers to
//! this SDS's heartbeats (`MdmReply::Lease` lists every volume's current epoch). That
//! second source is why the marks live in memory only and need not be durable: a
//! restarted SDS serves nothing until its first lease (`lease`), and that lease has
//! already raised every mark to the MDM's current epoch, so a gateway still routing
//! with an older layout is refused even if no newer request reached this SDS before.

use crate::cluster::chunk::ChunkError;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Epochs {
    seen: Mutex<HashMap<u64, u64>>,
}

impl Epochs {
    /// Admits a request with `epoch` for `volume`, raising the volume's mark if it is
    /// newer.
    pub fn admit(&self, volume: u64, epoch: u64) -> Result<(), ChunkError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let current = seen.entry(volume).or_insert(epoch);
        if epoch < *current {
            return Err(ChunkError::StaleEpoch {
                sent: epoch,
                current: *current,
            });
        }
        *current = epoch;
        Ok(())
    }

    /// Raises `volume`'s mark to `epoch` (never lowers it): the MDM's word from a lease.
    /// The mark of `volume`, if any request or lease set one.
    pub fn current(&self, volume: u64) -> Option<u64> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&volume)
            .copied()
    }

    pub fn raise(&self, volume: u64, epoch: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let current = seen.entry(volume).or_insert(epoch);
        *current = (*current).max(epoch);
    }

    /// Forgets every volume (the SDS was released).
    pub fn clear(&self) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets a removed volume.
    pub fn forget(&self, volume: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&volume);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_refused_per_volume() {
        let e = Epochs::default();
        e.admit(1, 5).unwrap();
        e.admit(1, 5).unwrap();
        e.admit(2, 1).unwrap();
        assert!(matches!(
            e.admit(1, 4),
            Err(ChunkError::StaleEpoch {
                sent: 4,
                current: 5
            })
        ));
        e.admit(1, 7).unwrap();
        assert!(e.admit(1, 6).is_err());
        e.forget(1);
        e.admit(1, 1).unwrap();
    }

    #[test]
    fn leases_raise_marks_but_never_lower_them() {
        let e = Epochs::default();
        e.raise(3, 4);
        assert!(e.admit(3, 3).is_err());
        e.admit(3, 6).unwrap();
        e.raise(3, 5);
        assert!(matches!(
            e.admit(3, 5),
            Err(ChunkError::StaleEpoch { current: 6, .. })
        ));
        e.clear();
        e.admit(3, 1).unwrap();
    }
}
