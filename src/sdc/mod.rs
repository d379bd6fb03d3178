//! The gateway's client side of the cluster (ScaleIO's SDC role): it follows the
//! volumes the MDM maps to this gateway and turns their block I/O into chunk I/O on
//! the SDS.

mod failover;
mod mapping;
mod route;
mod sds_pool;
mod shared;
mod single_flight;
mod volume;

pub use failover::FAILOVER_DEADLINE;
pub use mapping::{Sdc, SdcError};
pub use sds_pool::SdsPool;
pub use volume::{fetch_layout, PoolVolume, VolumeError};
