//! The iSCSI transport (RFC 7143): wire codec, login, sessions and the full-feature
//! phase. It hands SCSI commands to [`crate::scsi`] and knows nothing of volumes.

pub mod cmdsn;
pub mod connection;
pub mod dataout;
pub mod login;
pub mod pdu;
pub mod response;
pub mod server;
pub mod session;
pub mod target;
pub mod text;
pub mod writer;
