//! Dreadnought: software-defined block storage with a native iSCSI target.
//!
//! Layers, outermost first: [`iscsi`] speaks RFC 7143 to initiators, [`scsi`] executes
//! SPC-4/SBC-3 commands, [`backend`] stores the blocks. [`up`] assembles them from
//! [`config`]. See `docs/ARCHITECTURE.md`.

pub mod backend;
pub mod cluster;
pub mod config;
pub mod iscsi;
pub mod mdm;
pub mod scsi;
pub mod up;
