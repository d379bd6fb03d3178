//! A volume kept in one local file (or block device), created sparse.

use super::fileops::{punch_hole, read_at, runs_inline, seek, write_zeros, SEEK_DATA, SEEK_HOLE};
use super::{
    AtomicOp, AtomicOutcome, BackendError, BlockBackend, Provisioning, SgList, BLOCK_SIZE,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::RwLock;

#[derive(Debug)]
pub struct FileBackend {
    file: Arc<File>,
    blocks: u64,
    /// Atomic operations hold it exclusively; reads and writes share it, so none of
    /// them comes between an atomic operation's read and its write, nor sees half of
    /// it. Shared acquisition is a compare-and-swap when no atomic operation runs.
    order: RwLock<()>,
}

impl FileBackend {
    /// Opens `path`, creating a sparse file of `size_bytes` if it does not exist and
    /// growing a shorter one. An existing longer file keeps its length and data; the
    /// volume then exposes only `size_bytes`.
    pub fn open(path: &Path, size_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < size_bytes {
            file.set_len(size_bytes)?;
        }
        Ok(Self {
            file: Arc::new(file),
            blocks: size_bytes / BLOCK_SIZE as u64,
            order: RwLock::new(()),
        })
    }

    /// Runs `f` on the worker when `small` (see [`runs_inline`]), else on a blocking
    /// thread.
    async fn io<T: Send + 'static>(
        &self,
        small: bool,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        if small {
            return f(&self.file).map_err(map_io);
        }
        self.blocking(f).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|e| BackendError::Io(std::io::Error::other(e)))?
            .map_err(map_io)
    }
}

fn map_io(e: std::io::Error) -> BackendError {
    if e.raw_os_error() == Some(libc_enospc()) {
        BackendError::NoSpace
    } else {
        BackendError::Io(e)
    }
}

const fn libc_enospc() -> i32 {
    28
}

#[async_trait]
impl BlockBackend for FileBackend {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn num_blocks(&self) -> u64 {
        self.blocks
    }

    fn thin(&self) -> bool {
        true
    }

    fn completes_inline(&self) -> bool {
        true
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BackendError> {
        let len = blocks as usize * BLOCK_SIZE as usize;
        let off = lba * BLOCK_SIZE as u64;
        let _shared = self.order.read().await;
        self.io(runs_inline(len, false), move |f| read_at(f, off, len))
            .await
    }

    async fn write(&self, lba: u64, data: SgList, fua: bool) -> Result<(), BackendError> {
        let off = lba * BLOCK_SIZE as u64;
        let _shared = self.order.read().await;
        self.io(runs_inline(data.len(), fua), move |f| {
            if data.segments().len() == 1 {
                f.write_all_at(&data.segments()[0], off)?;
            } else {
                let mut pos = off;
                for seg in data.segments() {
                    f.write_all_at(seg, pos)?;
                    pos += seg.len() as u64;
                }
            }
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), BackendError> {
        self.blocking(|f| f.sync_data()).await
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        let off = lba * BLOCK_SIZE as u64;
        let len = blocks * BLOCK_SIZE as u64;
        let _shared = self.order.read().await;
        self.blocking(move |f| {
            if unmap && punch_hole(f, off, len).is_ok() {
                return Ok(());
            }
            write_zeros(f, off, len)
        })
        .await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        let off = lba * BLOCK_SIZE as u64;
        let len = blocks * BLOCK_SIZE as u64;
        let _shared = self.order.read().await;
        self.blocking(move |f| punch_hole(f, off, len).or_else(|_| write_zeros(f, off, len)))
            .await
    }

    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        fua: bool,
    ) -> Result<AtomicOutcome, BackendError> {
        let off = lba * BLOCK_SIZE as u64;
        let len = op.len();
        let _exclusive = self.order.write().await;
        self.io(runs_inline(len, fua), move |f| {
            let current = match op {
                AtomicOp::Write(_) => Bytes::new(),
                _ => read_at(f, off, len)?,
            };
            let new = match op.apply(&current) {
                Ok(new) => new,
                Err(offset) => return Ok(AtomicOutcome::Miscompare { offset }),
            };
            f.write_all_at(&new, off)?;
            if fua {
                f.sync_data()?;
            }
            Ok(AtomicOutcome::Done)
        })
        .await
    }

    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        let end = self.blocks * BLOCK_SIZE as u64;
        let off = lba * BLOCK_SIZE as u64;
        let bs = BLOCK_SIZE as u64;
        self.blocking(move |f| {
            let data = seek(f, off, SEEK_DATA)?.unwrap_or(end).min(end);
            if data > off {
                // A hole starts at `off`; it ends where data begins (rounded down).
                let blocks = ((data - off) / bs).max(1);
                return Ok((Provisioning::Deallocated, blocks));
            }
            let hole = seek(f, off, SEEK_HOLE)?.unwrap_or(end).min(end);
            let blocks = (hole.div_ceil(bs) - lba).max(1);
            Ok((Provisioning::Mapped, blocks))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_unmap() {
        let dir = tempfile::tempdir().unwrap();
        let be = FileBackend::open(&dir.path().join("v.img"), 1 << 20).unwrap();
        assert_eq!(be.num_blocks(), 2048);
        let mut sg = SgList::new();
        sg.push(Bytes::from(vec![0xAA; 512]));
        sg.push(Bytes::from(vec![0xBB; 512]));
        be.write(10, sg, true).await.unwrap();
        let r = be.read(10, 2).await.unwrap();
        assert_eq!(&r[..512], &[0xAA; 512][..]);
        assert_eq!(&r[512..], &[0xBB; 512][..]);
        be.unmap(10, 2).await.unwrap();
        assert_eq!(be.read(10, 2).await.unwrap(), Bytes::from(vec![0u8; 1024]));
    }

    #[tokio::test]
    async fn atomic_ops_compare_or_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let be = Arc::new(FileBackend::open(&dir.path().join("v.img"), 1 << 20).unwrap());
        be.write(4, vec![0x11; 1024].into(), false).await.unwrap();
        let mut compare = vec![0x11; 1024];
        compare[700] = 0;
        let caw = |compare: Vec<u8>, write: u8| AtomicOp::CompareAndWrite {
            compare: compare.into(),
            write: vec![write; 1024].into(),
        };
        let r = be.atomic(4, caw(compare, 0x22), false).await.unwrap();
        assert_eq!(r, AtomicOutcome::Miscompare { offset: 700 });
        assert_eq!(be.read(4, 2).await.unwrap(), vec![0x11; 1024]);
        let r = be
            .atomic(4, caw(vec![0x11; 1024], 0x22), true)
            .await
            .unwrap();
        assert_eq!(r, AtomicOutcome::Done);
        assert_eq!(be.read(4, 2).await.unwrap(), vec![0x22; 1024]);
        be.atomic(4, AtomicOp::Or(vec![0x41; 1024].into()), false)
            .await
            .unwrap();
        assert_eq!(be.read(4, 2).await.unwrap(), vec![0x63; 1024]);
        be.atomic(4, AtomicOp::Write(vec![9; 512].into()), false)
            .await
            .unwrap();
        assert_eq!(be.read(4, 1).await.unwrap(), vec![9; 512]);

        // Many concurrent swaps of one block from the value each saw: every success
        // moves the counter by exactly one, so none was lost to a race.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let be = be.clone();
            set.spawn(async move {
                let mut wins = 0u32;
                while wins < 25 {
                    let old = be.read(100, 1).await.unwrap();
                    let mut new = old.to_vec();
                    let n = u32::from_be_bytes(new[..4].try_into().unwrap()) + 1;
                    new[..4].copy_from_slice(&n.to_be_bytes());
                    let op = AtomicOp::CompareAndWrite {
                        compare: old.into(),
                        write: new.into(),
                    };
                    if be.atomic(100, op, false).await.unwrap() == AtomicOutcome::Done {
                        wins += 1;
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let end = be.read(100, 1).await.unwrap();
        assert_eq!(u32::from_be_bytes(end[..4].try_into().unwrap()), 200);
    }

    #[tokio::test]
    async fn creates_sparse_and_keeps_data_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        {
            let be = FileBackend::open(&p, 8 << 20).unwrap();
            be.write(1, vec![7u8; 512].into(), true).await.unwrap();
        }
        let be = FileBackend::open(&p, 8 << 20).unwrap();
        assert_eq!(be.read(1, 1).await.unwrap()[0], 7);
        let (state, _) = be.allocation_status(8000).await.unwrap();
        assert_eq!(state, Provisioning::Deallocated);
    }
}
