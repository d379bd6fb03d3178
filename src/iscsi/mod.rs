//! The iSCSI transport (RFC 7143).

pub mod login;
pub mod pdu;
pub mod text;
