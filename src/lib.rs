//! Dreadnought: software-defined block storage with a native iSCSI target.
//!
//! Layers, outermost first: [`iscsi`] speaks RFC 7143 to initiators, [`scsi`] executes
//! SPC-4/SBC-3 commands, [`backend`] stores the blocks. [`up`] assembles them from
//! [`config`]. [`cluster`] holds what the MDM, the SDS ([`sds`]) and gateways say to each
//! other. See `docs/ARCHITECTURE.md`.

pub mod backend;
pub mod cluster;
pub mod config;
pub mod iscsi;
pub mod scsi;
pub mod sds;
pub mod up;
