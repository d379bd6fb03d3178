//! READ, WRITE, WRITE AND VERIFY, VERIFY, PRE-FETCH and SYNCHRONIZE CACHE.

use super::cdb::{self, BlockRange};
use super::sense::{asc, Sense, SenseKey};
use super::{BoxFut, Ctx, Done, HandlerResult};
use crate::backend::{BackendError, SgList, BLOCK_SIZE};

/// Largest transfer in blocks (8 MiB), advertised in the Block Limits VPD page. It also
/// bounds the memory one command can make us allocate.
pub(crate) const MAX_TRANSFER_BLOCKS: u32 = 8 * 1024 * 1024 / BLOCK_SIZE;

const BS: usize = BLOCK_SIZE as usize;

/// Maps a backend failure to the sense the initiator should see. `writing`: the
/// command changes data (or makes it durable); otherwise it only reads it (READ,
/// VERIFY, GET LBA STATUS).
pub(crate) fn io_sense(e: BackendError, writing: bool) -> Sense {
    let medium = |writing| {
        let code = if writing {
            asc::WRITE_ERROR
        } else {
            asc::UNRECOVERED_READ_ERROR
        };
        Sense::new(SenseKey::MediumError, code)
    };
    match e {
        BackendError::Io(err) => {
            tracing::warn!(error = %err, writing, "backend I/O failed");
            medium(writing)
        }
        // Unreadable until a server returns: a medium error the initiator reports at
        // once (and multipath does not retry on another path, which has no copy either).
        // Logged at debug: every command on such data fails alike, and the gateway has
        // already warned, once, about the SDS.
        BackendError::Unavailable(why) => {
            tracing::debug!(error = %why, writing, "no copy of the data is available");
            medium(writing)
        }
        BackendError::NoSpace => Sense::new(
            SenseKey::DataProtect,
            asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        ),
        BackendError::OutOfRange { .. } => Sense::lba_out_of_range(),
        e @ BackendError::NotAtomic { .. } => {
            tracing::warn!(error = %e, "atomic request outside the advertised limits");
            Sense::illegal(asc::INVALID_FIELD_IN_CDB)
        }
    }
}

/// Decodes and validates the block range: no protection information (we have none to
/// check), a transfer we are willing to buffer, and a range inside the volume.
pub(super) fn checked(c: &Ctx<'_>, transfers: bool) -> Result<BlockRange, Sense> {
    let r = cdb::block_range(c.cdb).ok_or_else(|| Sense::invalid_cdb(0, None))?;
    if r.flags >> 5 != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    if transfers && r.blocks > MAX_TRANSFER_BLOCKS {
        return Err(Sense::invalid_cdb(r.len_offset, None));
    }
    check_range(c.unit.num_blocks(), r.lba, r.blocks)?;
    Ok(r)
}

/// LBA OUT OF RANGE when any block of `lba..lba+blocks` is past the end. A zero-length
/// transfer at the very end (lba == capacity) is accepted, as in LIO.
pub(crate) fn check_range(capacity: u64, lba: u64, blocks: u32) -> Result<(), Sense> {
    match lba.checked_add(u64::from(blocks)) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

fn is_write_and_verify(opcode: u8) -> bool {
    matches!(opcode, 0x2E | 0xAE | 0x8E)
}

pub(crate) fn read<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        if r.blocks == 0 {
            return Ok(Done::good());
        }
        let data = c
            .unit
            .backend()
            .read(r.lba, r.blocks)
            .await
            .map_err(|e| io_sense(e, false))?;
        Ok(Done {
            status: super::status::GOOD,
            data,
        })
    })
}

/// WRITE and WRITE AND VERIFY. Writes what actually arrived, up to the CDB's length:
/// whole blocks directly, a trailing partial block by read-modify-write so the bytes
/// the initiator did send land and the rest of that block is preserved (libiscsi's
/// residual tests check exactly that).
pub(crate) fn write<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        let verify = is_write_and_verify(c.cdb[0]);
        if verify && (r.flags >> 1) & 0x03 >= 2 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        c.unit.check_writable()?;
        if r.blocks == 0 {
            return Ok(Done::good());
        }
        // WRITE AND VERIFY wants the data on the medium before it "verifies" it; we
        // trust a successful durable write instead of reading it back.
        let fua = r.flags & 0x08 != 0 || verify || c.unit.write_through();
        let want = r.blocks as usize * BS;
        let have = c.data_out.len().min(want);
        let full = have / BS * BS;
        let backend = c.unit.backend();
        if full > 0 {
            backend
                .write(r.lba, c.data_out.prefix(full), fua)
                .await
                .map_err(|e| io_sense(e, true))?;
        }
        let tail = have - full;
        if tail > 0 {
            let lba = r.lba + (full / BS) as u64;
            let old = backend.read(lba, 1).await.map_err(|e| io_sense(e, false))?;
            let mut block = old.to_vec();
            block.resize(BS, 0);
            let part = c.data_out.slice(full, tail).to_bytes();
            block[..tail].copy_from_slice(&part);
            backend
                .write(lba, SgList::from(block), fua)
                .await
                .map_err(|e| io_sense(e, true))?;
        }
        Ok(Done::good())
    })
}

/// VERIFY. BYTCHK 0 checks only the range (the medium is always readable or the read
/// path reports it); 1 compares the Data-Out; 3 compares one Data-Out block against
/// every block. A short Data-Out compares what is present.
pub(crate) fn verify<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let r = checked(c, true)?;
        let bytchk = (r.flags >> 1) & 0x03;
        if bytchk == 2 {
            return Err(Sense::invalid_cdb(1, Some(2)));
        }
        if r.blocks == 0 || bytchk == 0 {
            return Ok(Done::good());
        }
        let media = c
            .unit
            .backend()
            .read(r.lba, r.blocks)
            .await
            .map_err(|e| io_sense(e, false))?;
        let mismatch = if bytchk == 1 {
            let expect = c.data_out.prefix(media.len()).to_bytes();
            first_difference(&media, &expect)
        } else {
            let expect = c.data_out.prefix(BS).to_bytes();
            media
                .chunks(BS)
                .enumerate()
                .find_map(|(i, blk)| first_difference(blk, &expect).map(|o| i * BS + o))
        };
        match mismatch {
            None => Ok(Done::good()),
            Some(off) => Err(
                Sense::new(SenseKey::Miscompare, asc::MISCOMPARE_DURING_VERIFY)
                    .with_info(off as u64),
            ),
        }
    })
}

fn first_difference(media: &[u8], expect: &[u8]) -> Option<usize> {
    media.iter().zip(expect).position(|(a, b)| a != b)
}

/// PRE-FETCH. There is no cache of ours to load, so the range is only validated and the
/// answer is GOOD (SBC-3: GOOD when the blocks do not all fit in the cache; CONDITION
/// MET would claim they were loaded).
pub(crate) fn prefetch(c: &Ctx<'_>) -> HandlerResult {
    checked(c, false)?;
    Ok(Done::good())
}

/// SYNCHRONIZE CACHE: the backend flushes everything; the range is only validated.
/// IMMED is ignored: we answer when the flush is done, which is always allowed.
pub(crate) fn sync_cache<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        checked(c, false)?;
        c.unit
            .backend()
            .flush()
            .await
            .map_err(|e| io_sense(e, true))?;
        Ok(Done::good())
    })
}
