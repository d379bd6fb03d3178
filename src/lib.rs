//! Dreadnought: software-defined block storage with a native iSCSI target.
//!
//! Layers, outermost first: [`iscsi`] speaks RFC 7143 to initiators, [`scsi`] executes
//! SPC-4/SBC-3 commands, [`backend`] stores the blocks — a local file, or a pool volume
//! whose chunks live on the SDS ([`sdc`]). [`gateway`] assembles a target from
//! [`config`]. [`cluster`] holds what the MDM ([`mdm`]), the SDS ([`sds`]), gateways and
//! [`scli`] say to each other; [`up`] runs a whole cluster on one machine.
//! See `docs/ARCHITECTURE.md`.

pub mod backend;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod gateway;
pub mod iscsi;
pub mod mdm;
pub mod scli;
pub mod scsi;
pub mod sdc;
pub mod sds;
pub mod up;
