//! The metadata manager (port 6611): the single source of truth for protection domains,
//! storage pools, SDS and their devices, volumes and their chunk layouts, SDC, SCSI
//! initiators and volume mappings. Every change is durable before it is answered.
//!
//! Pure parts: `model` (the state), `change` (validated transitions), `placement`
//! (where chunk copies go), `query` (what is reported). I/O parts: `store` (the state
//! file), `link` (control messages to SDS), `service` and `admin` (carrying requests
//! out), `server` (the port).

mod admin;
mod change;
mod ids;
mod link;
mod model;
mod placement;
mod query;
mod recovery;
mod scsi_hub;
mod server;
mod service;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use link::{ChunkLink, SdsLink};
pub use store::StoreError;

use model::State;
use service::Mdm;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

/// How long a gateway's `WatchMappings` waits for a change before it is answered anyway.
const WATCH_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum MdmError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}; is another MDM running? pick another address")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct MdmOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
}

/// A running MDM.
pub struct MdmHandle {
    /// The address bound (the real port when `listen` asked for port 0).
    pub addr: SocketAddr,
    pub system_id: u64,
    task: JoinHandle<()>,
}

impl MdmHandle {
    /// Runs until the server stops (it does not, short of the process ending).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Loads the state (or creates a new system), binds, and serves in the background.
pub async fn start(opts: MdmOptions) -> Result<MdmHandle, MdmError> {
    start_with(opts, Arc::new(ChunkLink::default())).await
}

/// [`start`] with another way to reach SDS (tests stand in for them).
pub async fn start_with(opts: MdmOptions, link: Arc<dyn SdsLink>) -> Result<MdmHandle, MdmError> {
    let (store, loaded) = store::Store::open(&opts.data_dir)?;
    let state = match loaded {
        Some(st) => st,
        None => {
            // The system id must never change once SDS carry it in their device
            // headers, so it is durable before anything else happens.
            let st = State::new(loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            });
            store.save(&st).await?;
            info!(system_id = %crate::cluster::api::fmt_id(st.system_id), "new system created");
            st
        }
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| MdmError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MdmError::Listen {
        addr: opts.listen,
        source,
    })?;
    let system_id = state.system_id;
    info!(%addr, system_id = %crate::cluster::api::fmt_id(system_id),
        pds = state.protection_domains.len(), sds = state.sds.len(),
        volumes = state.volumes.len(), "MDM listening");
    let mdm = Arc::new(Mdm::new(state, store, link, addr, WATCH_WAIT));
    tokio::spawn(recovery::run(mdm.clone()));
    let task = tokio::spawn(server::serve(listener, mdm));
    Ok(MdmHandle {
        addr,
        system_id,
        task,
    })
}
