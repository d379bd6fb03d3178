//! The iSCSI wire codec (RFC 7143 section 11): pure functions over bytes.
//!
//! A connection first asks [`check`] whether a whole PDU is buffered, then hands the
//! frame to [`parse`]; outgoing PDUs are turned into header, data and trailer pieces by
//! [`Pdu::encode`] so payloads are written without being copied. Nothing here does
//! I/O, so it can be fuzzed and tested on captured bytes.

mod decode;
pub mod digest;
mod encode;
pub mod serial;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use encode::MAX_DATA_SEGMENT;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Which optional CRC32C digests are in force on a connection (negotiated at login).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Opcodes (RFC 7143 section 11.1.1).
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    pub const LOGIN_REQUEST: u8 = 0x03;
    pub const TEXT_REQUEST: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQUEST: u8 = 0x06;
    pub const SNACK_REQUEST: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    pub const LOGIN_RESPONSE: u8 = 0x23;
    pub const TEXT_RESPONSE: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MESSAGE: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;

    /// Whether an initiator may send `opcode` (RFC 7143 section 11.1.1): the target
    /// answers anything else with Reject reason 0x05.
    pub fn is_initiator(opcode: u8) -> bool {
        matches!(
            opcode,
            NOP_OUT
                | SCSI_COMMAND
                | TASK_MGMT_REQUEST
                | LOGIN_REQUEST
                | TEXT_REQUEST
                | DATA_OUT
                | LOGOUT_REQUEST
                | SNACK_REQUEST
        )
    }
}

/// Reject reasons (RFC 7143 section 11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const NEGOTIATION_RESET: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Task management function codes (RFC 7143 section 11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Task management responses (RFC 7143 section 11.6.1).
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// Unassigned Initiator/Target Task Tag.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Every PDU of RFC 7143. Initiator PDUs carry `immediate` (the I bit) where the RFC
/// defines it. `lun` is the raw 8-byte LUN field, big-endian, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out PDUs follow.
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (0 untagged, 1 simple, 2 ordered, 3 head of queue, 4 ACA).
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The whole CDB: the 16 bytes of the BHS followed by any Extended CDB AHS.
    pub cdb: Bytes,
    /// Bidirectional Read Expected Data Transfer Length AHS, when present.
    pub bidi_read_len: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    /// Referenced Task Tag.
    pub rtt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub cont: bool,
    /// Current stage (0 security, 1 operational, 3 full feature).
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close session, 1 close connection, 2 remove connection for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnackRequest {
    /// Low 4 bits of byte 1: 0 Data/R2T, 1 Status, 2 DataACK, 3 R-Data.
    pub kind: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI response code (0 command completed at target).
    pub response: u8,
    /// SCSI status.
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
    /// Data segment: SenseLength (2 bytes, big-endian) followed by sense data, or empty.
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub cont: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_: bool,
    pub cont: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_: bool,
    /// A bit (only with ERL > 0).
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit set and SCSI status carried (phase collapse) when `Some`.
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    /// Only meaningful when `status` is `Some`; encoded as 0 otherwise.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// 0 SCSI async event, 1 logout request, 2 dropping connection, 3 dropping all
    /// connections, 4 request parameter negotiation, 255 vendor specific.
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    /// The complete header (BHS) of the rejected PDU.
    pub data: Bytes,
}

/// An outgoing PDU in three pieces, written in order with a vectored write so the data
/// segment is not copied: header (BHS, AHS, header digest), data segment, trailer
/// (padding to 4 bytes and data digest; empty when there is no data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub header: Bytes,
    pub data: Bytes,
    pub trailer: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.header.len() + self.data.len() + self.trailer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The PDU as one contiguous buffer (tests, captures).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.header);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.trailer);
        v
    }
}

/// What is wrong with a received PDU, and so what the connection must do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The header digest did not match: the PDU boundary can no longer be trusted, so
    /// the connection is dropped (RFC 7143 section 7.8).
    #[error("header digest mismatch: the initiator's PDU was corrupted in transit; the connection is dropped")]
    HeaderDigest,
    /// The data digest did not match: answer with a Reject (reason 0x02) carrying
    /// `header`, discard the PDU.
    #[error("data digest mismatch on a PDU with ITT {itt:#x}: it was discarded and rejected")]
    DataDigest { itt: u32, header: Bytes },
    /// The opcode is not one an initiator may send: Reject reason 0x05.
    #[error("opcode {opcode:#04x} is not an initiator opcode: rejected as not supported")]
    UnknownOpcode { opcode: u8, header: Bytes },
    /// A field holds a value the RFC forbids: Reject reason 0x09.
    #[error("invalid PDU field: {reason}")]
    InvalidField { reason: &'static str, header: Bytes },
    /// The data segment is longer than we allow to be received: protocol error, the
    /// connection is dropped after a Reject (reason 0x04).
    #[error("data segment of {len} bytes exceeds the negotiated MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        len: usize,
        max: usize,
        header: Bytes,
    },
}

impl PduError {
    /// The Reject reason code to send for this error, if any.
    pub fn reject_reason(&self) -> Option<u8> {
        match self {
            // No Reject: the header that would go in it cannot be trusted.
            PduError::HeaderDigest => None,
            PduError::DataDigest { .. } => Some(reject_reason::DATA_DIGEST_ERROR),
            PduError::UnknownOpcode { .. } => Some(reject_reason::COMMAND_NOT_SUPPORTED),
            PduError::InvalidField { .. } => Some(reject_reason::INVALID_PDU_FIELD),
            PduError::DataSegmentTooLong { .. } => Some(reject_reason::PROTOCOL_ERROR),
        }
    }

    /// The rejected header (for the Reject's data segment), if known.
    pub fn header(&self) -> Option<&Bytes> {
        match self {
            PduError::HeaderDigest => None,
            PduError::DataDigest { header, .. }
            | PduError::UnknownOpcode { header, .. }
            | PduError::InvalidField { header, .. }
            | PduError::DataSegmentTooLong { header, .. } => Some(header),
        }
    }

    /// Whether the connection must be closed after handling this error.
    pub fn fatal(&self) -> bool {
        // After either of these the next PDU boundary is unknown (a corrupt header, or a
        // data segment we refuse to read past), so the byte stream is lost.
        matches!(
            self,
            PduError::HeaderDigest | PduError::DataSegmentTooLong { .. }
        )
    }
}

/// Checks whether `buf` starts with a complete PDU. Returns its total length (BHS, AHS,
/// digests, data, padding) when it is complete, `Ok(None)` when more bytes are needed.
/// Fails early, from the BHS alone, when the data segment exceeds `max_data` (so a
/// hostile length never makes us buffer gigabytes), or the header digest is wrong.
///
/// With header digests in force, the digest is verified before the length is trusted,
/// so `check` may wait for up to TotalAHSLength + 4 bytes past the BHS before reporting
/// [`PduError::DataSegmentTooLong`]; a corrupted length is reported as
/// [`PduError::HeaderDigest`] instead. The data digest is left to [`parse`], whose
/// error can name the task.
pub fn check(buf: &[u8], digests: Digests, max_data: usize) -> Result<Option<usize>, PduError> {
    decode::check(buf, digests, max_data)
}

/// Parses one complete PDU (as delimited by [`check`]). `frame` is sliced, not copied:
/// the returned data segments share its storage.
///
/// All 18 opcodes are decoded, so an in-crate initiator and tests can read the target's
/// replies; a target must use [`parse_initiator`] (or [`opcode::is_initiator`]) so
/// that an initiator sending a target opcode is rejected. `frame` must be exactly one
/// PDU: a length disagreeing with the header is an [`PduError::InvalidField`]. Never
/// panics, whatever the bytes.
pub fn parse(frame: Bytes, digests: Digests) -> Result<Pdu, PduError> {
    decode::parse(frame, digests, decode::known_opcode)
}

/// [`parse`] for the target side: opcodes an initiator may not send are
/// [`PduError::UnknownOpcode`] (Reject reason 0x05), as RFC 7143 section 11.17.1 asks.
pub fn parse_initiator(frame: Bytes, digests: Digests) -> Result<Pdu, PduError> {
    decode::parse(frame, digests, opcode::is_initiator)
}

/// Number of zero bytes that pad a segment of `len` bytes to a 4-byte boundary.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        match self {
            Pdu::NopOut(_) => opcode::NOP_OUT,
            Pdu::ScsiCommand(_) => opcode::SCSI_COMMAND,
            Pdu::TaskMgmtRequest(_) => opcode::TASK_MGMT_REQUEST,
            Pdu::LoginRequest(_) => opcode::LOGIN_REQUEST,
            Pdu::TextRequest(_) => opcode::TEXT_REQUEST,
            Pdu::DataOut(_) => opcode::DATA_OUT,
            Pdu::LogoutRequest(_) => opcode::LOGOUT_REQUEST,
            Pdu::SnackRequest(_) => opcode::SNACK_REQUEST,
            Pdu::NopIn(_) => opcode::NOP_IN,
            Pdu::ScsiResponse(_) => opcode::SCSI_RESPONSE,
            Pdu::TaskMgmtResponse(_) => opcode::TASK_MGMT_RESPONSE,
            Pdu::LoginResponse(_) => opcode::LOGIN_RESPONSE,
            Pdu::TextResponse(_) => opcode::TEXT_RESPONSE,
            Pdu::DataIn(_) => opcode::DATA_IN,
            Pdu::LogoutResponse(_) => opcode::LOGOUT_RESPONSE,
            Pdu::R2t(_) => opcode::R2T,
            Pdu::AsyncMessage(_) => opcode::ASYNC_MESSAGE,
            Pdu::Reject(_) => opcode::REJECT,
        }
    }

    /// The Initiator Task Tag, where the PDU has one.
    ///
    /// Async Message and Reject carry the reserved tag 0xffffffff in that slot (a
    /// Reject names its task only inside the rejected header), so they have none.
    pub fn itt(&self) -> Option<u32> {
        Some(match self {
            Pdu::NopOut(p) => p.itt,
            Pdu::ScsiCommand(p) => p.itt,
            Pdu::TaskMgmtRequest(p) => p.itt,
            Pdu::LoginRequest(p) => p.itt,
            Pdu::TextRequest(p) => p.itt,
            Pdu::DataOut(p) => p.itt,
            Pdu::LogoutRequest(p) => p.itt,
            Pdu::SnackRequest(p) => p.itt,
            Pdu::NopIn(p) => p.itt,
            Pdu::ScsiResponse(p) => p.itt,
            Pdu::TaskMgmtResponse(p) => p.itt,
            Pdu::LoginResponse(p) => p.itt,
            Pdu::TextResponse(p) => p.itt,
            Pdu::DataIn(p) => p.itt,
            Pdu::LogoutResponse(p) => p.itt,
            Pdu::R2t(p) => p.itt,
            Pdu::AsyncMessage(_) | Pdu::Reject(_) => return None,
        })
    }

    /// Encodes the PDU for sending with the given digests in force.
    ///
    /// Fields are written exactly as given (e.g. a Data-In with status but no F bit is
    /// not corrected): protocol rules are the caller's, this only lays out bytes. A CDB
    /// shorter than 16 bytes is zero-padded in the BHS; a longer one adds an Extended
    /// CDB AHS. The data segment must fit the 24-bit length field.
    pub fn encode(&self, digests: Digests) -> Encoded {
        encode::encode(self, digests)
    }
}
