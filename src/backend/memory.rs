//! A volume held in memory, for unit tests of the SCSI engine and the transport.

use super::{
    copy_into, AtomicOp, AtomicOutcome, BackendError, BlockBackend, Provisioning, SgList,
    BLOCK_SIZE,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Mutex;

#[derive(Debug)]
pub struct MemoryBackend {
    blocks: u64,
    /// One entry per block: `None` is deallocated (reads zeros).
    data: Mutex<Vec<Option<Box<[u8]>>>>,
}

impl MemoryBackend {
    pub fn new(blocks: u64) -> Self {
        Self {
            blocks,
            data: Mutex::new(vec![None; blocks as usize]),
        }
    }
}

#[async_trait]
impl BlockBackend for MemoryBackend {
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
        let bs = BLOCK_SIZE as usize;
        let mut out = vec![0u8; blocks as usize * bs];
        let data = self.data.lock().unwrap();
        for i in 0..blocks as usize {
            if let Some(b) = &data[lba as usize + i] {
                out[i * bs..(i + 1) * bs].copy_from_slice(b);
            }
        }
        Ok(out.into())
    }

    async fn write(&self, lba: u64, sg: SgList, _fua: bool) -> Result<(), BackendError> {
        let bs = BLOCK_SIZE as usize;
        let mut flat = vec![0u8; sg.len()];
        copy_into(&sg, &mut flat);
        let mut data = self.data.lock().unwrap();
        for (i, chunk) in flat.chunks(bs).enumerate() {
            let mut b = vec![0u8; bs];
            b[..chunk.len()].copy_from_slice(chunk);
            data[lba as usize + i] = Some(b.into_boxed_slice());
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        let mut data = self.data.lock().unwrap();
        for b in &mut data[lba as usize..(lba + blocks) as usize] {
            *b = if unmap {
                None
            } else {
                Some(vec![0u8; BLOCK_SIZE as usize].into_boxed_slice())
            };
        }
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        self.write_zeroes(lba, blocks, true).await
    }

    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        _fua: bool,
    ) -> Result<AtomicOutcome, BackendError> {
        let bs = BLOCK_SIZE as usize;
        // One mutex guards every block: the read, the compare and the write below are
        // one step for every other caller.
        let mut data = self.data.lock().unwrap();
        let blocks = op.len() / bs;
        let range = lba as usize..lba as usize + blocks;
        let mut current = vec![0u8; op.len()];
        for (i, b) in data[range.clone()].iter().enumerate() {
            if let Some(b) = b {
                current[i * bs..(i + 1) * bs].copy_from_slice(b);
            }
        }
        let new = match op.apply(&current) {
            Ok(new) => new,
            Err(offset) => return Ok(AtomicOutcome::Miscompare { offset }),
        };
        for (slot, chunk) in data[range].iter_mut().zip(new.chunks(bs)) {
            *slot = Some(chunk.to_vec().into_boxed_slice());
        }
        Ok(AtomicOutcome::Done)
    }

    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        let data = self.data.lock().unwrap();
        let first = data[lba as usize].is_some();
        let run = data[lba as usize..]
            .iter()
            .take_while(|b| b.is_some() == first)
            .count() as u64;
        let state = if first {
            Provisioning::Mapped
        } else {
            Provisioning::Deallocated
        };
        Ok((state, run))
    }
}
