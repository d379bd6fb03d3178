//! The devices of this SDS by id, and the operations that span several of them.

use super::device::Device;
use super::SdsError;
use crate::cluster::api::{fmt_id, DeviceInventory};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct Store {
    devices: RwLock<BTreeMap<u64, Arc<Device>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("devices", &self.read().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Store {
    pub fn add(&self, dev: Device) {
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dev.id, Arc::new(dev));
    }

    pub fn device(&self, id: u64) -> Result<Arc<Device>, SdsError> {
        self.get(id)
            .ok_or_else(|| SdsError::UnknownDevice(fmt_id(id)))
    }

    pub fn get(&self, id: u64) -> Option<Arc<Device>> {
        self.read().get(&id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Device>> {
        self.read().values().cloned().collect()
    }

    /// Reserves a slot for each `(chunk, device)` of a thick volume; chunks already
    /// present are kept (and marked thick). All or nothing: every device must have
    /// room for its share before any slot is taken.
    pub fn allocate_thick(&self, volume: u64, chunks: &[(u64, u64)]) -> Result<(), SdsError> {
        let mut wanted: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for &(chunk, device) in chunks {
            wanted.entry(device).or_default().insert(chunk);
        }
        let devs = wanted
            .keys()
            .map(|&id| self.device(id))
            .collect::<Result<Vec<_>, _>>()?;
        // Allocation guards in device-id order: no other allocation can take the free
        // slots counted below.
        let guards: Vec<_> = devs.iter().map(|d| d.alloc_guard()).collect();
        for (dev, chunks) in devs.iter().zip(wanted.values()) {
            let need = chunks
                .iter()
                .filter(|&&c| !dev.holds((volume, c), false))
                .count();
            let free = dev.free_slots();
            if need > free {
                return Err(SdsError::ThickNoSpace {
                    volume: fmt_id(volume),
                    path: dev.path.clone(),
                    need,
                    free,
                });
            }
        }
        let mut taken = Vec::new();
        for ((dev, chunks), guard) in devs.iter().zip(wanted.values()).zip(&guards) {
            for &c in chunks {
                let key = (volume, c);
                let fresh = !dev.holds(key, false);
                if let Err(e) = dev.allocate(guard, key, true, true) {
                    // Undo this request's new slots; freeing needs no allocation guard.
                    for (d, k) in taken {
                        let _ = Device::free(d, k);
                    }
                    return Err(e);
                }
                if fresh {
                    taken.push((dev.as_ref(), key));
                }
            }
        }
        Ok(())
    }

    /// Frees every copy of `volume` on every device; returns how many.
    pub fn free_volume(&self, volume: u64) -> Result<usize, SdsError> {
        let mut freed = 0;
        for dev in self.all() {
            freed += dev.free_volume(volume)?;
        }
        Ok(freed)
    }

    /// Frees the listed copies (volume, chunk, device) that are held here; copies or
    /// devices not here are skipped (already freed, or a repeated request). Returns
    /// how many were freed.
    pub fn free_chunks(&self, chunks: &[(u64, u64, u64)]) -> Result<usize, SdsError> {
        let mut freed = 0;
        for &(volume, chunk, device) in chunks {
            if let Some(dev) = self.get(device) {
                freed += usize::from(dev.free((volume, chunk))?);
            }
        }
        Ok(freed)
    }

    /// Chunk indices of `volume` marked dirty on any device, sorted.
    pub fn dirty(&self, volume: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self.all().iter().flat_map(|d| d.dirty(volume)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Forgets every device (after `Release`); I/O already running on one finishes.
    pub fn clear(&self) -> Vec<Arc<Device>> {
        let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *devices).into_values().collect()
    }

    /// Devices an I/O error put out of use.
    pub fn failed(&self) -> Vec<u64> {
        self.read()
            .values()
            .filter(|d| d.failed())
            .map(|d| d.id)
            .collect()
    }

    /// Forgets one device (after `ReleaseDevice`); I/O already running on it finishes.
    pub fn remove(&self, id: u64) -> Option<Arc<Device>> {
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// fdatasync on every device.
    pub fn sync_all(&self) -> Result<(), SdsError> {
        self.all().iter().try_for_each(|d| d.sync())
    }

    pub fn inventory(&self) -> Vec<DeviceInventory> {
        self.all()
            .iter()
            .map(|d| DeviceInventory {
                device_id: d.id,
                path: d.path.clone(),
                slots: d.header().slots,
                chunks: d.chunks(),
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Device>>> {
        self.devices.read().unwrap_or_else(|p| p.into_inner())
    }
}
