//! SANITIZE (SBC-3 5.19): OVERWRITE, BLOCK ERASE, CRYPTOGRAPHIC ERASE and EXIT
//! FAILURE MODE.
//!
//! A sanitize runs as a task of its own, detached from the command that started it:
//! aborting that command, a reset, or the initiator logging out leaves it running, as
//! SBC-3 requires. While it runs, every unit of the volume in this process answers
//! everything but INQUIRY, REPORT LUNS and REQUEST SENSE with NOT READY, SANITIZE IN
//! PROGRESS and the progress in the sense-key specific field (REQUEST SENSE returns the
//! same as data). A sanitize that failed leaves the medium in failure mode (MEDIUM
//! ERROR, SANITIZE COMMAND FAILED) until another sanitize succeeds or, when the failed
//! one had AUSE set, EXIT FAILURE MODE.
//!
//! OVERWRITE writes the pattern over every block, durably (FUA), however the volume is
//! provisioned: deallocating would leave the old data on the devices underneath. The
//! erases deallocate every block of a thin volume (it then reads zeros and GET LBA
//! STATUS reports it deallocated) and write zeros over a thick one. Another gateway
//! serving the same pool volume does not learn that a sanitize runs here.

use super::rw::io_sense;
use super::sense::{asc, Sense, SenseKey};
use super::{cdb, BoxFut, Ctx, Done};
use crate::backend::{BlockBackend, SgList, BLOCK_SIZE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BS: usize = BLOCK_SIZE as usize;

pub(crate) const OVERWRITE: u8 = 0x01;
pub(crate) const BLOCK_ERASE: u8 = 0x02;
pub(crate) const CRYPTOGRAPHIC_ERASE: u8 = 0x03;
pub(crate) const EXIT_FAILURE_MODE: u8 = 0x1F;

/// Blocks one write of an overwrite pass covers (1 MiB, a pool chunk).
const OVERWRITE_PIECE: u64 = (1024 * 1024 / BS) as u64;
/// OVERWRITE is paced to this many bytes per second per volume: it rewrites the whole
/// volume as a background operation, and on a pool its writes (both copies) share the
/// SDS devices with every other volume's I/O, so it must not take all of their
/// bandwidth. (At this pace a 1 GiB volume takes 8 s a pass.)
const OVERWRITE_BYTES_PER_SEC: u64 = 128 * 1024 * 1024;

/// Blocks one deallocation or zeroing request of an erase covers (64 MiB): big enough
/// to be cheap, small enough for the progress to move.
const ERASE_PIECE: u64 = 64 * 1024 * 1024 / BS as u64;

/// How far a running sanitize has got, in blocks of work.
#[derive(Debug)]
pub(crate) struct Progress {
    done: AtomicU64,
    total: u64,
}

impl Progress {
    /// PROGRESS INDICATION: the fraction done, of 65536.
    pub fn indication(&self) -> u16 {
        let done = self.done.load(Ordering::Relaxed).min(self.total);
        (u128::from(done) * 65536 / u128::from(self.total.max(1))).min(65535) as u16
    }
}

/// The sanitize state of a volume, shared by its units in this process.
#[derive(Debug, Default)]
pub(crate) struct Status {
    running: Option<Arc<Progress>>,
    /// The last sanitize failed; true when it had AUSE set (EXIT FAILURE MODE allowed).
    failed: Option<bool>,
}

impl Status {
    /// The condition that keeps ordinary commands away, if any.
    pub fn condition(&self) -> Option<Sense> {
        if let Some(p) = &self.running {
            return Some(
                Sense::new(SenseKey::NotReady, asc::NOT_READY_SANITIZE_IN_PROGRESS)
                    .with_progress(p.indication()),
            );
        }
        self.failed
            .map(|_| Sense::new(SenseKey::MediumError, asc::SANITIZE_COMMAND_FAILED))
    }

    /// Whether `opcode` may run under [`Status::condition`]: INQUIRY, REPORT LUNS and
    /// REQUEST SENSE always (SBC-3 4.11); SANITIZE too once a sanitize has failed, to
    /// start another or leave failure mode.
    pub fn admits(&self, opcode: Option<u8>) -> bool {
        match opcode {
            Some(0x12 | 0xA0 | 0x03) => true,
            Some(0x48) => self.running.is_none(),
            _ => false,
        }
    }
}

enum Job {
    /// Each pass writes `pattern` (one block), inverted on every other pass if asked.
    Overwrite {
        block: Vec<u8>,
        invert: bool,
        passes: u8,
    },
    Erase,
}

/// Decodes the OVERWRITE parameter list (SBC-3 5.19.3): INVERT, TEST, OVERWRITE COUNT,
/// INITIALIZATION PATTERN LENGTH and the pattern, repeated to fill a block.
fn overwrite_job(list: &[u8], param_len: usize) -> Result<Job, Sense> {
    if list.len() < param_len {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let (b0, b1) = (list[0], list[1]);
    // TEST is for vendor testing: anything but 00b asks for something we do not do.
    if b0 & 0x60 != 0 {
        return Err(Sense::invalid_param(0, Some(6)));
    }
    let passes = b0 & 0x1F;
    if passes == 0 {
        return Err(Sense::invalid_param(0, Some(4)));
    }
    if b1 != 0 {
        return Err(Sense::invalid_param(1, None));
    }
    let len = usize::from(cdb::u16_at(list, 2).unwrap_or(0));
    if len == 0 || len > BS {
        return Err(Sense::invalid_param(2, None));
    }
    if 4 + len > param_len {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let pattern = &list[4..4 + len];
    let block = pattern.iter().copied().cycle().take(BS).collect();
    Ok(Job::Overwrite {
        block,
        invert: b0 & 0x80 != 0,
        passes,
    })
}

/// SANITIZE 0x48.
pub(crate) fn sanitize<'a>(c: &'a Ctx<'a>) -> BoxFut<'a> {
    Box::pin(async move {
        let b1 = c.cdb[1];
        // Bit 6 (ZNR in SBC-4) is reserved here: there are no zones.
        if b1 & 0x40 != 0 {
            return Err(Sense::invalid_cdb(1, Some(6)));
        }
        if let Some(i) = (2..7).find(|&i| c.cdb[i] != 0) {
            return Err(Sense::invalid_cdb(i, None));
        }
        let (immed, ause, sa) = (b1 & 0x80 != 0, b1 & 0x20 != 0, b1 & 0x1F);
        let param_len = usize::from(cdb::u16_at(c.cdb, 7).unwrap_or(0));
        let job = match sa {
            OVERWRITE => {
                if !(5..=BS + 4).contains(&param_len) {
                    return Err(Sense::invalid_cdb(7, None));
                }
                overwrite_job(&c.data_out.prefix(param_len).to_bytes(), param_len)?
            }
            _ if param_len != 0 => return Err(Sense::invalid_cdb(7, None)),
            BLOCK_ERASE | CRYPTOGRAPHIC_ERASE => Job::Erase,
            EXIT_FAILURE_MODE => return c.unit.exit_sanitize_failure().map(|()| Done::good()),
            // The command table only routes the service actions above here.
            _ => return Err(Sense::invalid_cdb(1, Some(4))),
        };
        c.unit.check_writable()?;
        let n = c.unit.num_blocks();
        let total = match &job {
            Job::Overwrite { passes, .. } => n * u64::from(*passes),
            Job::Erase => n,
        };
        let progress = Arc::new(Progress {
            done: AtomicU64::new(0),
            total,
        });
        let status = c.unit.begin_sanitize(progress.clone())?;
        let backend = c.unit.backend_arc();
        let task = tokio::spawn(async move {
            // Should the task die without finishing (a panic), the medium is left in
            // failure mode rather than "in progress" for ever.
            let mut guard = Unfinished {
                status: &status,
                ause,
                armed: true,
            };
            let r = run(&*backend, job, &progress).await;
            guard.armed = false;
            finish(&status, r.is_err(), ause);
            if let Err(e) = &r {
                tracing::warn!(error = %e, "sanitize failed; the medium is in sanitize failure mode");
            }
            r
        });
        if immed {
            return Ok(Done::good());
        }
        match task.await {
            Ok(r) => r.map(|()| Done::good()),
            Err(_) => Err(Sense::new(
                SenseKey::MediumError,
                asc::SANITIZE_COMMAND_FAILED,
            )),
        }
    })
}

struct Unfinished<'a> {
    status: &'a Mutex<Status>,
    ause: bool,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            finish(self.status, true, self.ause);
        }
    }
}

fn finish(status: &Mutex<Status>, failed: bool, ause: bool) {
    let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
    st.running = None;
    st.failed = failed.then_some(ause);
}

/// Marks a sanitize as running; refused (NOT READY) if one already is.
pub(crate) fn begin(status: &Mutex<Status>, progress: Arc<Progress>) -> Result<(), Sense> {
    let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
    if st.running.is_some() {
        return Err(st.condition().expect("running"));
    }
    st.running = Some(progress);
    Ok(())
}

/// EXIT FAILURE MODE: leaves failure mode if the failed sanitize allowed it (AUSE);
/// with nothing failed there is nothing to leave.
pub(crate) fn exit_failure(status: &Mutex<Status>) -> Result<(), Sense> {
    let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
    match st.failed {
        Some(false) => Err(Sense::invalid_cdb(1, Some(4))),
        _ => {
            st.failed = None;
            Ok(())
        }
    }
}

async fn run(backend: &dyn BlockBackend, job: Job, progress: &Progress) -> Result<(), Sense> {
    let n = backend.num_blocks();
    let step = |blocks: u64| {
        progress.done.fetch_add(blocks, Ordering::Relaxed);
    };
    match job {
        Job::Overwrite {
            block,
            invert,
            passes,
        } => {
            let piece = OVERWRITE_PIECE.min(n.max(1)) as usize;
            let straight: bytes::Bytes = block.repeat(piece).into();
            let inverted: bytes::Bytes = block
                .iter()
                .map(|b| !b)
                .collect::<Vec<u8>>()
                .repeat(piece)
                .into();
            let started = tokio::time::Instant::now();
            let mut written = 0u64;
            for pass in 0..passes {
                let buf = if invert && pass % 2 == 1 {
                    &inverted
                } else {
                    &straight
                };
                let mut lba = 0;
                while lba < n {
                    let blocks = (n - lba).min(piece as u64);
                    let data = SgList::from(buf.slice(..blocks as usize * BS));
                    backend
                        .write(lba, data, true)
                        .await
                        .map_err(|e| io_sense(e, true))?;
                    lba += blocks;
                    step(blocks);
                    written += blocks * BS as u64;
                    let due =
                        Duration::from_secs_f64(written as f64 / OVERWRITE_BYTES_PER_SEC as f64);
                    tokio::time::sleep_until(started + due).await;
                }
            }
        }
        Job::Erase => {
            let mut lba = 0;
            while lba < n {
                let blocks = (n - lba).min(ERASE_PIECE);
                let r = if backend.thin() {
                    backend.unmap(lba, blocks).await
                } else {
                    backend.write_zeroes(lba, blocks, false).await
                };
                r.map_err(|e| io_sense(e, true))?;
                lba += blocks;
                step(blocks);
            }
            backend.flush().await.map_err(|e| io_sense(e, true))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(b0: u8, len: u16, pattern: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, 0];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(pattern);
        v
    }

    #[test]
    fn overwrite_parameters_are_checked() {
        let ok = list(0x81, 4, b"abcd");
        match overwrite_job(&ok, ok.len()).unwrap() {
            Job::Overwrite {
                block,
                invert,
                passes,
            } => {
                assert_eq!((invert, passes, block.len()), (true, 1, BS));
                assert_eq!(&block[..8], b"abcdabcd");
            }
            Job::Erase => panic!("not an overwrite"),
        }
        let sense = |l: Vec<u8>| overwrite_job(&l, l.len()).err().map(|s| s.asc);
        let invalid = Some(asc::INVALID_FIELD_IN_PARAMETER_LIST);
        assert_eq!(sense(list(0x00, 4, b"abcd")), invalid, "count 0");
        assert_eq!(sense(list(0x21, 4, b"abcd")), invalid, "TEST");
        assert_eq!(sense(list(0x01, 0, b"abcd")), invalid, "no pattern");
        assert_eq!(
            sense(list(0x01, 513, &[0; 513])),
            invalid,
            "pattern > block"
        );
        assert_eq!(
            sense(list(0x01, 8, b"abcd")),
            Some(asc::PARAMETER_LIST_LENGTH_ERROR)
        );
    }

    #[test]
    fn running_and_failed_sanitizes_hold_commands_off() {
        let st = Mutex::new(Status::default());
        assert!(st.lock().unwrap().condition().is_none());
        let p = Arc::new(Progress {
            done: AtomicU64::new(0),
            total: 4,
        });
        begin(&st, p.clone()).unwrap();
        p.done.store(1, Ordering::Relaxed);
        let s = st.lock().unwrap().condition().unwrap();
        assert_eq!((s.key, s.asc), (SenseKey::NotReady, 0x041B));
        assert_eq!(s.sks, Some([0x80, 0x40, 0x00]));
        assert!(begin(&st, p).is_err(), "one at a time");
        {
            let g = st.lock().unwrap();
            assert!(g.admits(Some(0x12)) && g.admits(Some(0x03)) && g.admits(Some(0xA0)));
            assert!(!g.admits(Some(0x00)) && !g.admits(Some(0x48)));
        }
        finish(&st, true, false);
        let s = st.lock().unwrap().condition().unwrap();
        assert_eq!((s.key, s.asc), (SenseKey::MediumError, 0x3103));
        assert!(st.lock().unwrap().admits(Some(0x48)));
        assert!(exit_failure(&st).is_err(), "AUSE was not set");
        finish(&st, true, true);
        exit_failure(&st).unwrap();
        assert!(st.lock().unwrap().condition().is_none());
    }
}
