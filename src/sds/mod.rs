//! The SDS (data server), `dreadnought sds`: owns devices, stores chunk copies on
//! them and serves the chunk protocol on port 7072.
//!
//! An SDS starts bare and waits for an MDM to claim it (`SdsControl::Claim`), which
//! names the system, the SDS and its devices. From then on it remembers who it
//! belongs to (`state`), after a restart verifies every device header before serving,
//! and heartbeats to the MDM for as long as it runs (`heartbeat`); it serves chunk
//! data only while the MDM's answers keep its lease valid (`lease`). `Release` undoes
//! the claim.
//!
//! Modules: `format` (pure on-disk encoding, documented there), `device` (one
//! device's chunk table and I/O), `store` (all devices), `claim` and `control` (MDM
//! messages), `ops` (one chunk request, mirroring), `replicate` (copying a whole
//! chunk for rebuild and rebalance), `locks` (per-chunk ordering of atomic ops and
//! replication against writes), `server` (connections), `epoch` (fencing), `lease`
//! and `heartbeat` (liveness), `peers` (mirror targets), `state` (persistence).

mod claim;
mod control;
mod device;
mod epoch;
mod format;
mod heartbeat;
mod lease;
mod locks;
mod ops;
mod peers;
mod replicate;
mod server;
mod state;
mod store;

use crate::cluster::api::fmt_id;
use crate::cluster::chunk::{local, ChunkError};
use device::{Device, Probe};
use epoch::Epochs;
use format::FormatError;
use heartbeat::{Heartbeat, Identity};
use lease::Lease;
use locks::ChunkLocks;
use peers::Peers;
use state::SdsState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct SdsOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `host:port` of the MDM; overrides the address remembered from the claim.
    pub mdm: Option<String>,
    /// Also listen on the local socket, so that gateways and SDS on this host read
    /// through shared memory (see `chunk::local`).
    pub local_socket: bool,
}

/// A running SDS.
#[derive(Debug)]
pub struct SdsHandle {
    /// The bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    server: JoinHandle<()>,
    heartbeat: Arc<Heartbeat>,
}

impl SdsHandle {
    /// Runs until the server ends.
    pub async fn wait(self) {
        let _ = self.server.await;
    }

    /// Stops accepting, closes every connection and stops heartbeating. Requests
    /// already executing finish on their own.
    pub fn stop(self) {
        self.server.abort();
        self.heartbeat.stop();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("cannot listen on {addr}: {source}; is another SDS using that port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use data directory {path}: {source}; check that it exists and is writable", path = path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SDS state file {path} is unreadable ({reason}); restore it, or move it away to start bare and add this SDS's devices again", path = path.display())]
    StateCorrupt { path: PathBuf, reason: String },
    #[error("cannot save SDS state to {path}: {source}; check the data directory's disk", path = path.display())]
    StateWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open device {path}: {source}; check that it exists and that the SDS may read and write it")]
    DeviceOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("I/O on device {path} failed: {source}; check the device and the kernel log")]
    DeviceIo {
        path: String,
        source: std::io::Error,
    },
    #[error("device {path} has a damaged or unsupported Dreadnought header ({source}); if its data is not needed, wipe its first 4 KiB to reuse it")]
    BadHeader { path: String, source: FormatError },
    #[error("device {path} is too small: {source}")]
    TooSmall { path: String, source: FormatError },
    #[error("device {path} belongs to system {system}; wipe its first 4 KiB to reuse it")]
    ForeignSystem { path: String, system: String },
    #[error("device {path} is already device {device} of SDS {sds} in this system; remove it there before adding it here")]
    OtherOwner {
        path: String,
        sds: String,
        device: String,
    },
    #[error("device {path} no longer carries the header of device {device} of this SDS ({found}); put the right device back at that path, or remove the device from this SDS")]
    HeaderChanged {
        path: String,
        device: String,
        found: String,
    },
    #[error("device {path} shrank to {capacity} bytes but its chunk slots end at {need}; restore its size")]
    Shrunk {
        path: String,
        capacity: u64,
        need: u64,
    },
    #[error("this SDS already belongs to system {system} as SDS {sds}; to move it, wipe its data directory and devices first")]
    AlreadyClaimed { system: String, sds: String },
    #[error("device id {device} is already this SDS's device {path}; use a new device id")]
    DeviceIdInUse { device: String, path: String },
    #[error("{path} is already device {device} of this SDS")]
    PathInUse { path: String, device: String },
    #[error("the claim names {0} twice; name each device once")]
    Duplicate(String),
    #[error("device {0} is not on this SDS; refetch the layout")]
    UnknownDevice(String),
    #[error("this SDS has not been claimed by an MDM yet; add it with scli --add_sds first")]
    NotClaimed,
    #[error("no free chunk slot on device {path}; add devices to the storage pool")]
    NoSpace { path: String },
    #[error("thick volume {volume} needs {need} more chunk slots on device {path}, which has {free}; add devices to the storage pool")]
    ThickNoSpace {
        volume: String,
        path: String,
        need: usize,
        free: usize,
    },
}

impl SdsError {
    /// How the error travels back to the sender of a chunk request.
    pub fn to_chunk(&self) -> ChunkError {
        match self {
            SdsError::NoSpace { .. } | SdsError::ThickNoSpace { .. } => ChunkError::NoSpace,
            SdsError::DeviceIo { .. } => ChunkError::Io(self.to_string()),
            _ => ChunkError::Refused(self.to_string()),
        }
    }
}

/// What every connection of this SDS shares.
struct Sds {
    data_dir: PathBuf,
    /// Where this SDS listens (what heartbeats advertise).
    listen: SocketAddr,
    /// `SdsOptions::mdm`: heartbeat there rather than to the claiming MDM.
    mdm_override: Option<String>,
    /// Who claimed us; also serialises control messages.
    state: Mutex<Option<SdsState>>,
    store: Arc<Store>,
    epochs: Arc<Epochs>,
    lease: Arc<Lease>,
    heartbeat: Arc<Heartbeat>,
    peers: Peers,
    locks: ChunkLocks,
}

impl Sds {
    /// Loads the saved state and opens every device, refusing to start if one no
    /// longer carries the header it was given. Heartbeats start with `start_heartbeat`.
    fn open(
        data_dir: &Path,
        listen: SocketAddr,
        mdm_override: Option<String>,
    ) -> Result<Self, SdsError> {
        state::prepare_dir(data_dir)?;
        let saved = state::load(data_dir)?;
        let store = Arc::new(Store::default());
        let peers = Peers::default();
        if let Some(s) = &saved {
            for rec in &s.devices {
                let probe = Probe::open(&rec.path)?;
                match probe.header {
                    Some(h)
                        if (h.system_id, h.sds_id, h.device_id)
                            == (s.system_id, s.sds_id, rec.id) =>
                    {
                        store.add(Device::load(probe, h)?)
                    }
                    other => {
                        return Err(SdsError::HeaderChanged {
                            path: rec.path.clone(),
                            device: fmt_id(rec.id),
                            found: match other {
                                None => "it has no Dreadnought header".to_string(),
                                Some(h) => format!(
                                    "it names device {} of SDS {} in system {}",
                                    fmt_id(h.device_id),
                                    fmt_id(h.sds_id),
                                    fmt_id(h.system_id)
                                ),
                            },
                        })
                    }
                }
            }
            peers.set(&s.peers);
        }
        let epochs = Arc::new(Epochs::default());
        let lease = Arc::new(Lease::default());
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            listen,
            mdm_override,
            state: Mutex::new(saved),
            store: store.clone(),
            heartbeat: Arc::new(Heartbeat::new(lease.clone(), epochs.clone(), store.clone())),
            epochs,
            lease,
            peers,
            locks: ChunkLocks::default(),
        })
    }

    /// Heartbeats as the SDS `s` names, to its MDM (or the overriding one).
    fn start_heartbeat(&self, s: &SdsState) {
        self.heartbeat.start(Identity {
            mdm: self
                .mdm_override
                .clone()
                .unwrap_or_else(|| s.mdm_addr.clone()),
            system_id: s.system_id,
            sds_id: s.sds_id,
            listen: self.listen,
        });
    }
}

/// Binds the port, loads the state and starts serving (and heartbeating, if claimed)
/// in the background.
pub async fn start(opts: SdsOptions) -> Result<SdsHandle, SdsError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| SdsError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SdsError::Bind {
        addr: opts.listen,
        source,
    })?;
    let dir = opts.data_dir.clone();
    let mdm = opts.mdm.clone();
    let sds = match tokio::task::spawn_blocking(move || Sds::open(&dir, addr, mdm)).await {
        Ok(r) => r?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let claimed = sds.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match claimed {
        Some(s) => {
            info!(%addr, system = %fmt_id(s.system_id), sds = %fmt_id(s.sds_id), devices = s.devices.len(), "SDS started; serving once the MDM grants a lease");
            sds.start_heartbeat(&s);
        }
        None => info!(%addr, "SDS started bare; waiting for an MDM to claim it"),
    }
    let local = match opts.local_socket {
        true => bind_local(addr),
        false => None,
    };
    let heartbeat = sds.heartbeat.clone();
    let server = tokio::spawn(server::run(listener, local, Arc::new(sds)));
    Ok(SdsHandle {
        addr,
        server,
        heartbeat,
    })
}

/// The local socket for the SDS at `addr`; `None` (clients then use TCP) if the name
/// is taken, which only another process squatting on it can do.
fn bind_local(addr: SocketAddr) -> Option<tokio::net::UnixListener> {
    match tokio::net::UnixListener::bind(local::socket_name(addr)) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(%addr, error = %e, "cannot listen on the local socket; clients on this host use TCP");
            None
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
