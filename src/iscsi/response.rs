//! Turning a finished SCSI command into Data-In PDUs and a SCSI Response: splitting by
//! the initiator's MaxRecvDataSegmentLength, status phase-collapse and exact residuals
//! (RFC 7143 sections 11.4, 11.7). Pure; sequence numbers are stamped by the writer.

use super::pdu::{DataIn, Pdu, ScsiResponse, RESERVED_TAG};
use bytes::{BufMut, Bytes, BytesMut};

/// A finished command, as the transport knows it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub itt: u32,
    pub lun: u64,
    /// The initiator's Expected Data Transfer Length.
    pub edtl: u32,
    pub write: bool,
    pub status: u8,
    /// Data for the initiator (SCSI-level length, before EDTL truncation).
    pub data_in: Bytes,
    pub sense: Bytes,
    /// For writes: the SCSI-level Data-Out length (from the CDB).
    pub data_out_len: u32,
    /// For writes: the number of R2Ts sent (reported as ExpDataSN).
    pub r2ts: u32,
}

/// Largest Data-In segment and sequence the session allows.
#[derive(Debug, Clone, Copy)]
pub struct DataInLimits {
    pub max_segment: u32,
    pub max_burst: u32,
}

/// Residual flags and count for an expected length against what the command moved.
fn residual(expected: u32, actual: u32) -> (bool, bool, u32) {
    if actual > expected {
        (true, false, actual - expected)
    } else if actual < expected {
        (false, true, expected - actual)
    } else {
        (false, false, 0)
    }
}

/// Builds the PDUs that complete `f`, in send order.
pub fn complete(f: Finished, limits: DataInLimits) -> Vec<Pdu> {
    let mut out = Vec::new();
    let (overflow, underflow, residual) = if f.write {
        residual(f.edtl, f.data_out_len)
    } else {
        residual(f.edtl, f.data_in.len() as u32)
    };
    let data = if f.write {
        Bytes::new()
    } else {
        let n = f.data_in.len().min(f.edtl as usize);
        f.data_in.slice(..n)
    };
    // Status rides on the last Data-In only when there is no sense to carry.
    let collapse = !data.is_empty() && f.sense.is_empty();
    let seg = limits.max_segment.max(512) as usize;
    let burst = limits.max_burst.max(seg as u32) as usize;
    let mut offset = 0usize;
    let mut data_sn = 0u32;
    while offset < data.len() {
        let len = seg.min(data.len() - offset);
        let end = offset + len;
        let last = end == data.len();
        // F closes each MaxBurstLength sequence and the final PDU.
        let seq_end = last || end.is_multiple_of(burst);
        let status = (last && collapse).then_some(f.status);
        out.push(Pdu::DataIn(DataIn {
            final_: seq_end,
            status,
            overflow: status.is_some() && overflow,
            underflow: status.is_some() && underflow,
            residual: if status.is_some() { residual } else { 0 },
            lun: f.lun,
            itt: f.itt,
            ttt: RESERVED_TAG,
            data_sn,
            buffer_offset: offset as u32,
            data: data.slice(offset..end),
            ..Default::default()
        }));
        data_sn += 1;
        offset = end;
    }
    if !collapse {
        let sense_data = if f.sense.is_empty() {
            Bytes::new()
        } else {
            let mut b = BytesMut::with_capacity(2 + f.sense.len());
            b.put_u16(f.sense.len() as u16);
            b.extend_from_slice(&f.sense);
            b.freeze()
        };
        out.push(Pdu::ScsiResponse(ScsiResponse {
            overflow,
            underflow,
            residual,
            response: 0,
            status: f.status,
            itt: f.itt,
            exp_data_sn: if f.write { f.r2ts } else { data_sn },
            data: sense_data,
            ..Default::default()
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(data: usize, edtl: u32) -> Finished {
        Finished {
            itt: 7,
            lun: 0,
            edtl,
            write: false,
            status: 0,
            data_in: Bytes::from(vec![1u8; data]),
            sense: Bytes::new(),
            data_out_len: 0,
            r2ts: 0,
        }
    }

    const LIM: DataInLimits = DataInLimits {
        max_segment: 8192,
        max_burst: 16384,
    };

    #[test]
    fn read_splits_and_collapses_status() {
        let pdus = complete(fin(20000, 20000), LIM);
        assert_eq!(pdus.len(), 3);
        let Pdu::DataIn(last) = &pdus[2] else {
            panic!()
        };
        assert_eq!(last.status, Some(0));
        assert_eq!(last.data.len(), 20000 - 16384);
        assert_eq!(last.data_sn, 2);
        assert_eq!(last.buffer_offset, 16384);
        let Pdu::DataIn(second) = &pdus[1] else {
            panic!()
        };
        assert!(second.final_, "end of a MaxBurstLength sequence");
        assert_eq!(second.status, None);
    }

    #[test]
    fn short_read_reports_underflow() {
        let pdus = complete(fin(36, 255), LIM);
        let Pdu::DataIn(d) = &pdus[0] else { panic!() };
        assert!(d.underflow && !d.overflow);
        assert_eq!(d.residual, 219);
    }

    #[test]
    fn long_read_is_truncated_with_overflow() {
        let pdus = complete(fin(1024, 512), LIM);
        let Pdu::DataIn(d) = &pdus[0] else { panic!() };
        assert_eq!(d.data.len(), 512);
        assert!(d.overflow);
        assert_eq!(d.residual, 512);
    }

    #[test]
    fn check_condition_sends_separate_response_with_sense() {
        let mut f = fin(0, 512);
        f.status = 2;
        f.sense =
            Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0]);
        let pdus = complete(f, LIM);
        assert_eq!(pdus.len(), 1);
        let Pdu::ScsiResponse(r) = &pdus[0] else {
            panic!()
        };
        assert_eq!(r.status, 2);
        assert_eq!(&r.data[..2], &[0, 18]);
        assert!(r.underflow);
        assert_eq!(r.residual, 512);
    }

    #[test]
    fn write_residuals_compare_edtl_with_cdb_length() {
        let mut f = fin(0, 10000);
        f.write = true;
        f.data_out_len = 512;
        f.r2ts = 1;
        let Pdu::ScsiResponse(r) = &complete(f.clone(), LIM)[0] else {
            panic!()
        };
        assert!(r.underflow);
        assert_eq!(r.residual, 10000 - 512);
        assert_eq!(r.exp_data_sn, 1);
        f.edtl = 200;
        let Pdu::ScsiResponse(r) = &complete(f, LIM)[0] else {
            panic!()
        };
        assert!(r.overflow);
        assert_eq!(r.residual, 312);
    }
}
