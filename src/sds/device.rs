//! One claimed device: its header, its chunk table in memory (chunk → slot, free
//! slots) and blocking chunk I/O at slot offsets. Callers run these methods on
//! blocking threads.
//!
//! Locking: `table` is held shared for the whole of every data I/O (lookup to last
//! byte), so freeing a slot, which takes it exclusively to unlink the chunk, waits for
//! every I/O that found the slot; no I/O can then reach it. `alloc` serialises
//! allocations so two first writes to one chunk cannot take two slots. Neither lock
//! is ever held across an await: nothing here is async.

use super::format::{Entry, FormatError, Header, ENTRY_LEN, HEADER_LEN};
use super::SdsError;
use crate::backend::fileops::{
    pread_raw, punch_hole, read_at, read_cached, seek, write_in_pieces, write_zeros, SEEK_DATA,
    SEEK_HOLE,
};
use crate::backend::SgList;
use crate::cluster::api::{fmt_id, DeviceReport, CHUNK_SIZE};
use crate::cluster::chunk::arena::Dest;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tracing::{error, info};

/// What an unwritten chunk reads as.
static ZEROS: [u8; CHUNK_SIZE as usize] = [0; CHUNK_SIZE as usize];

/// `len` bytes of an unwritten chunk: shared rather than allocated.
fn zeros(len: u32) -> Bytes {
    Bytes::from_static(&ZEROS[..len as usize])
}

/// (volume id, chunk index).
pub type ChunkKey = (u64, u64);

/// Table entries read per system call while loading.
const LOAD_BATCH: u64 = 4096;

/// A device opened and its header read, before it is trusted.
pub struct Probe {
    pub path: String,
    file: File,
    pub capacity: u64,
    pub header: Option<Header>,
}

impl Probe {
    pub fn open(path: &str) -> Result<Self, SdsError> {
        let open_err = |source| SdsError::DeviceOpen {
            path: path.to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_err)?;
        // Block devices report length 0 in their metadata; seeking to the end works
        // for both them and files.
        let capacity = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        let mut head = vec![0u8; HEADER_LEN.min(capacity) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|source| SdsError::DeviceIo {
                path: path.to_string(),
                source,
            })?;
        let header = Header::decode(&head).map_err(|source| SdsError::BadHeader {
            path: path.to_string(),
            source,
        })?;
        Ok(Self {
            path: path.to_string(),
            file,
            capacity,
            header,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    index: u64,
    thick: bool,
    /// Format's dirty bit: written as primary without its mirror.
    dirty: bool,
}

impl Slot {
    fn entry(&self, key: ChunkKey) -> Entry {
        Entry::Used {
            volume: key.0,
            chunk: key.1,
            thick: self.thick,
            dirty: self.dirty,
        }
    }
}

#[derive(Default)]
struct Table {
    chunks: HashMap<ChunkKey, Slot>,
    free: BTreeSet<u64>,
    /// Slots whose entry is corrupt: neither served nor reused.
    quarantined: usize,
}

pub struct Device {
    pub id: u64,
    pub path: String,
    capacity: u64,
    header: Header,
    file: File,
    table: RwLock<Table>,
    alloc: Mutex<()>,
    /// Set by the first I/O error: the device is not trusted again (a half-failed
    /// disk or a full backing filesystem); heartbeats tell the MDM, which moves its
    /// copies, and the admin removes it.
    failed: AtomicBool,
}

impl Device {
    /// Writes a new header on a blank device (zeroing its table first, so whatever the
    /// device held before cannot pass for chunks) and makes it durable.
    pub fn format(probe: Probe, header: Header) -> Result<Self, SdsError> {
        let dev = Self::new(probe, header, Table::default());
        dev.clear(header.table_offset, header.table_len())?;
        dev.file
            .write_all_at(&header.encode(), 0)
            .and_then(|_| dev.file.sync_data())
            .map_err(|e| dev.io_err(e))?;
        dev.lock_mut().free = (0..header.slots).collect();
        info!(path = %dev.path, device = %fmt_id(dev.id), slots = header.slots, "formatted device");
        Ok(dev)
    }

    /// Opens a device that already carries our header and reads its chunk table.
    /// Corrupt entries are logged and their slots kept out of use.
    pub fn load(probe: Probe, header: Header) -> Result<Self, SdsError> {
        if probe.capacity < header.end() {
            return Err(SdsError::Shrunk {
                path: probe.path,
                capacity: probe.capacity,
                need: header.end(),
            });
        }
        let dev = Self::new(probe, header, Table::default());
        let mut table = Table::default();
        let mut buf = Vec::new();
        let mut first = 0;
        while first < header.slots {
            let n = LOAD_BATCH.min(header.slots - first);
            buf.resize((n * ENTRY_LEN) as usize, 0);
            dev.file
                .read_exact_at(&mut buf, header.entry_offset(first))
                .map_err(|e| dev.io_err(e))?;
            for (i, raw) in buf.chunks_exact(ENTRY_LEN as usize).enumerate() {
                let slot = first + i as u64;
                let raw = raw.try_into().expect("exact chunks");
                dev.load_entry(&mut table, slot, Entry::decode(raw));
            }
            first += n;
        }
        info!(
            path = %dev.path, device = %fmt_id(dev.id), slots = header.slots,
            chunks = table.chunks.len(), quarantined = table.quarantined, "loaded device"
        );
        *dev.lock_mut() = table;
        Ok(dev)
    }

    fn new(probe: Probe, header: Header, table: Table) -> Self {
        Self {
            id: header.device_id,
            path: probe.path,
            capacity: probe.capacity,
            header,
            file: probe.file,
            table: RwLock::new(table),
            alloc: Mutex::new(()),
            failed: AtomicBool::new(false),
        }
    }

    /// Whether an I/O error has put this device out of use.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Refuses I/O on a failed device, so one error is not followed by reads of
    /// whatever it now returns.
    fn usable(&self) -> Result<(), SdsError> {
        if self.failed() {
            return Err(SdsError::DeviceIo {
                path: self.path.clone(),
                source: std::io::Error::other(
                    "the device failed an earlier I/O and is out of use; replace it and remove it with scli --remove_sds_device",
                ),
            });
        }
        Ok(())
    }

    fn load_entry(&self, table: &mut Table, slot: u64, entry: Result<Entry, FormatError>) {
        match entry {
            Ok(Entry::Free) => {
                table.free.insert(slot);
            }
            Ok(Entry::Used {
                volume,
                chunk,
                thick,
                dirty,
            }) => {
                let taken = table.chunks.insert(
                    (volume, chunk),
                    Slot {
                        index: slot,
                        thick,
                        dirty,
                    },
                );
                if let Some(other) = taken {
                    error!(
                        path = %self.path, slot, other = other.index, volume = %fmt_id(volume), chunk,
                        "two table entries claim one chunk; keeping the later slot, the earlier one stays out of use"
                    );
                    table.quarantined += 1;
                }
            }
            Err(e) => {
                error!(path = %self.path, slot, error = %e, "corrupt chunk table entry; its slot stays out of use");
                table.quarantined += 1;
            }
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn report(&self) -> DeviceReport {
        DeviceReport {
            device_id: self.id,
            path: self.path.clone(),
            capacity_bytes: self.capacity,
            slots: self.header.slots,
        }
    }

    /// Every chunk copy held, sorted.
    pub fn chunks(&self) -> Vec<ChunkKey> {
        let mut v: Vec<_> = self.lock().chunks.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn read(&self, key: ChunkKey, offset: u32, len: u32) -> Result<Bytes, SdsError> {
        Ok(self
            .at_slot(key, offset, |at| read_at(&self.file, at, len as usize))?
            .unwrap_or_else(|| zeros(len)))
    }

    /// As [`Device::read`] when the bytes are all in the page cache; `None` when
    /// reading them would wait for the disk (see [`read_cached`]).
    pub fn read_cached(
        &self,
        key: ChunkKey,
        offset: u32,
        len: u32,
    ) -> Result<Option<Bytes>, SdsError> {
        Ok(self
            .at_slot(key, offset, |at| read_cached(&self.file, at, len as usize))?
            .unwrap_or_else(|| Some(zeros(len))))
    }

    /// As [`Device::read`] into a peer's shared memory; `false` with `nowait` when
    /// some byte is not in the page cache (`dest` then holds part of the data).
    pub fn read_to(
        &self,
        key: ChunkKey,
        offset: u32,
        dest: &mut Dest,
        nowait: bool,
    ) -> Result<bool, SdsError> {
        let read = |at| {
            // SAFETY: `dest` is valid for writes of its length.
            unsafe { pread_raw(&self.file, at, dest.as_mut_ptr(), dest.size(), nowait) }
        };
        match self.at_slot(key, offset, read)? {
            Some(done) => Ok(done),
            None => {
                dest.fill_zeros();
                Ok(true)
            }
        }
    }

    /// Runs `read` at the file offset of byte `offset` of `key`'s slot, holding the
    /// table shared (see the module doc); `None` for a chunk never written here.
    fn at_slot<T>(
        &self,
        key: ChunkKey,
        offset: u32,
        read: impl FnOnce(u64) -> std::io::Result<T>,
    ) -> Result<Option<T>, SdsError> {
        self.usable()?;
        let table = self.lock();
        match table.chunks.get(&key) {
            Some(slot) => read(self.header.slot_offset(slot.index) + offset as u64)
                .map(Some)
                .map_err(|e| self.io_err(e)),
            None => Ok(None),
        }
    }

    /// Writes into a chunk, allocating its slot on first write. With `dirty` the
    /// chunk's dirty bit is set (see `mark_dirty`) before any data is written.
    pub fn write(
        &self,
        key: ChunkKey,
        offset: u32,
        data: &SgList,
        fua: bool,
        dirty: bool,
    ) -> Result<(), SdsError> {
        self.usable()?;
        if data.is_empty() {
            return self.sync_if(fua);
        }
        loop {
            {
                let table = self.lock();
                if let Some(slot) = table.chunks.get(&key) {
                    if dirty && !slot.dirty {
                        drop(table);
                        self.mark_dirty(key, false)?;
                        continue;
                    }
                    let mut at = self.header.slot_offset(slot.index) + offset as u64;
                    for seg in data.segments() {
                        write_in_pieces(&self.file, seg, at).map_err(|e| self.io_err(e))?;
                        at += seg.len() as u64;
                    }
                    drop(table);
                    return self.sync_if(fua);
                }
            }
            // A write covering the whole chunk overwrites whatever the slot held.
            let whole = offset == 0 && data.len() as u64 == CHUNK_SIZE;
            let guard = self.alloc_guard();
            self.allocate_as(&guard, key, false, dirty, !whole)?;
        }
    }

    /// Zeroes a range of a chunk. A chunk not allocated here reads as zeros already and
    /// stays unallocated; `unmap` of a whole thin chunk frees its slot, unless the chunk
    /// is dirty: freeing would drop the mark with the entry, so its data is punched and
    /// the slot kept until the chunk is replicated.
    pub fn write_zeroes(
        &self,
        key: ChunkKey,
        offset: u32,
        len: u32,
        unmap: bool,
        fua: bool,
        dirty: bool,
    ) -> Result<(), SdsError> {
        self.usable()?;
        let whole = offset == 0 && len as u64 == CHUNK_SIZE;
        loop {
            let table = self.lock();
            let Some(slot) = table.chunks.get(&key).copied() else {
                return Ok(());
            };
            if dirty && !slot.dirty {
                drop(table);
                self.mark_dirty(key, false)?;
                continue;
            }
            // Only a whole thin clean chunk is freed; anything else is zeroed in place.
            let frees = unmap && whole && !slot.thick && !slot.dirty;
            if !frees {
                let at = self.header.slot_offset(slot.index) + offset as u64;
                let done = if unmap {
                    self.clear(at, len as u64)
                } else {
                    write_zeros(&self.file, at, len as u64).map_err(|e| self.io_err(e))
                };
                drop(table);
                done?;
                return self.sync_if(fua);
            }
            break;
        }
        self.free(key)?;
        self.sync_if(fua)
    }

    /// Whether the byte at `offset` is allocated and how far that state runs inside
    /// the chunk, from the file's holes inside the slot.
    pub fn status(&self, key: ChunkKey, offset: u32) -> Result<(bool, u32), SdsError> {
        self.usable()?;
        let table = self.lock();
        let Some(slot) = table.chunks.get(&key) else {
            return Ok((false, (CHUNK_SIZE - offset as u64) as u32));
        };
        let base = self.header.slot_offset(slot.index);
        let (pos, end) = (base + offset as u64, base + CHUNK_SIZE);
        let found = |whence| -> Result<u64, SdsError> {
            Ok(seek(&self.file, pos, whence)
                .map_err(|e| self.io_err(e))?
                .unwrap_or(end)
                .min(end))
        };
        let data = found(SEEK_DATA)?;
        if data > pos {
            return Ok((false, (data - pos) as u32));
        }
        let hole = found(SEEK_HOLE)?;
        Ok((true, (hole - pos) as u32))
    }

    pub fn sync(&self) -> Result<(), SdsError> {
        self.file.sync_data().map_err(|e| self.io_err(e))
    }

    /// Held while allocating; see the module doc.
    pub fn alloc_guard(&self) -> MutexGuard<'_, ()> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn free_slots(&self) -> usize {
        self.lock().free.len()
    }

    /// Whether `key` is allocated here (and, for thick reservations, already thick).
    pub fn holds(&self, key: ChunkKey, thick: bool) -> bool {
        self.lock()
            .chunks
            .get(&key)
            .is_some_and(|s| s.thick || !thick)
    }

    /// Gives `key` a slot if it has none (the caller holds `alloc_guard`): zero the
    /// slot unless the caller overwrites all of it, then write the table entry, then
    /// publish. With `thick` an existing thin slot is marked thick.
    pub fn allocate(
        &self,
        guard: &MutexGuard<'_, ()>,
        key: ChunkKey,
        thick: bool,
        zero: bool,
    ) -> Result<(), SdsError> {
        self.allocate_as(guard, key, thick, false, zero)
    }

    /// `allocate`, with the dirty bit of a new entry.
    fn allocate_as(
        &self,
        _guard: &MutexGuard<'_, ()>,
        key: ChunkKey,
        thick: bool,
        dirty: bool,
        zero: bool,
    ) -> Result<(), SdsError> {
        let existing = self.lock().chunks.get(&key).copied();
        if existing.is_some() {
            if thick {
                self.update_slot(key, |s| s.thick = true)?;
            }
            return Ok(());
        }
        let entry = Entry::Used {
            volume: key.0,
            chunk: key.1,
            thick,
            dirty,
        };
        let index = self
            .lock_mut()
            .free
            .pop_first()
            .ok_or_else(|| SdsError::NoSpace {
                path: self.path.clone(),
            })?;
        let prepared = if zero {
            self.clear(self.header.slot_offset(index), CHUNK_SIZE)
        } else {
            Ok(())
        }
        .and_then(|_| self.write_entry(index, entry));
        let mut table = self.lock_mut();
        match prepared {
            Ok(()) => {
                table.chunks.insert(
                    key,
                    Slot {
                        index,
                        thick,
                        dirty,
                    },
                );
                Ok(())
            }
            Err(e) => {
                table.free.insert(index);
                Err(e)
            }
        }
    }

    /// Releases a chunk's slot: unlink it (waiting for I/O in progress on it), punch
    /// its data, clear its entry, then make it reusable. Data is punched before the
    /// entry is cleared, so a crash in between leaves a chunk of zeros, never a free
    /// slot with old data.
    pub fn free(&self, key: ChunkKey) -> Result<bool, SdsError> {
        let Some(slot) = self.lock_mut().chunks.remove(&key) else {
            return Ok(false);
        };
        let released = self
            .clear(self.header.slot_offset(slot.index), CHUNK_SIZE)
            .and_then(|_| self.write_entry(slot.index, Entry::Free));
        match released {
            Ok(()) => {
                self.lock_mut().free.insert(slot.index);
                Ok(true)
            }
            Err(e) => {
                error!(path = %self.path, slot = slot.index, error = %e, "could not release a chunk slot; it stays out of use until restart");
                Err(e)
            }
        }
    }

    /// Frees every chunk of `volume`; returns how many.
    pub fn free_volume(&self, volume: u64) -> Result<usize, SdsError> {
        let keys: Vec<ChunkKey> = self
            .lock()
            .chunks
            .keys()
            .filter(|k| k.0 == volume)
            .copied()
            .collect();
        let mut freed = 0;
        for k in keys {
            freed += usize::from(self.free(k)?);
        }
        Ok(freed)
    }

    /// Sets the dirty bit of `key` (one entry write, skipped when already set), before
    /// the write that makes it dirty is acknowledged. A chunk not held here is given a
    /// zeroed slot when `allocate` (it is about to be written, or must keep the mark
    /// for a mirror that may still hold data), else left alone: it reads as zeros and
    /// a zeroing write changes nothing.
    pub fn mark_dirty(&self, key: ChunkKey, allocate: bool) -> Result<(), SdsError> {
        if self.is_dirty(key) {
            return Ok(());
        }
        let guard = self.alloc_guard();
        if self.update_slot(key, |s| s.dirty = true)? || !allocate {
            return Ok(());
        }
        self.allocate_as(&guard, key, false, true, true)
    }

    /// Clears the dirty bit of `key` once the chunk has been replicated whole.
    pub fn clear_dirty(&self, key: ChunkKey) -> Result<(), SdsError> {
        let _guard = self.alloc_guard();
        self.update_slot(key, |s| s.dirty = false).map(drop)
    }

    /// Chunk indices of `volume` with the dirty bit set, sorted.
    pub fn dirty(&self, volume: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .lock()
            .chunks
            .iter()
            .filter(|(k, s)| k.0 == volume && s.dirty)
            .map(|(k, _)| k.1)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether `key`'s dirty bit is set.
    pub fn is_dirty(&self, key: ChunkKey) -> bool {
        self.lock().chunks.get(&key).is_some_and(|s| s.dirty)
    }

    /// Makes the device blank again (header zeroed and synced), so it can be added to
    /// a system anew: what `Release` leaves behind.
    pub fn wipe_header(&self) -> Result<(), SdsError> {
        self.file
            .write_all_at(&[0u8; HEADER_LEN as usize], 0)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| self.io_err(e))
    }

    /// Rewrites the entry of `key`'s slot with `change` applied (if that changes it),
    /// under the table's write lock so a concurrent `free` cannot clear the entry in
    /// between and have it resurrected; one small write, rare (a state change).
    /// Returns whether `key` has a slot.
    fn update_slot(&self, key: ChunkKey, change: impl Fn(&mut Slot)) -> Result<bool, SdsError> {
        let mut table = self.lock_mut();
        let Some(slot) = table.chunks.get_mut(&key) else {
            return Ok(false);
        };
        let mut next = *slot;
        change(&mut next);
        if next != *slot {
            self.write_entry(next.index, next.entry(key))?;
            *slot = next;
        }
        Ok(true)
    }

    fn write_entry(&self, slot: u64, entry: Entry) -> Result<(), SdsError> {
        self.file
            .write_all_at(&entry.encode(), self.header.entry_offset(slot))
            .map_err(|e| self.io_err(e))
    }

    /// Makes a range read as zeros: punched where the device can, written otherwise.
    fn clear(&self, offset: u64, len: u64) -> Result<(), SdsError> {
        punch_hole(&self.file, offset, len)
            .or_else(|_| write_zeros(&self.file, offset, len))
            .map_err(|e| self.io_err(e))
    }

    fn sync_if(&self, fua: bool) -> Result<(), SdsError> {
        if fua {
            self.sync()
        } else {
            Ok(())
        }
    }

    fn io_err(&self, source: std::io::Error) -> SdsError {
        if !self.failed.swap(true, Ordering::Relaxed) {
            error!(path = %self.path, device = %fmt_id(self.id), error = %source,
                "device failed I/O; taking it out of use and telling the MDM");
        }
        SdsError::DeviceIo {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_mut(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sds::format::Owner;

    fn blank(dir: &tempfile::TempDir, name: &str, size: u64) -> String {
        let p = dir.path().join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn formatted(path: &str) -> Device {
        let probe = Probe::open(path).unwrap();
        assert!(probe.header.is_none());
        let h = Header::for_capacity(
            Owner {
                system_id: 1,
                sds_id: 2,
                device_id: 3,
                pool_id: 4,
            },
            probe.capacity,
        )
        .unwrap();
        Device::format(probe, h).unwrap()
    }

    fn sg(b: &[u8]) -> SgList {
        SgList::from(b.to_vec())
    }

    #[test]
    fn thin_allocation_reads_zeros_around_written_data() {
        let dir = tempfile::tempdir().unwrap();
        let dev = formatted(&blank(&dir, "d", 8 << 20));
        assert_eq!(dev.free_slots(), 7);
        assert_eq!(dev.read((1, 0), 0, 16).unwrap(), vec![0u8; 16]);
        dev.write((1, 0), 4096, &sg(&[5u8; 4096]), false, false)
            .unwrap();
        assert_eq!(dev.free_slots(), 6);
        let r = dev.read((1, 0), 0, 8192).unwrap();
        assert!(r[..4096].iter().all(|&b| b == 0));
        assert!(r[4096..].iter().all(|&b| b == 5));
        assert_eq!(dev.chunks(), vec![(1, 0)]);
        assert_eq!(dev.status((1, 0), 0).unwrap(), (false, 4096));
        assert!(dev.status((1, 0), 4096).unwrap().0);
        assert_eq!(dev.status((9, 9), 100).unwrap(), (false, (1 << 20) - 100));
    }

    #[test]
    fn unmap_of_a_whole_chunk_frees_and_zeroes_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let dev = formatted(&blank(&dir, "d", 4 << 20));
        let slots = dev.free_slots();
        dev.write((1, 0), 0, &sg(&[7u8; 512]), true, false).unwrap();
        dev.write_zeroes((1, 0), 0, 512, true, false, false)
            .unwrap();
        assert_eq!(dev.read((1, 0), 0, 512).unwrap(), vec![0u8; 512]);
        assert_eq!(dev.free_slots(), slots - 1);
        dev.write_zeroes((1, 0), 0, CHUNK_SIZE as u32, true, false, false)
            .unwrap();
        assert_eq!(dev.free_slots(), slots);
        assert!(dev.chunks().is_empty());
        // The reused slot reads zeros beyond what its new chunk wrote.
        dev.write((2, 0), 0, &sg(&[1u8; 16]), false, false).unwrap();
        assert_eq!(dev.read((2, 0), 0, 1024).unwrap()[16..], [0u8; 1008][..]);
    }

    #[test]
    fn full_device_reports_no_space_and_thick_slots_survive_unmap() {
        let dir = tempfile::tempdir().unwrap();
        let dev = formatted(&blank(&dir, "d", 3 << 20));
        assert_eq!(dev.header().slots, 2);
        {
            let g = dev.alloc_guard();
            dev.allocate(&g, (1, 0), true, true).unwrap();
            dev.allocate(&g, (1, 0), true, true).unwrap();
        }
        dev.write((2, 0), 0, &sg(&[1]), false, false).unwrap();
        let e = dev.write((2, 1), 0, &sg(&[1]), false, false).unwrap_err();
        assert!(matches!(e, SdsError::NoSpace { .. }), "{e}");
        dev.write_zeroes((1, 0), 0, CHUNK_SIZE as u32, true, false, false)
            .unwrap();
        assert!(dev.holds((1, 0), true));
        assert_eq!(dev.free_volume(2).unwrap(), 1);
        assert_eq!(dev.free_slots(), 1);
    }

    #[test]
    fn reload_restores_the_table_and_quarantines_corrupt_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, "d", 8 << 20);
        let header = {
            let dev = formatted(&path);
            dev.write((1, 0), 0, &sg(&[1u8; 100]), false, false)
                .unwrap();
            dev.write((1, 1), 0, &sg(&[2u8; 100]), false, false)
                .unwrap();
            *dev.header()
        };
        let probe = Probe::open(&path).unwrap();
        assert_eq!(probe.header, Some(header));
        let dev = Device::load(probe, header).unwrap();
        assert_eq!(dev.chunks(), vec![(1, 0), (1, 1)]);
        assert_eq!(dev.read((1, 1), 0, 100).unwrap(), vec![2u8; 100]);
        drop(dev);

        // Flip a bit in slot 1's entry (chunk (1, 1)).
        let f = OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, header.entry_offset(1) + 3).unwrap();
        f.write_all_at(&[b[0] ^ 1], header.entry_offset(1) + 3)
            .unwrap();
        let dev = Device::load(Probe::open(&path).unwrap(), header).unwrap();
        assert_eq!(dev.chunks(), vec![(1, 0)]);
        assert_eq!(dev.read((1, 1), 0, 100).unwrap(), vec![0u8; 100]);
        // Slot 1 is neither served nor reused.
        assert_eq!(dev.free_slots() as u64, header.slots - 2);
    }

    #[test]
    fn shrunk_and_tiny_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, "d", 8 << 20);
        drop(formatted(&path));
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let probe = Probe::open(&path).unwrap();
        let header = probe.header.unwrap();
        let e = Device::load(probe, header).err().unwrap();
        assert!(matches!(e, SdsError::Shrunk { .. }), "{e}");
        let tiny = blank(&dir, "t", 1000);
        assert_eq!(Probe::open(&tiny).unwrap().header, None);
    }

    #[test]
    fn dirty_marks_survive_reload_and_keep_their_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = blank(&dir, "d", 8 << 20);
        let header = {
            let dev = formatted(&path);
            // A degraded first write allocates the chunk already dirty.
            dev.write((1, 0), 0, &sg(&[1u8; 512]), false, true).unwrap();
            // An existing clean chunk is marked before its data is written.
            dev.write((1, 1), 0, &sg(&[2u8; 512]), false, false)
                .unwrap();
            assert!(!dev.is_dirty((1, 1)));
            dev.write_zeroes((1, 1), 0, 512, false, false, true)
                .unwrap();
            // Zeroing a chunk not held changes nothing and marks nothing.
            dev.write_zeroes((1, 2), 0, 512, false, false, true)
                .unwrap();
            // A mirror failure marks even a chunk this copy does not hold.
            dev.mark_dirty((2, 0), true).unwrap();
            assert_eq!(dev.dirty(1), vec![0, 1]);
            // A dirty thin chunk keeps its slot (and mark) through a whole unmap.
            dev.write_zeroes((1, 0), 0, CHUNK_SIZE as u32, true, false, false)
                .unwrap();
            assert!(dev.holds((1, 0), false));
            assert_eq!(dev.read((1, 0), 0, 512).unwrap(), vec![0u8; 512]);
            *dev.header()
        };
        let dev = Device::load(Probe::open(&path).unwrap(), header).unwrap();
        assert_eq!(dev.dirty(1), vec![0, 1]);
        assert_eq!(dev.dirty(2), vec![0]);
        dev.clear_dirty((1, 1)).unwrap();
        // Marking the thick flag keeps the dirty bit.
        {
            let g = dev.alloc_guard();
            dev.allocate(&g, (1, 0), true, true).unwrap();
        }
        let dev = Device::load(Probe::open(&path).unwrap(), header).unwrap();
        assert_eq!(dev.dirty(1), vec![0]);
        assert!(dev.holds((1, 0), true));
        assert_eq!(dev.read((1, 1), 0, 512).unwrap(), vec![0u8; 512]);
    }
}
