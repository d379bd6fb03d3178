//! Encoding of PDUs into [`Encoded`] pieces (RFC 7143 section 11).

use bytes::{BufMut, Bytes, BytesMut};

use super::digest::{self, DIGEST_LEN};
use super::opcode as op;
use super::*;

/// Largest value of the 24-bit DataSegmentLength field.
pub const MAX_DATA_SEGMENT: usize = 0x00ff_ffff;

/// A BHS under construction; offsets are those of the RFC's byte tables.
struct Bhs([u8; BHS_LEN]);

impl Bhs {
    fn new(opcode: u8, immediate: bool, b1: u8) -> Bhs {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode | if immediate { 0x40 } else { 0 };
        b[1] = b1;
        Bhs(b)
    }
    fn u8(&mut self, off: usize, v: u8) -> &mut Self {
        self.0[off] = v;
        self
    }
    fn u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_be_bytes());
        self
    }
    /// The login PDUs' ISID and TSIH, in the slot other PDUs use for the LUN.
    fn isid_tsih(&mut self, isid: &[u8; 6], tsih: u16) -> &mut Self {
        self.0[8..14].copy_from_slice(isid);
        self.u16(14, tsih)
    }
}

fn flag(b: bool, bit: u8) -> u8 {
    if b {
        bit
    } else {
        0
    }
}

/// Byte 1 of both login PDUs: T C . . CSG(2) NSG(2).
fn login_flags(transit: bool, cont: bool, csg: u8, nsg: u8) -> u8 {
    flag(transit, 0x80) | flag(cont, 0x40) | (csg & 0x03) << 2 | (nsg & 0x03)
}

/// AHS list for a SCSI Command: Extended CDB first (as Linux and RFC 7143's examples
/// order them), then the bidirectional read length.
fn scsi_ahs(cmd: &ScsiCommand) -> Vec<u8> {
    let mut ahs = Vec::new();
    if cmd.cdb.len() > 16 {
        let ext = &cmd.cdb[16..];
        // AHSLength = CDBLength - 15: the reserved byte plus the extra CDB bytes.
        let len = ext.len() + 1;
        ahs.extend_from_slice(&(len as u16).to_be_bytes());
        ahs.push(1);
        ahs.push(0);
        ahs.extend_from_slice(ext);
        ahs.resize(ahs.len() + pad_len(ahs.len()), 0);
    }
    if let Some(len) = cmd.bidi_read_len {
        ahs.extend_from_slice(&[0, 5, 2, 0]);
        ahs.extend_from_slice(&len.to_be_bytes());
    }
    ahs
}

pub(super) fn encode(pdu: &Pdu, digests: Digests) -> Encoded {
    let mut ahs = Vec::new();
    let (mut bhs, data) = match pdu {
        Pdu::NopOut(p) => {
            let mut b = Bhs::new(op::NOP_OUT, p.immediate, 0x80);
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn);
            (b, &p.data)
        }
        Pdu::ScsiCommand(p) => {
            let b1 =
                flag(p.final_, 0x80) | flag(p.read, 0x40) | flag(p.write, 0x20) | (p.attr & 0x07);
            let mut b = Bhs::new(op::SCSI_COMMAND, p.immediate, b1);
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.edtl)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn);
            let n = p.cdb.len().min(16);
            b.0[32..32 + n].copy_from_slice(&p.cdb[..n]);
            ahs = scsi_ahs(p);
            (b, &p.data)
        }
        Pdu::TaskMgmtRequest(p) => {
            let mut b = Bhs::new(
                op::TASK_MGMT_REQUEST,
                p.immediate,
                0x80 | (p.function & 0x7f),
            );
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.rtt)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn)
                .u32(32, p.ref_cmd_sn)
                .u32(36, p.exp_data_sn);
            (b, &Bytes::new())
        }
        Pdu::LoginRequest(p) => {
            // The I bit is always 1 on a Login Request (RFC 7143 section 11.12).
            let mut b = Bhs::new(
                op::LOGIN_REQUEST,
                true,
                login_flags(p.transit, p.cont, p.csg, p.nsg),
            );
            b.u8(2, p.version_max)
                .u8(3, p.version_min)
                .isid_tsih(&p.isid, p.tsih)
                .u32(16, p.itt)
                .u16(20, p.cid)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn);
            (b, &p.data)
        }
        Pdu::TextRequest(p) => {
            let mut b = Bhs::new(
                op::TEXT_REQUEST,
                p.immediate,
                flag(p.final_, 0x80) | flag(p.cont, 0x40),
            );
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn);
            (b, &p.data)
        }
        Pdu::DataOut(p) => {
            let mut b = Bhs::new(op::DATA_OUT, false, flag(p.final_, 0x80));
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(28, p.exp_stat_sn)
                .u32(36, p.data_sn)
                .u32(40, p.buffer_offset);
            (b, &p.data)
        }
        Pdu::LogoutRequest(p) => {
            let mut b = Bhs::new(op::LOGOUT_REQUEST, p.immediate, 0x80 | (p.reason & 0x7f));
            b.u32(16, p.itt)
                .u16(20, p.cid)
                .u32(24, p.cmd_sn)
                .u32(28, p.exp_stat_sn);
            (b, &Bytes::new())
        }
        Pdu::SnackRequest(p) => {
            let mut b = Bhs::new(op::SNACK_REQUEST, false, 0x80 | (p.kind & 0x0f));
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(28, p.exp_stat_sn)
                .u32(40, p.beg_run)
                .u32(44, p.run_length);
            (b, &Bytes::new())
        }
        Pdu::NopIn(p) => {
            let mut b = Bhs::new(op::NOP_IN, false, 0x80);
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn);
            (b, &p.data)
        }
        Pdu::ScsiResponse(p) => {
            let b1 = 0x80
                | flag(p.bidi_overflow, 0x10)
                | flag(p.bidi_underflow, 0x08)
                | flag(p.overflow, 0x04)
                | flag(p.underflow, 0x02);
            let mut b = Bhs::new(op::SCSI_RESPONSE, false, b1);
            b.u8(2, p.response)
                .u8(3, p.status)
                .u32(16, p.itt)
                .u32(20, p.snack_tag)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u32(36, p.exp_data_sn)
                .u32(40, p.bidi_residual)
                .u32(44, p.residual);
            (b, &p.data)
        }
        Pdu::TaskMgmtResponse(p) => {
            let mut b = Bhs::new(op::TASK_MGMT_RESPONSE, false, 0x80);
            b.u8(2, p.response)
                .u32(16, p.itt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn);
            (b, &Bytes::new())
        }
        Pdu::LoginResponse(p) => {
            let mut b = Bhs::new(
                op::LOGIN_RESPONSE,
                false,
                login_flags(p.transit, p.cont, p.csg, p.nsg),
            );
            b.u8(2, p.version_max)
                .u8(3, p.version_active)
                .isid_tsih(&p.isid, p.tsih)
                .u32(16, p.itt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u8(36, p.status_class)
                .u8(37, p.status_detail);
            (b, &p.data)
        }
        Pdu::TextResponse(p) => {
            let mut b = Bhs::new(
                op::TEXT_RESPONSE,
                false,
                flag(p.final_, 0x80) | flag(p.cont, 0x40),
            );
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn);
            (b, &p.data)
        }
        Pdu::DataIn(p) => {
            let b1 = flag(p.final_, 0x80)
                | flag(p.ack, 0x40)
                | flag(p.overflow, 0x04)
                | flag(p.underflow, 0x02)
                | flag(p.status.is_some(), 0x01);
            let mut b = Bhs::new(op::DATA_IN, false, b1);
            // StatSN and Status are reserved unless the S bit carries status.
            if let Some(status) = p.status {
                b.u8(3, status).u32(24, p.stat_sn);
            }
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u32(36, p.data_sn)
                .u32(40, p.buffer_offset)
                .u32(44, p.residual);
            (b, &p.data)
        }
        Pdu::LogoutResponse(p) => {
            let mut b = Bhs::new(op::LOGOUT_RESPONSE, false, 0x80);
            b.u8(2, p.response)
                .u32(16, p.itt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u16(40, p.time2wait)
                .u16(42, p.time2retain);
            (b, &Bytes::new())
        }
        Pdu::R2t(p) => {
            let mut b = Bhs::new(op::R2T, false, 0x80);
            b.u64(8, p.lun)
                .u32(16, p.itt)
                .u32(20, p.ttt)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u32(36, p.r2t_sn)
                .u32(40, p.buffer_offset)
                .u32(44, p.desired_length);
            (b, &Bytes::new())
        }
        Pdu::AsyncMessage(p) => {
            let mut b = Bhs::new(op::ASYNC_MESSAGE, false, 0x80);
            b.u64(8, p.lun)
                .u32(16, RESERVED_TAG)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u8(36, p.event)
                .u8(37, p.vcode)
                .u16(38, p.param1)
                .u16(40, p.param2)
                .u16(42, p.param3);
            (b, &p.data)
        }
        Pdu::Reject(p) => {
            let mut b = Bhs::new(op::REJECT, false, 0x80);
            b.u8(2, p.reason)
                .u32(16, RESERVED_TAG)
                .u32(24, p.stat_sn)
                .u32(28, p.exp_cmd_sn)
                .u32(32, p.max_cmd_sn)
                .u32(36, p.data_sn);
            (b, &p.data)
        }
    };

    // Callers bound data by MaxRecvDataSegmentLength (at most 2^24 - 1 by RFC 7143
    // section 13.12), so this only fires on a caller bug; masking keeps release builds
    // from panicking but would produce a wrong frame.
    debug_assert!(
        data.len() <= MAX_DATA_SEGMENT,
        "data segment too long for the 24-bit length field"
    );
    debug_assert!(ahs.len() <= 255 * 4, "AHS too long for TotalAHSLength");
    let dsl = (data.len() & MAX_DATA_SEGMENT) as u32;
    bhs.u32(4, dsl).u8(4, (ahs.len() / 4) as u8);

    let header_len = BHS_LEN + ahs.len();
    let mut header = BytesMut::with_capacity(header_len + DIGEST_LEN);
    header.put_slice(&bhs.0);
    header.put_slice(&ahs);
    if digests.header {
        let d = digest::header(&header);
        header.put_slice(&d);
    }

    let mut trailer = BytesMut::new();
    if !data.is_empty() {
        trailer.put_bytes(0, pad_len(data.len()));
        if digests.data {
            trailer.put_slice(&digest::data(data));
        }
    }

    Encoded {
        header: header.freeze(),
        data: data.clone(),
        trailer: trailer.freeze(),
    }
}
