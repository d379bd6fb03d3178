//! Epoch fencing: the highest layout epoch seen per volume. A request routed with an
//! older layout is refused, so a gateway that missed a failover cannot read or write a
//! copy the MDM has since replaced. Kept in memory only: after a restart the first
//! request of each volume sets the mark again.

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
}
