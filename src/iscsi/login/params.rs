//! What the target is willing to negotiate ([`Limits`]) and what a login ended up with
//! ([`SessionParams`]).

use super::SessionType;

/// What the target offers/accepts; from config. Each field takes part in the RFC 7143
/// result function of its key (min, max, OR, AND), so e.g. `max_burst_length` is the
/// most we accept and the session gets the smaller of it and the initiator's offer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Declared to the initiator: the largest data segment we accept (512..2^24-1).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u16,
    pub max_connections: u16,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    /// Our preference for InitialR2T (result is the OR of both sides).
    pub initial_r2t: bool,
    /// Our preference for ImmediateData (result is the AND of both sides).
    pub immediate_data: bool,
    pub error_recovery_level: u8,
    /// Whether CRC32C may be chosen for HeaderDigest (None is always acceptable).
    pub allow_header_digest: bool,
    /// Whether CRC32C may be chosen for DataDigest (None is always acceptable).
    pub allow_data_digest: bool,
}

impl Default for Limits {
    /// Generous values that suit QEMU, open-iscsi and ESXi: large bursts, unsolicited
    /// data allowed (InitialR2T=No, ImmediateData=Yes) and ERL 0, which is all we
    /// implement.
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            initial_r2t: false,
            immediate_data: true,
            error_recovery_level: 0,
            allow_header_digest: true,
            allow_data_digest: true,
        }
    }
}

/// The result of a successful login: every operational parameter of the session/connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// largest data segment WE may send (declared by initiator; default 8192)
    pub initiator_max_recv_data_segment_length: u32,
    /// largest data segment we accept (declared by us)
    pub target_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub error_recovery_level: u8,
    pub max_connections: u16,
}

/// RFC 7143 section 13 defaults, which apply to every key the initiator did not send
/// (we never propose keys ourselves, so an unsent key keeps its default).
pub mod defaults {
    pub const MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
    pub const MAX_BURST_LENGTH: u32 = 262_144;
    pub const FIRST_BURST_LENGTH: u32 = 65_536;
    pub const MAX_OUTSTANDING_R2T: u16 = 1;
    pub const MAX_CONNECTIONS: u16 = 1;
    pub const DEFAULT_TIME2WAIT: u16 = 2;
    pub const DEFAULT_TIME2RETAIN: u16 = 20;
    pub const INITIAL_R2T: bool = true;
    pub const IMMEDIATE_DATA: bool = true;
    pub const DATA_PDU_IN_ORDER: bool = true;
    pub const DATA_SEQUENCE_IN_ORDER: bool = true;
    pub const ERROR_RECOVERY_LEVEL: u8 = 0;
}
