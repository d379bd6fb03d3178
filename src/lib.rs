//! Dreadnought: software-defined block storage with a native iSCSI target.
//!
//! Layers, outermost first: [`iscsi`] speaks RFC 7143 to initiators, [`scsi`] executes
//! SPC-4/SBC-3 commands, [`backend`] stores the blocks. See `docs/ARCHITECTURE.md`.

pub mod backend;
pub mod iscsi;
pub mod scsi;
