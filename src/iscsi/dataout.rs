//! Collecting a write's data: immediate data, the unsolicited burst and R2T-solicited
//! sequences (RFC 7143 sections 4.2.2.3, 11.7, 11.8). Pure: the connection feeds it
//! Data-Out PDUs and sends the R2Ts it asks for.

use super::pdu::{DataOut, RESERVED_TAG};
use crate::backend::SgList;
use crate::scsi::sense::{asc, Sense, SenseKey};
use bytes::Bytes;
use std::collections::BTreeMap;

/// The negotiated parameters that shape a write's data transfer.
#[derive(Debug, Clone, Copy)]
pub struct BurstParams {
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u16,
}

/// Something the initiator did wrong while sending a write's data. At
/// ErrorRecoveryLevel 0 every one of these ends the connection (session recovery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataOutError {
    #[error("immediate data sent although ImmediateData=No was negotiated")]
    ImmediateNotAllowed,
    #[error("{len} bytes of immediate data exceed FirstBurstLength {max}")]
    ImmediateTooLong { len: u32, max: u32 },
    #[error("unsolicited Data-Out sent although InitialR2T=Yes or the command had the F bit set")]
    UnsolicitedNotAllowed,
    #[error("Data-Out DataSN {got} where {expected} was expected (ITT {itt:#x})")]
    DataSn { itt: u32, got: u32, expected: u32 },
    #[error("Data-Out for an unknown Target Transfer Tag {ttt:#x}")]
    UnknownTtt { ttt: u32 },
    #[error("Data-Out at offset {offset}+{len} lies outside the solicited range {start}+{range}")]
    OutOfRange {
        offset: u32,
        len: u32,
        start: u32,
        range: u32,
    },
    #[error("Data-Out at offset {offset} overlaps data already received")]
    Overlap { offset: u32 },
}

impl DataOutError {
    /// How the failed task is reported at ErrorRecoveryLevel 0: the task ends with
    /// CHECK CONDITION / ABORTED COMMAND and the connection lives on. A DataSN gap
    /// implies a lost PDU, which RFC 7143 treats as a digest error (section 7.8).
    pub fn sense(&self) -> Sense {
        let code = match self {
            DataOutError::DataSn { .. } => asc::PROTOCOL_SERVICE_CRC_ERROR,
            DataOutError::UnknownTtt { .. } => asc::INVALID_TARGET_PORT_TRANSFER_TAG,
            DataOutError::OutOfRange { .. } | DataOutError::Overlap { .. } => {
                asc::DATA_OFFSET_ERROR
            }
            DataOutError::ImmediateTooLong { .. } => asc::TOO_MUCH_WRITE_DATA,
            DataOutError::ImmediateNotAllowed | DataOutError::UnsolicitedNotAllowed => {
                asc::DATA_PHASE_ERROR
            }
        };
        Sense::new(SenseKey::AbortedCommand, code)
    }
}

/// An R2T the connection should send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    pub ttt: u32,
    pub r2t_sn: u32,
    pub offset: u32,
    pub length: u32,
}

#[derive(Debug)]
struct Sequence {
    ttt: u32,
    start: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// One write command's data, from the SCSI Command PDU to the last Data-Out.
#[derive(Debug)]
pub struct WriteCollector {
    itt: u32,
    edtl: u32,
    params: BurstParams,
    pieces: BTreeMap<u32, Bytes>,
    received: u32,
    /// The unsolicited Data-Out sequence still expected, if any.
    unsolicited: Option<Sequence>,
    /// Solicited sequences whose data is still arriving.
    outstanding: Vec<Sequence>,
    /// Where the next R2T starts.
    next_solicit: u32,
    next_r2t_sn: u32,
}

impl WriteCollector {
    /// Starts collecting for a command with expected length `edtl`, immediate data
    /// `immediate`, and the command's F bit (`final_`: no unsolicited Data-Out follows).
    pub fn new(
        itt: u32,
        edtl: u32,
        immediate: Bytes,
        final_: bool,
        params: BurstParams,
    ) -> Result<Self, DataOutError> {
        let imm = immediate.len() as u32;
        if imm > 0 && !params.immediate_data {
            return Err(DataOutError::ImmediateNotAllowed);
        }
        if imm > params.first_burst_length {
            return Err(DataOutError::ImmediateTooLong {
                len: imm,
                max: params.first_burst_length,
            });
        }
        let imm = imm.min(edtl);
        let mut pieces = BTreeMap::new();
        if imm > 0 {
            pieces.insert(0, immediate.slice(..imm as usize));
        }
        let unsolicited_end = params.first_burst_length.min(edtl);
        let unsolicited = if !final_ && !params.initial_r2t && unsolicited_end > imm {
            Some(Sequence {
                ttt: RESERVED_TAG,
                start: imm,
                len: unsolicited_end - imm,
                received: 0,
                next_data_sn: 0,
            })
        } else {
            None
        };
        let next_solicit = if unsolicited.is_some() {
            unsolicited_end
        } else {
            imm
        };
        Ok(Self {
            itt,
            edtl,
            params,
            pieces,
            received: imm,
            unsolicited,
            outstanding: Vec::new(),
            next_solicit,
            next_r2t_sn: 0,
        })
    }

    /// Every byte the command expects has arrived.
    pub fn is_complete(&self) -> bool {
        self.received >= self.edtl
    }

    /// R2Ts to send now: while MaxOutstandingR2T allows and data remains unsolicited.
    /// The unsolicited burst is waited for first, as most targets do.
    pub fn next_r2ts(&mut self, mut alloc_ttt: impl FnMut() -> u32) -> Vec<R2tRequest> {
        let mut out = Vec::new();
        if self.unsolicited.is_some() {
            return out;
        }
        while self.next_solicit < self.edtl
            && self.outstanding.len() < self.params.max_outstanding_r2t.max(1) as usize
        {
            let len = (self.edtl - self.next_solicit).min(self.params.max_burst_length);
            let seq = Sequence {
                ttt: alloc_ttt(),
                start: self.next_solicit,
                len,
                received: 0,
                next_data_sn: 0,
            };
            out.push(R2tRequest {
                ttt: seq.ttt,
                r2t_sn: self.next_r2t_sn,
                offset: seq.start,
                length: len,
            });
            self.next_r2t_sn += 1;
            self.next_solicit += len;
            self.outstanding.push(seq);
        }
        out
    }

    /// R2Ts sent so far (the ExpDataSN a write's SCSI Response reports).
    pub fn r2ts_sent(&self) -> u32 {
        self.next_r2t_sn
    }

    /// Accepts one Data-Out PDU for this command.
    pub fn accept(&mut self, d: &DataOut) -> Result<(), DataOutError> {
        let itt = self.itt;
        let seq = if d.ttt == RESERVED_TAG {
            self.unsolicited
                .as_mut()
                .ok_or(DataOutError::UnsolicitedNotAllowed)?
        } else {
            self.outstanding
                .iter_mut()
                .find(|s| s.ttt == d.ttt)
                .ok_or(DataOutError::UnknownTtt { ttt: d.ttt })?
        };
        if d.data_sn != seq.next_data_sn {
            return Err(DataOutError::DataSn {
                itt,
                got: d.data_sn,
                expected: seq.next_data_sn,
            });
        }
        let len = d.data.len() as u32;
        let end = d.buffer_offset as u64 + len as u64;
        if d.buffer_offset < seq.start || end > (seq.start + seq.len) as u64 {
            return Err(DataOutError::OutOfRange {
                offset: d.buffer_offset,
                len,
                start: seq.start,
                range: seq.len,
            });
        }
        let overlaps_prev = self
            .pieces
            .range(..=d.buffer_offset)
            .next_back()
            .is_some_and(|(o, b)| o + b.len() as u32 > d.buffer_offset);
        let overlaps_next = self
            .pieces
            .range(d.buffer_offset..)
            .next()
            .is_some_and(|(o, _)| (*o as u64) < end);
        if len > 0 && (overlaps_prev || overlaps_next) {
            return Err(DataOutError::Overlap {
                offset: d.buffer_offset,
            });
        }
        seq.next_data_sn += 1;
        seq.received += len;
        let done = seq.received >= seq.len || d.final_;
        if len > 0 {
            self.pieces.insert(d.buffer_offset, d.data.clone());
            self.received += len;
        }
        if done {
            if d.ttt == RESERVED_TAG {
                // A short unsolicited burst (F before FirstBurstLength) leaves a gap
                // that R2Ts must fill.
                let s = self.unsolicited.take().expect("checked above");
                self.next_solicit = s.start + s.received;
            } else {
                let ttt = d.ttt;
                if let Some(pos) = self.outstanding.iter().position(|s| s.ttt == ttt) {
                    let s = self.outstanding.remove(pos);
                    if s.received < s.len {
                        // The initiator ended the sequence early; ask again for the rest
                        // only if nothing beyond it was solicited yet.
                        if self.next_solicit == s.start + s.len && self.outstanding.is_empty() {
                            self.next_solicit = s.start + s.received;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The collected data, in offset order.
    pub fn into_data(self) -> SgList {
        let mut sg = SgList::new();
        for (_, b) in self.pieces {
            sg.push(b);
        }
        sg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> BurstParams {
        BurstParams {
            initial_r2t: false,
            immediate_data: true,
            first_burst_length: 1024,
            max_burst_length: 2048,
            max_outstanding_r2t: 1,
        }
    }

    fn dout(ttt: u32, sn: u32, off: u32, len: usize, fin: bool) -> DataOut {
        DataOut {
            final_: fin,
            ttt,
            data_sn: sn,
            buffer_offset: off,
            data: Bytes::from(vec![(off / 512) as u8; len]),
            ..Default::default()
        }
    }

    #[test]
    fn immediate_only_completes_at_once() {
        let c = WriteCollector::new(1, 512, Bytes::from(vec![1; 512]), true, params()).unwrap();
        assert!(c.is_complete());
        assert_eq!(c.into_data().len(), 512);
    }

    #[test]
    fn immediate_unsolicited_then_r2ts_honour_max_burst_and_outstanding() {
        let mut c =
            WriteCollector::new(1, 5120, Bytes::from(vec![0; 512]), false, params()).unwrap();
        let mut ttt = 100;
        // The unsolicited burst must come first.
        assert!(c.next_r2ts(|| 0).is_empty());
        c.accept(&dout(RESERVED_TAG, 0, 512, 512, true)).unwrap();
        let r = c.next_r2ts(|| {
            ttt += 1;
            ttt
        });
        assert_eq!(
            r,
            vec![R2tRequest {
                ttt: 101,
                r2t_sn: 0,
                offset: 1024,
                length: 2048
            }]
        );
        // MaxOutstandingR2T=1: nothing more until this sequence completes.
        assert!(c.next_r2ts(|| 999).is_empty());
        for i in 0..4 {
            c.accept(&dout(101, i, 1024 + i * 512, 512, i == 3))
                .unwrap();
        }
        let r = c.next_r2ts(|| 102);
        assert_eq!(r[0].offset, 3072);
        assert_eq!(r[0].length, 2048);
        assert_eq!(r[0].r2t_sn, 1);
        for i in 0..4 {
            c.accept(&dout(102, i, 3072 + i * 512, 512, i == 3))
                .unwrap();
        }
        assert!(c.is_complete());
        assert_eq!(c.r2ts_sent(), 2);
        let data = c.into_data();
        assert_eq!(data.len(), 5120);
    }

    #[test]
    fn initial_r2t_yes_solicits_everything() {
        let p = BurstParams {
            initial_r2t: true,
            immediate_data: false,
            ..params()
        };
        let mut c = WriteCollector::new(1, 1024, Bytes::new(), true, p).unwrap();
        let r = c.next_r2ts(|| 7);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].offset, r[0].length), (0, 1024));
        assert_eq!(
            c.accept(&dout(RESERVED_TAG, 0, 0, 512, false)),
            Err(DataOutError::UnsolicitedNotAllowed)
        );
    }

    #[test]
    fn wrong_datasn_is_an_error() {
        let p = BurstParams {
            initial_r2t: true,
            ..params()
        };
        let mut c = WriteCollector::new(9, 1024, Bytes::new(), true, p).unwrap();
        c.next_r2ts(|| 5);
        c.accept(&dout(5, 0, 0, 512, false)).unwrap();
        assert!(matches!(
            c.accept(&dout(5, 0, 512, 512, true)),
            Err(DataOutError::DataSn {
                got: 0,
                expected: 1,
                ..
            })
        ));
        let mut c = WriteCollector::new(9, 512, Bytes::new(), true, p).unwrap();
        c.next_r2ts(|| 5);
        assert!(c.accept(&dout(5, 27, 0, 512, true)).is_err());
    }

    #[test]
    fn data_outside_the_r2t_or_unknown_ttt_is_refused() {
        let p = BurstParams {
            initial_r2t: true,
            ..params()
        };
        let mut c = WriteCollector::new(9, 1024, Bytes::new(), true, p).unwrap();
        c.next_r2ts(|| 5);
        assert!(matches!(
            c.accept(&dout(5, 0, 1024, 512, true)),
            Err(DataOutError::OutOfRange { .. })
        ));
        assert_eq!(
            c.accept(&dout(6, 0, 0, 512, true)),
            Err(DataOutError::UnknownTtt { ttt: 6 })
        );
    }

    #[test]
    fn immediate_rules() {
        let p = BurstParams {
            immediate_data: false,
            ..params()
        };
        assert_eq!(
            WriteCollector::new(1, 512, Bytes::from(vec![0; 512]), true, p).unwrap_err(),
            DataOutError::ImmediateNotAllowed
        );
        assert!(matches!(
            WriteCollector::new(1, 4096, Bytes::from(vec![0; 2048]), true, params()),
            Err(DataOutError::ImmediateTooLong { .. })
        ));
    }

    #[test]
    fn immediate_data_beyond_edtl_is_truncated() {
        let c = WriteCollector::new(1, 0, Bytes::from(vec![0; 512]), true, params()).unwrap();
        assert!(c.is_complete());
        assert!(c.into_data().is_empty());
    }
}
