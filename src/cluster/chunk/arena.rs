//! Shared memory a gateway lends an SDS on the same host for read data: the SDS reads
//! a chunk straight into it and answers with a header only, so the payload crosses no
//! socket. On loopback that crossing was a third of the CPU of 1 MiB pool reads (the
//! SDS's copy into the socket, the TCP path, and the gateway's copy out of it).
//!
//! The memory is a sealed memfd, one per connection (see `local` for how it gets to
//! the SDS). The gateway's [`Arena`] lends page-aligned [`Region`]s of it, one per
//! read in flight; a region comes back when the `Bytes` made of it are dropped. The
//! SDS writes a region only between receiving a request and answering it, and the
//! connection gives a region back only after its answer (see `conn`): so a region is
//! never lent twice while an SDS may write it. A connection that dies is never lent
//! from again, since its SDS may still finish a read it was sent.

use bytes::Bytes;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// Lending granularity and alignment.
pub const PAGE: usize = 4096;
/// What a gateway lends each local connection. Pages are touched only when first lent,
/// and lowest first, so the memory used follows the peak of reads in flight.
pub const ARENA_LEN: usize = 64 << 20;
/// The largest arena an SDS maps.
pub const MAX_ARENA_LEN: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    #[error("cannot create shared memory for local reads: {0}; reads go over the socket")]
    Create(std::io::Error),
    #[error("cannot map the shared memory a local peer sent: {0}")]
    Map(std::io::Error),
    #[error("the shared memory a local peer sent is not sealed against shrinking; refusing to map it (writing past its end would kill this process)")]
    NotSealed,
    #[error("the shared memory is {0} bytes; expected a multiple of {PAGE} up to {MAX_ARENA_LEN}")]
    BadSize(u64),
}

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A shared, writable mapping of a whole memfd.
pub struct Mapping {
    fd: OwnedFd,
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory valid until `Drop`; which parts are written when
// is governed by the lending protocol above, not by the pointer's owner.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapping({} bytes)", self.len)
    }
}

impl Mapping {
    /// A new memfd of `len` bytes, sealed so that neither side can resize it (a
    /// shrunk memfd would fault the other side's access to its mapping).
    pub fn create(len: usize) -> Result<Self, ArenaError> {
        if len == 0 || !len.is_multiple_of(PAGE) || len as u64 > MAX_ARENA_LEN {
            return Err(ArenaError::BadSize(len as u64));
        }
        // SAFETY: the name is a NUL-terminated literal; the result is a new fd or -1.
        let fd = unsafe {
            libc::memfd_create(
                c"dreadnought-reads".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(ArenaError::Create(os_err()));
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: plain fd system calls with integer arguments.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as i64) != 0
                || libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0
            {
                return Err(ArenaError::Create(os_err()));
            }
        }
        Self::map(fd, len).map_err(|e| match e {
            ArenaError::Map(e) => ArenaError::Create(e),
            e => e,
        })
    }

    /// Maps a memfd a peer sent, if it is sealed against shrinking and of a sane size.
    pub fn adopt(fd: OwnedFd) -> Result<Self, ArenaError> {
        // SAFETY: plain fd system calls; `st` is written by fstat before it is read.
        let (seals, size) = unsafe {
            let seals = libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS);
            let mut st: libc::stat = std::mem::zeroed();
            if seals < 0 || libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(ArenaError::Map(os_err()));
            }
            (seals, st.st_size as u64)
        };
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(ArenaError::NotSealed);
        }
        if size == 0 || !size.is_multiple_of(PAGE as u64) || size > MAX_ARENA_LEN {
            return Err(ArenaError::BadSize(size));
        }
        Self::map(fd, size as usize)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, ArenaError> {
        // SAFETY: a fresh shared mapping of the whole fd; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(ArenaError::Map(os_err()));
        }
        Ok(Self {
            fd,
            base: base.cast(),
            len,
        })
    }

    /// Bytes mapped; never 0.
    pub fn size(&self) -> usize {
        self.len
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where `len` bytes at `offset` go, if that range lies inside the mapping.
    pub fn dest(self: &Arc<Self>, offset: u64, len: usize) -> Option<Dest> {
        let end = offset.checked_add(len as u64)?;
        (end <= self.len as u64).then(|| Dest {
            map: self.clone(),
            offset: offset as usize,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly what mmap returned and was given.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A range of a peer's mapping that the SDS fills for one read; keeps the mapping
/// alive while a blocking thread writes it.
pub struct Dest {
    map: Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl Dest {
    /// Bytes to fill; never 0 (no region is lent for an empty read).
    pub fn size(&self) -> usize {
        self.len
    }

    /// The first byte; valid for writes of `size()` bytes while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: `dest` checked that offset + len lies inside the mapping.
        unsafe { self.map.base.add(self.offset) }
    }

    pub fn fill_zeros(&mut self) {
        // SAFETY: as `as_mut_ptr`.
        unsafe { std::ptr::write_bytes(self.as_mut_ptr(), 0, self.len) }
    }
}

/// The gateway's side: a mapping and which of its pages are lent.
pub struct Arena {
    map: Mapping,
    pages: Mutex<PageMap>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({:?})", self.map)
    }
}

impl Arena {
    pub fn new(len: usize) -> Result<Arc<Self>, ArenaError> {
        let map = Mapping::create(len)?;
        Ok(Arc::new(Self {
            pages: Mutex::new(PageMap::new(len / PAGE)),
            map,
        }))
    }

    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// Lends room for `len` bytes; `None` when the arena has no such run free (the
    /// read then carries its data over the socket).
    pub fn lend(self: &Arc<Self>, len: usize) -> Option<Region> {
        if len == 0 {
            return None;
        }
        let pages = len.div_ceil(PAGE);
        let first = self.lock().take(pages)?;
        Some(Region {
            arena: self.clone(),
            first,
            pages,
            len,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PageMap> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pages of an [`Arena`] lent for one read; given back on drop.
pub struct Region {
    arena: Arc<Arena>,
    first: usize,
    pages: usize,
    len: usize,
}

impl Region {
    /// Byte offset in the arena, as the request names it.
    pub fn offset(&self) -> u64 {
        (self.first * PAGE) as u64
    }

    /// The bytes the SDS put here, without copying them.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Region {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the pages lie inside the mapping, which the `Arc` keeps alive, and
        // nobody writes them while lent after the SDS answered (see the module doc).
        unsafe { std::slice::from_raw_parts(self.arena.map.base.add(self.first * PAGE), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.arena.lock().give_back(self.first, self.pages);
    }
}

/// Which pages are lent: a bitmap, searched first fit so low pages are reused first.
#[derive(Debug)]
struct PageMap {
    words: Vec<u64>,
    pages: usize,
}

impl PageMap {
    fn new(pages: usize) -> Self {
        Self {
            words: vec![0; pages.div_ceil(64)],
            pages,
        }
    }

    fn lent(&self, p: usize) -> bool {
        self.words[p / 64] & (1 << (p % 64)) != 0
    }

    /// Marks the first free run of `n` pages lent and returns its first page.
    fn take(&mut self, n: usize) -> Option<usize> {
        let (mut start, mut p) = (0, 0);
        while p < self.pages {
            if p - start == n {
                break;
            }
            if p % 64 == 0 && self.words[p / 64] == u64::MAX {
                p += 64;
                start = p;
            } else if self.lent(p) {
                p += 1;
                start = p;
            } else {
                p += 1;
            }
        }
        if p.min(self.pages) - start < n {
            return None;
        }
        for q in start..start + n {
            self.words[q / 64] |= 1 << (q % 64);
        }
        Some(start)
    }

    fn give_back(&mut self, first: usize, n: usize) {
        for q in first..first + n {
            debug_assert!(self.lent(q), "page {q} given back twice");
            self.words[q / 64] &= !(1 << (q % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_map_lends_first_fit_and_reuses_what_comes_back() {
        let mut m = PageMap::new(200);
        assert_eq!(m.take(1), Some(0));
        assert_eq!(m.take(64), Some(1));
        assert_eq!(m.take(100), Some(65));
        assert_eq!(m.take(40), None, "35 pages left");
        assert_eq!(m.take(35), Some(165));
        assert_eq!(m.take(1), None);
        m.give_back(1, 64);
        assert_eq!(m.take(65), None, "the hole is 64 pages");
        assert_eq!(m.take(10), Some(1));
        assert_eq!(m.take(54), Some(11));
        m.give_back(0, 1);
        m.give_back(165, 35);
        assert_eq!(m.take(2), Some(165));
        assert_eq!(m.take(1), Some(0));
    }

    #[test]
    fn a_region_is_what_the_peer_wrote_and_comes_back_when_dropped() {
        let arena = Arena::new(16 * PAGE).unwrap();
        // The SDS's side: its own mapping of the same memfd.
        let fd = arena.mapping().fd().try_clone_to_owned().unwrap();
        let peer = Arc::new(Mapping::adopt(fd).unwrap());
        let a = arena.lend(5000).unwrap();
        let b = arena.lend(PAGE).unwrap();
        assert_eq!((a.offset(), b.offset()), (0, 2 * PAGE as u64));
        let mut d = peer.dest(a.offset(), 5000).unwrap();
        // SAFETY: `d` is valid for 5000 bytes.
        unsafe { std::ptr::write_bytes(d.as_mut_ptr(), 7, d.size()) };
        let bytes = a.into_bytes();
        assert_eq!(bytes.len(), 5000);
        assert!(bytes.iter().all(|&x| x == 7));
        assert!(arena
            .lend(2 * PAGE)
            .is_some_and(|r| r.offset() == 3 * PAGE as u64));
        drop(bytes);
        assert_eq!(arena.lend(2 * PAGE).unwrap().offset(), 0);
        assert!(peer.dest(15 * PAGE as u64, PAGE + 1).is_none());
        assert!(peer.dest(u64::MAX, 1).is_none());
        assert!(arena.lend(17 * PAGE).is_none());
    }

    #[test]
    fn an_unsealed_memfd_is_refused() {
        // SAFETY: as in `Mapping::create`.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: integer arguments only.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as i64) }, 0);
        assert!(matches!(Mapping::adopt(fd), Err(ArenaError::NotSealed)));
        assert!(matches!(
            Mapping::create(100),
            Err(ArenaError::BadSize(100))
        ));
    }
}
