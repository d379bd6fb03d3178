//! What the cluster's components share: the control-plane messages and their framing,
//! and the chunk I/O protocol spoken to SDS.

pub mod api;
pub mod chunk;
pub mod frame;
pub mod initiator_file;
pub mod initiator_rules;
pub mod iscsi_name;
pub mod mdm_client;
