//! Framing ([`check`]) and decoding ([`parse`]) of received PDUs.
//!
//! The BHS is parsed with nom from the fixed layouts of RFC 7143 section 11. Every
//! length is taken from the header and re-checked against the frame, so any byte string
//! yields either a PDU or a [`PduError`], never a panic or an out-of-bounds slice.

use bytes::Bytes;
use nom::bytes::complete::take;
use nom::number::complete::{be_u16, be_u24, be_u32, be_u64, be_u8};
use nom::sequence::tuple;
use nom::IResult;

use super::digest::{self, DIGEST_LEN};
use super::opcode as op;
use super::*;

/// Where the pieces of a PDU lie, computed from its BHS alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    /// BHS plus AHS: what the header digest covers.
    pub header_len: usize,
    /// Header plus header digest: where the data segment starts.
    pub data_start: usize,
    /// DataSegmentLength, unpadded.
    pub data_len: usize,
    /// Whether a data digest follows the padded data segment.
    pub data_digest: bool,
    /// The whole PDU.
    pub total: usize,
}

impl Layout {
    /// `bhs` must hold at least [`BHS_LEN`] bytes (callers check).
    fn of(bhs: &[u8], digests: Digests) -> Layout {
        let ahs_len = usize::from(bhs[4]) * 4;
        let data_len = usize::from(bhs[5]) << 16 | usize::from(bhs[6]) << 8 | usize::from(bhs[7]);
        let header_len = BHS_LEN + ahs_len;
        let data_start = header_len + if digests.header { DIGEST_LEN } else { 0 };
        // RFC 7143 section 11.2.4: no data digest when there is no data segment.
        let data_digest = digests.data && data_len > 0;
        let total =
            data_start + data_len + pad_len(data_len) + if data_digest { DIGEST_LEN } else { 0 };
        Layout {
            header_len,
            data_start,
            data_len,
            data_digest,
            total,
        }
    }
}

fn bhs_copy(buf: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&buf[..BHS_LEN.min(buf.len())])
}

pub(super) fn check(
    buf: &[u8],
    digests: Digests,
    max_data: usize,
) -> Result<Option<usize>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let layout = Layout::of(buf, digests);
    if digests.header {
        // With header digests the length fields are only trustworthy once the digest
        // has been checked: a bit flip in DataSegmentLength must be reported as the
        // header digest error it is (no Reject, RFC 7143 section 7.8), not as an
        // oversize segment. Waiting costs at most 1020 AHS bytes + 4, so a hostile
        // length still cannot make us buffer much.
        if buf.len() < layout.data_start {
            return Ok(None);
        }
        if !digest::matches(
            &buf[..layout.header_len],
            &buf[layout.header_len..layout.data_start],
        ) {
            return Err(PduError::HeaderDigest);
        }
    }
    if layout.data_len > max_data {
        return Err(PduError::DataSegmentTooLong {
            len: layout.data_len,
            max: max_data,
            header: bhs_copy(buf),
        });
    }
    Ok((buf.len() >= layout.total).then_some(layout.total))
}

/// The fields every BHS shares (RFC 7143 section 11.2.1); bytes 20..48 are left to the
/// opcode-specific parsers.
struct Common<'a> {
    b0: u8,
    b1: u8,
    b2: u8,
    b3: u8,
    /// Bytes 8..16: LUN, or ISID+TSIH for login, or reserved.
    lun: u64,
    itt: u32,
    rest: &'a [u8],
}

fn common(i: &[u8]) -> IResult<&[u8], Common<'_>> {
    // TotalAHSLength and DataSegmentLength (bytes 4..8) were consumed by Layout::of.
    let (i, (b0, b1, b2, b3, _ahs, _dsl, lun, itt, rest)) = tuple((
        be_u8,
        be_u8,
        be_u8,
        be_u8,
        be_u8,
        be_u24,
        be_u64,
        be_u32,
        take(28usize),
    ))(i)?;
    Ok((
        i,
        Common {
            b0,
            b1,
            b2,
            b3,
            lun,
            itt,
            rest,
        },
    ))
}

/// Runs an opcode-specific parser over bytes 20..48. Those are always 28 bytes here, so
/// failure is impossible; it is still mapped to an error rather than unwrapped.
fn tail<'a, O>(
    c: &Common<'a>,
    bhs: &Bytes,
    mut p: impl FnMut(&'a [u8]) -> IResult<&'a [u8], O>,
) -> Result<O, PduError> {
    p(c.rest)
        .map(|(_, o)| o)
        .map_err(|_| invalid("truncated basic header segment", bhs))
}

fn invalid(reason: &'static str, bhs: &Bytes) -> PduError {
    PduError::InvalidField {
        reason,
        header: bhs.clone(),
    }
}

fn u32x7(i: &[u8]) -> IResult<&[u8], [u32; 7]> {
    let (i, (a, b, c, d, e, f, g)) =
        tuple((be_u32, be_u32, be_u32, be_u32, be_u32, be_u32, be_u32))(i)?;
    Ok((i, [a, b, c, d, e, f, g]))
}

/// The Additional Header Segments of a SCSI Command (RFC 7143 section 11.2.2).
#[derive(Default)]
struct Ahs<'a> {
    /// CDB bytes beyond the first 16 (Extended CDB AHS, type 1).
    ecdb: Option<&'a [u8]>,
    /// Bidirectional Read Expected Data Transfer Length (type 2).
    bidi: Option<u32>,
}

const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LEN: u8 = 2;

/// Walks the AHS list. Each AHS is AHSLength (2 bytes), AHSType (1 byte) and AHSLength
/// more bytes, padded to 4; the list must exactly fill TotalAHSLength or the PDU
/// boundaries the initiator meant are unknowable.
fn ahs<'a>(mut i: &'a [u8], bhs: &Bytes) -> Result<Ahs<'a>, PduError> {
    let mut out = Ahs::default();
    while !i.is_empty() {
        let hdr: IResult<&[u8], (u16, u8)> = tuple((be_u16, be_u8))(i);
        let Ok((body, (len, kind))) = hdr else {
            return Err(invalid("AHS length inconsistent with TotalAHSLength", bhs));
        };
        let len = usize::from(len);
        let padded = (3 + len).div_ceil(4) * 4 - 3;
        if padded > body.len() {
            return Err(invalid("AHS length inconsistent with TotalAHSLength", bhs));
        }
        let content = &body[..len];
        // AHSType bits 0-1 (the top two) are reserved; the code is the low six bits.
        match kind & 0x3f {
            AHS_EXTENDED_CDB => {
                // AHSLength = CDBLength - 15: one reserved byte, then at least one CDB
                // byte beyond the sixteen in the BHS (RFC 7143 section 11.2.2.3).
                if len < 2 {
                    return Err(invalid("Extended CDB AHS too short", bhs));
                }
                if out.ecdb.replace(&content[1..]).is_some() {
                    return Err(invalid("duplicate Extended CDB AHS", bhs));
                }
            }
            AHS_BIDI_READ_LEN => {
                // Fixed AHSLength 5: a reserved byte and a 32-bit length (11.2.2.4).
                if len != 5 {
                    return Err(invalid(
                        "Bidirectional Read Expected Data Transfer Length AHS has wrong length",
                        bhs,
                    ));
                }
                let v = u32::from_be_bytes([content[1], content[2], content[3], content[4]]);
                if out.bidi.replace(v).is_some() {
                    return Err(invalid(
                        "duplicate Bidirectional Read Expected Data Transfer Length AHS",
                        bhs,
                    ));
                }
            }
            // Reserved and vendor-specific types carry nothing we use; skipping them is
            // what "reserved" asks of a receiver.
            _ => {}
        }
        i = &body[padded..];
    }
    Ok(out)
}

/// Whether `opcode` is one of the 18 RFC 7143 opcodes.
pub(super) fn known_opcode(opcode: u8) -> bool {
    matches!(
        opcode,
        op::NOP_OUT
            | op::SCSI_COMMAND
            | op::TASK_MGMT_REQUEST
            | op::LOGIN_REQUEST
            | op::TEXT_REQUEST
            | op::DATA_OUT
            | op::LOGOUT_REQUEST
            | op::SNACK_REQUEST
            | op::NOP_IN
            | op::SCSI_RESPONSE
            | op::TASK_MGMT_RESPONSE
            | op::LOGIN_RESPONSE
            | op::TEXT_RESPONSE
            | op::DATA_IN
            | op::LOGOUT_RESPONSE
            | op::R2T
            | op::ASYNC_MESSAGE
            | op::REJECT
    )
}

/// `accept` decides which opcodes are welcome; it is consulted after the header digest
/// (a corrupt header says nothing about opcodes) and before anything else.
pub(super) fn parse(
    frame: Bytes,
    digests: Digests,
    accept: fn(u8) -> bool,
) -> Result<Pdu, PduError> {
    if frame.len() < BHS_LEN {
        return Err(PduError::InvalidField {
            reason: "PDU shorter than its basic header segment",
            header: frame,
        });
    }
    let bhs = frame.slice(..BHS_LEN);
    let layout = Layout::of(&frame, digests);
    // Checked here too, although check() already did, so parse() is safe on frames that
    // did not come through check() (captures, fuzzing); 48 bytes of CRC is cheap. It
    // comes before the length test because a corrupt header explains a bad length.
    if digests.header
        && frame.len() >= layout.data_start
        && !digest::matches(
            &frame[..layout.header_len],
            &frame[layout.header_len..layout.data_start],
        )
    {
        return Err(PduError::HeaderDigest);
    }
    if frame.len() != layout.total {
        return Err(invalid("PDU length does not match its header", &bhs));
    }
    let opcode = frame[0] & 0x3f;
    if !accept(opcode) || !known_opcode(opcode) {
        return Err(PduError::UnknownOpcode {
            opcode,
            header: bhs,
        });
    }
    let ahs = ahs(&frame[BHS_LEN..layout.header_len], &bhs)?;
    let data_end = layout.data_start + layout.data_len;
    let data = frame.slice(layout.data_start..data_end);
    let c = match common(&frame[..BHS_LEN]) {
        Ok((_, c)) => c,
        Err(_) => return Err(invalid("truncated basic header segment", &bhs)),
    };
    if layout.data_digest {
        let padded_end = data_end + pad_len(layout.data_len);
        if !digest::matches(
            &frame[layout.data_start..padded_end],
            &frame[padded_end..layout.total],
        ) {
            return Err(PduError::DataDigest {
                itt: c.itt,
                header: bhs,
            });
        }
    }
    let immediate = c.b0 & 0x40 != 0;
    let f = c.b1 & 0x80 != 0;
    let cont = c.b1 & 0x40 != 0;
    let itt = c.itt;
    let lun = c.lun;

    let pdu = match opcode {
        op::NOP_OUT => {
            let [ttt, cmd_sn, exp_stat_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::NopOut(NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
                data,
            })
        }
        op::SCSI_COMMAND => {
            let [edtl, cmd_sn, exp_stat_sn, ..] = tail(&c, &bhs, u32x7)?;
            let cdb = match ahs.ecdb {
                None => frame.slice(32..BHS_LEN),
                Some(ext) => {
                    let mut v = Vec::with_capacity(16 + ext.len());
                    v.extend_from_slice(&frame[32..BHS_LEN]);
                    v.extend_from_slice(ext);
                    Bytes::from(v)
                }
            };
            Pdu::ScsiCommand(ScsiCommand {
                immediate,
                final_: f,
                read: c.b1 & 0x40 != 0,
                write: c.b1 & 0x20 != 0,
                attr: c.b1 & 0x07,
                lun,
                itt,
                edtl,
                cmd_sn,
                exp_stat_sn,
                cdb,
                bidi_read_len: ahs.bidi,
                data,
            })
        }
        op::TASK_MGMT_REQUEST => {
            let [rtt, cmd_sn, exp_stat_sn, ref_cmd_sn, exp_data_sn, ..] = tail(&c, &bhs, u32x7)?;
            // Function codes outside 1..=8 are not rejected here: RFC 7143 section
            // 11.6.1 answers them with a Task Management Response "Function not
            // supported" (5), which the task manager can send.
            Pdu::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: c.b1 & 0x7f,
                lun,
                itt,
                rtt,
                cmd_sn,
                exp_stat_sn,
                ref_cmd_sn,
                exp_data_sn,
            })
        }
        op::LOGIN_REQUEST => {
            let (cid, _, cmd_sn, exp_stat_sn) =
                tail(&c, &bhs, tuple((be_u16, be_u16, be_u32, be_u32)))?;
            let (csg, nsg) = stages(c.b1, &bhs)?;
            let (isid, tsih) = isid_tsih(lun);
            Pdu::LoginRequest(LoginRequest {
                transit: f,
                cont,
                csg,
                nsg,
                version_max: c.b2,
                version_min: c.b3,
                isid,
                tsih,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
                data,
            })
        }
        op::TEXT_REQUEST => {
            let [ttt, cmd_sn, exp_stat_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::TextRequest(TextRequest {
                immediate,
                final_: f,
                cont,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
                data,
            })
        }
        op::DATA_OUT => {
            let [ttt, _, exp_stat_sn, _, data_sn, buffer_offset, _] = tail(&c, &bhs, u32x7)?;
            Pdu::DataOut(DataOut {
                final_: f,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset,
                data,
            })
        }
        op::LOGOUT_REQUEST => {
            let (cid, _, cmd_sn, exp_stat_sn) =
                tail(&c, &bhs, tuple((be_u16, be_u16, be_u32, be_u32)))?;
            Pdu::LogoutRequest(LogoutRequest {
                immediate,
                reason: c.b1 & 0x7f,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            })
        }
        op::SNACK_REQUEST => {
            let [ttt, _, exp_stat_sn, _, _, beg_run, run_length] = tail(&c, &bhs, u32x7)?;
            Pdu::SnackRequest(SnackRequest {
                kind: c.b1 & 0x0f,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                beg_run,
                run_length,
            })
        }
        op::NOP_IN => {
            let [ttt, stat_sn, exp_cmd_sn, max_cmd_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::NopIn(NopIn {
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data,
            })
        }
        op::SCSI_RESPONSE => {
            let [snack_tag, stat_sn, exp_cmd_sn, max_cmd_sn, exp_data_sn, bidi_residual, residual] =
                tail(&c, &bhs, u32x7)?;
            Pdu::ScsiResponse(ScsiResponse {
                bidi_overflow: c.b1 & 0x10 != 0,
                bidi_underflow: c.b1 & 0x08 != 0,
                overflow: c.b1 & 0x04 != 0,
                underflow: c.b1 & 0x02 != 0,
                response: c.b2,
                status: c.b3,
                itt,
                snack_tag,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                exp_data_sn,
                bidi_residual,
                residual,
                data,
            })
        }
        op::TASK_MGMT_RESPONSE => {
            let [_, stat_sn, exp_cmd_sn, max_cmd_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: c.b2,
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
            })
        }
        op::LOGIN_RESPONSE => {
            let (_, stat_sn, exp_cmd_sn, max_cmd_sn, status_class, status_detail) = tail(
                &c,
                &bhs,
                tuple((be_u32, be_u32, be_u32, be_u32, be_u8, be_u8)),
            )?;
            let (csg, nsg) = stages(c.b1, &bhs)?;
            let (isid, tsih) = isid_tsih(lun);
            Pdu::LoginResponse(LoginResponse {
                transit: f,
                cont,
                csg,
                nsg,
                version_max: c.b2,
                version_active: c.b3,
                isid,
                tsih,
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                status_class,
                status_detail,
                data,
            })
        }
        op::TEXT_RESPONSE => {
            let [ttt, stat_sn, exp_cmd_sn, max_cmd_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::TextResponse(TextResponse {
                final_: f,
                cont,
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data,
            })
        }
        op::DATA_IN => {
            let [ttt, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, buffer_offset, residual] =
                tail(&c, &bhs, u32x7)?;
            Pdu::DataIn(DataIn {
                final_: f,
                ack: c.b1 & 0x40 != 0,
                overflow: c.b1 & 0x04 != 0,
                underflow: c.b1 & 0x02 != 0,
                status: (c.b1 & 0x01 != 0).then_some(c.b3),
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn,
                buffer_offset,
                residual,
                data,
            })
        }
        op::LOGOUT_RESPONSE => {
            let (_, stat_sn, exp_cmd_sn, max_cmd_sn, _, time2wait, time2retain) = tail(
                &c,
                &bhs,
                tuple((be_u32, be_u32, be_u32, be_u32, be_u32, be_u16, be_u16)),
            )?;
            Pdu::LogoutResponse(LogoutResponse {
                response: c.b2,
                itt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                time2wait,
                time2retain,
            })
        }
        op::R2T => {
            let [ttt, stat_sn, exp_cmd_sn, max_cmd_sn, r2t_sn, buffer_offset, desired_length] =
                tail(&c, &bhs, u32x7)?;
            Pdu::R2t(R2t {
                lun,
                itt,
                ttt,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                r2t_sn,
                buffer_offset,
                desired_length,
            })
        }
        op::ASYNC_MESSAGE => {
            let (_, stat_sn, exp_cmd_sn, max_cmd_sn, event, vcode, param1, param2, param3) = tail(
                &c,
                &bhs,
                tuple((
                    be_u32, be_u32, be_u32, be_u32, be_u8, be_u8, be_u16, be_u16, be_u16,
                )),
            )?;
            Pdu::AsyncMessage(AsyncMessage {
                lun,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                event,
                vcode,
                param1,
                param2,
                param3,
                data,
            })
        }
        op::REJECT => {
            let [_, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn, ..] = tail(&c, &bhs, u32x7)?;
            Pdu::Reject(Reject {
                reason: c.b2,
                stat_sn,
                exp_cmd_sn,
                max_cmd_sn,
                data_sn,
                data,
            })
        }
        _ => {
            return Err(PduError::UnknownOpcode {
                opcode,
                header: bhs,
            })
        }
    };
    Ok(pdu)
}

/// Login stages from byte 1 (T C . . CSG NSG). Stage 2 is reserved (RFC 7143 section
/// 11.12.3), and NSG only counts when T is set; anything else about stage order is the
/// login state machine's business, answered with a Login Response, not a Reject.
fn stages(b1: u8, bhs: &Bytes) -> Result<(u8, u8), PduError> {
    let csg = (b1 >> 2) & 0x03;
    let nsg = b1 & 0x03;
    if csg == 2 {
        return Err(invalid("login CSG is the reserved stage 2", bhs));
    }
    if b1 & 0x80 != 0 && nsg == 2 {
        return Err(invalid("login NSG is the reserved stage 2", bhs));
    }
    Ok((csg, nsg))
}

/// ISID (bytes 8..14) and TSIH (bytes 14..16) share the LUN slot in login PDUs.
fn isid_tsih(w: u64) -> ([u8; 6], u16) {
    let b = w.to_be_bytes();
    ([b[0], b[1], b[2], b[3], b[4], b[5]], w as u16)
}
