//! Login phase: security and operational negotiation (RFC 7143 sections 6, 7, 12, 13).
//!
//! Everything here is pure: the connection layer feeds Login Request PDUs to a
//! [`LoginMachine`] and sends back the [`LoginStep::response`] it gets, after filling
//! in TSIH and the sequence numbers. Which targets exist and who may use them comes
//! from a [`TargetDirectory`], so the same code serves config- and MDM-driven setups.
//!
//! Modules: [`params`] (what is negotiated and its result), [`keys`] (the per-key
//! negotiation table), [`chap`] (CHAP authentication), [`machine`] (the stage state
//! machine), [`discovery`] (Text Requests in full feature phase, e.g. SendTargets).

pub mod chap;
pub mod discovery;
pub mod keys;
pub mod machine;
pub mod params;

#[cfg(test)]
mod testutil;

pub use discovery::{text_negotiate, text_request, TextOutcome};
pub use machine::{LoginMachine, LoginStep, StepOutcome};
pub use params::{Limits, SessionParams};

/// The kind of session the initiator asked for (key `SessionType`, default Normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// CHAP credentials configured for a target (or for discovery).
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecrets {
    /// The name the initiator must present in `CHAP_N`.
    pub username: String,
    /// The secret the initiator proves knowledge of.
    pub secret: String,
    /// mutual CHAP: what the target answers with
    pub mutual: Option<(String, String)>,
}

/// Secrets never reach a log: Debug shows the usernames only.
impl std::fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecrets")
            .field("username", &self.username)
            .field("mutual_username", &self.mutual.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// The answer of a [`TargetDirectory`] to "may this initiator log in to this target".
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The target exists and the initiator may use it, after CHAP if `chap` is set.
    Found {
        chap: Option<ChapSecrets>,
    },
    NotFound,
    NotAuthorized,
}

/// One entry of a SendTargets answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTarget {
    pub name: String,
    /// Like "127.0.0.1:3260,1" or "[::1]:3260,1" (address, port, portal group tag).
    pub addresses: Vec<String>,
}

/// The target side's view of which targets exist and who may log in (implemented by the
/// server; config-driven now, MDM-driven later).
pub trait TargetDirectory: Send + Sync {
    fn lookup(&self, target_name: &str, initiator_name: &str) -> Lookup;
    fn target_alias(&self, target_name: &str) -> Option<String>;
    fn portal_group_tag(&self) -> u16;
    /// Targets this initiator may see; `which` is None for "All", Some(name) for a named target.
    fn send_targets(&self, initiator_name: &str, which: Option<&str>) -> Vec<SendTarget>;
    /// CHAP required for discovery sessions, if any.
    fn discovery_chap(&self) -> Option<ChapSecrets>;
}

/// Login status class and detail, as one `u16` (class << 8 | detail), RFC 7143 11.13.5.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const TARGET_MOVED_TEMPORARILY: u16 = 0x0101;
    pub const TARGET_MOVED_PERMANENTLY: u16 = 0x0102;
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTHENTICATION_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const TARGET_REMOVED: u16 = 0x0204;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const TOO_MANY_CONNECTIONS: u16 = 0x0206;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const CANT_INCLUDE_IN_SESSION: u16 = 0x0208;
    pub const SESSION_TYPE_NOT_SUPPORTED: u16 = 0x0209;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    pub const INVALID_DURING_LOGIN: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
    pub const SERVICE_UNAVAILABLE: u16 = 0x0301;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

/// Why a login failed. Each variant maps to one login status ([`LoginError::status`]);
/// the message is logged on the target and says what the administrator can check.
/// Messages never contain CHAP secrets or responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("initiator supports only iSCSI versions {min}..={max}; we speak version 0 (RFC 7143)")]
    UnsupportedVersion { min: u8, max: u8 },
    #[error("malformed login key text: {0}")]
    BadText(#[from] crate::iscsi::text::TextError),
    #[error("the first login request lacks {0}; the initiator is misconfigured")]
    MissingParameter(&'static str),
    #[error("initiator requested unknown target {target:?}; check the target name in the initiator's configuration")]
    TargetNotFound { target: String },
    #[error("initiator {initiator:?} is not allowed to access target {target:?}; add it to the target's ACL if intended")]
    NotAuthorized { initiator: String, target: String },
    #[error("unsupported SessionType {0:?} (only Normal and Discovery exist)")]
    BadSessionType(String),
    #[error("the login tried to add a connection to (or reinstate) session TSIH {0:#06x}; multiple connections per session are not supported")]
    SessionDoesNotExist(u16),
    #[error("authentication failed: {0}")]
    Auth(#[from] chap::AuthError),
    #[error("login protocol violation by the initiator: {0}")]
    Protocol(String),
    #[error("key {0:?} was sent more than once during login (RFC 7143 section 6.2 forbids renegotiation)")]
    DuplicateKey(String),
    #[error("the login key text exceeded {0} bytes; the initiator is misbehaving")]
    TextTooLong(usize),
    #[error("the login already failed; no further requests are processed on this connection")]
    AlreadyFailed(u16),
}

impl LoginError {
    /// The login status (class << 8 | detail) this failure is reported with.
    pub fn status(&self) -> u16 {
        match self {
            LoginError::UnsupportedVersion { .. } => status::UNSUPPORTED_VERSION,
            LoginError::BadText(_) | LoginError::Protocol(_) | LoginError::DuplicateKey(_) => {
                status::INITIATOR_ERROR
            }
            LoginError::MissingParameter(_) => status::MISSING_PARAMETER,
            LoginError::TargetNotFound { .. } => status::NOT_FOUND,
            LoginError::NotAuthorized { .. } => status::AUTHORIZATION_FAILURE,
            LoginError::BadSessionType(_) => status::SESSION_TYPE_NOT_SUPPORTED,
            LoginError::SessionDoesNotExist(_) => status::SESSION_DOES_NOT_EXIST,
            LoginError::Auth(_) => status::AUTHENTICATION_FAILURE,
            LoginError::TextTooLong(_) => status::OUT_OF_RESOURCES,
            LoginError::AlreadyFailed(s) => *s,
        }
    }
}
