//! Raw file operations that std does not offer, shared by [`super::FileBackend`] and the
//! SDS chunk store: hole punching, zeroing, sparse-file seeking and reads into
//! uninitialized buffers.
//!
//! Each wrapper is one system call on a file descriptor owned by the `File` it
//! borrows.

use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// `lseek` whence: the next offset at or after the given one that holds data.
pub(crate) const SEEK_DATA: i32 = 3;
/// `lseek` whence: the next offset at or after the given one inside a hole.
pub(crate) const SEEK_HOLE: i32 = 4;

/// Deallocates `[offset, offset+len)` keeping the file size; the range then reads as
/// zeros. Fails on filesystems (or devices) without hole punching; callers fall back
/// to [`write_zeros`].
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `file`.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes zeros over `[offset, offset+len)`, leaving the range allocated.
pub(crate) fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done);
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// The largest piece [`write_in_pieces`] hands to one `pwrite`.
pub(crate) const WRITE_PIECE: usize = 16 << 10;

/// Writes `buf` at `offset` in pieces of at most [`WRITE_PIECE`] bytes, one `pwrite`
/// each. Why: the page cache sizes a new folio after the write that creates it (ext4
/// has large folios since Linux 6.16), so a 1 MiB pwrite leaves 1 MiB folios behind,
/// and every later 4 KiB write into one walks all 256 of its buffer heads: 4 KiB
/// writes into a file filled by 1 MiB writes ran at 112k/s, into one filled by
/// 16 KiB writes at 315k/s (one thread, cached); on an SDS filled by 1 MiB writes that
/// walk was 59 % of the CPU of pool 4 KiB writes. The extra system calls cost a 1 MiB
/// write about 70 us (5.5 to 4.1 GB/s).
pub(crate) fn write_in_pieces(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in buf.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// SEEK_DATA / SEEK_HOLE, to report which ranges of a sparse file are allocated.
/// `Ok(None)` when there is no data (or hole) past `offset`.
pub(crate) fn seek(file: &File, offset: u64, whence: i32) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek only reads its integer arguments; the fd is owned by `file`.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset as i64, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        // ENXIO: no data (or hole) past offset.
        Ok(None)
    } else {
        Err(e)
    }
}

/// Whether a read or write of `len` bytes runs on the async worker rather than a
/// blocking thread. Small I/O without a sync lands in the page cache in microseconds,
/// and handing it to a blocking thread (and waking it) cost more than the copy: the
/// hand-off dominated 4 KiB profiles.
pub(crate) fn runs_inline(len: usize, sync: bool) -> bool {
    len <= 64 << 10 && !sync
}

/// Reads exactly `len` bytes at `offset` into a fresh buffer without zero-filling it
/// first: for 1 MiB reads the memset cost as much as the copy. Short reads (past the
/// end of the file) come back as zeros, as a sparse file's unwritten tail would.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    Ok(read_into(file, offset, len, false)?.expect("a blocking read never gives up"))
}

/// As [`read_at`] if every byte is in the page cache; `None` if the read would have to
/// wait for the device. Lets a large read skip the hand-off to a blocking thread (two
/// thread switches) when its data is cached, which is the usual case for a hot volume,
/// without ever blocking an async worker on a disk.
pub(crate) fn read_cached(file: &File, offset: u64, len: usize) -> std::io::Result<Option<Bytes>> {
    read_into(file, offset, len, true)
}

fn read_into(file: &File, offset: u64, len: usize, nowait: bool) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::with_capacity(len);
    // SAFETY: `buf` has room for `len` bytes; `pread_raw` initializes all of them when
    // it returns true, and `set_len` exposes them only then.
    unsafe {
        if !pread_raw(
            file,
            offset,
            buf.spare_capacity_mut().as_mut_ptr().cast(),
            len,
            nowait,
        )? {
            return Ok(None);
        }
        buf.set_len(len);
    }
    Ok(Some(buf.freeze()))
}

/// Fills `len` bytes at `dst` from `offset` of `file` (zeros past its end); `false`
/// with `nowait` when some byte is not in the page cache (or the filesystem cannot
/// tell), leaving `dst` partly written.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes.
pub(crate) unsafe fn pread_raw(
    file: &File,
    offset: u64,
    dst: *mut u8,
    len: usize,
    nowait: bool,
) -> std::io::Result<bool> {
    let mut done = 0;
    while done < len {
        let iov = libc::iovec {
            iov_base: dst.add(done).cast(),
            iov_len: len - done,
        };
        // RWF_NOWAIT: fail with EAGAIN instead of waiting for data that is not cached.
        let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
        let n = libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            (offset + done as u64) as i64,
            flags,
        );
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                _ if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Not cached, or a filesystem that cannot tell: the caller reads
                // on a blocking thread instead.
                Some(libc::EAGAIN | libc::EOPNOTSUPP) if nowait => return Ok(false),
                _ => return Err(e),
            }
        }
        if n == 0 {
            std::ptr::write_bytes(dst.add(done), 0, len - done);
            break;
        }
        done += n as usize;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punched_range_reads_zeros_and_seeks_as_hole() {
        let (_dir, f) = scratch_file();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&vec![9u8; 2 << 20], 0).unwrap();
        punch_hole(&f, 1 << 20, 1 << 20).unwrap();
        let mut buf = vec![1u8; 4096];
        f.read_exact_at(&mut buf, 1 << 20).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(seek(&f, 0, SEEK_HOLE).unwrap(), Some(1 << 20));
        assert_eq!(seek(&f, 1 << 20, SEEK_DATA).unwrap(), None);
        write_zeros(&f, 0, 4096).unwrap();
        f.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    /// An empty read-write file in a new temporary directory (kept alive by the caller).
    fn scratch_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, f)
    }

    #[test]
    fn read_at_returns_the_bytes_and_zeros_past_the_end() {
        let (_dir, f) = scratch_file();
        f.write_all_at(b"hello world", 0).unwrap();
        assert_eq!(&read_at(&f, 6, 5).unwrap()[..], b"world");
        assert_eq!(&read_at(&f, 6, 8).unwrap()[..], b"world\0\0\0");
    }

    #[test]
    fn cached_read_returns_what_was_just_written() {
        let (_dir, f) = scratch_file();
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        // Just written, so in the page cache; ext4 and tmpfs answer buffered
        // RWF_NOWAIT reads from it.
        let got = read_cached(&f, 4096, 512 << 10).unwrap().expect("cached");
        assert_eq!(&got[..], &data[4096..4096 + (512 << 10)]);
        let tail = read_cached(&f, (1 << 20) - 3, 8).unwrap().expect("cached");
        assert_eq!(
            &tail[..],
            &[&data[(1 << 20) - 3..], &[0u8; 5][..]].concat()[..]
        );
    }
}
