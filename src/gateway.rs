//! The iSCSI gateway (`dreadnought target`): the targets of a config file, exporting
//! local file volumes and, with an MDM, the pool volumes mapped to this gateway.

use crate::backend::{BlockBackend, FileBackend};
use crate::cluster::mdm_client::MdmCallError;
use crate::config::{ChapConfig, Config, ConfigError};
use crate::iscsi::login::{ChapSecrets, Limits};
use crate::iscsi::server::{Server, ServerCtx, Timing};
use crate::iscsi::session::SessionTable;
use crate::iscsi::target::{Access, Target, TargetSet};
use crate::scsi::shared::LocalStore;
use crate::scsi::{Identity, LogicalUnit, LunMap};
use crate::sdc::{Sdc, SdcError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open volume {name:?} at {path}: {source}; check the path and free space")]
    Volume {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the reservations of volume {name:?}: {reason}; restore the file from a backup or remove it to start without reservations")]
    Reservations { name: String, reason: String },
    #[error("{0}")]
    Listen(std::io::Error),
    #[error("target {0:?} exports mapped pool volumes (mapped = true) but no MDM is given; pass --mdm HOST:6611")]
    NoMdm(String),
    #[error(transparent)]
    Sdc(#[from] SdcError),
}

/// How the gateway reaches the cluster, and the SDC name and IP it registers with.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    pub mdm: String,
    pub name: String,
    pub ip: String,
}

/// Command-line overrides of the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// The cluster-wide id that makes volume identities (NAA, serial) unique to this
/// installation and stable across restarts: created once, then read back.
fn system_id(data_dir: &Path) -> Result<u64, GatewayError> {
    let err = |source| GatewayError::DataDir {
        path: data_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let p = data_dir.join("system-id");
    if let Ok(s) = std::fs::read_to_string(&p) {
        if let Ok(id) = u64::from_str_radix(s.trim(), 16) {
            return Ok(id);
        }
        warn!(path = %p.display(), "system-id is unreadable; generating a new one");
    }
    let id: u64 = rand::random();
    crate::durable::replace(&p, format!("{id:016x}\n").as_bytes()).map_err(err)?;
    Ok(id)
}

/// FNV-1a: a hash whose value never changes between builds, unlike std's.
fn stable_hash(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn chap(c: &Option<ChapConfig>) -> Option<ChapSecrets> {
    c.as_ref().map(|c| ChapSecrets {
        username: c.username.clone(),
        secret: c.secret.clone(),
        mutual: c.mutual_username.clone().zip(c.mutual_secret.clone()),
    })
}

/// Registers with the MDM, waiting for it for a while: gateways and MDM are often
/// started together.
async fn register(link: &ClusterLink) -> Result<Sdc, GatewayError> {
    let mut tries = 0;
    loop {
        match Sdc::register(&link.mdm, &link.name, &link.ip).await {
            Ok(s) => return Ok(s),
            Err(e @ SdcError::Mdm(MdmCallError::Transport { .. })) if tries < 30 => {
                if tries == 0 {
                    warn!(error = %e, "MDM not reachable yet; retrying for 30 s");
                }
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Builds the server from a config; returns it bound and ready to run. With a
/// cluster link, the mapped targets start with the MDM's current map and follow it.
pub async fn build(
    cfg: &Config,
    ov: &Overrides,
    cluster: Option<&ClusterLink>,
) -> Result<Server, GatewayError> {
    if cluster.is_none() {
        if let Some(t) = cfg.targets.iter().find(|t| t.mapped) {
            return Err(GatewayError::NoMdm(t.name.clone()));
        }
    }
    let mut sdc = None;
    let mut mapped = Access::default();
    // A standalone gateway is portal group (and ALUA target port group) `portal_group_tag`
    // of the config, 1 by default; a gateway of a cluster is the number the MDM gave
    // its SDC, so no two gateways serving a volume share one.
    let mut portal_group_tag = cfg.iscsi.portal_group_tag;
    if let Some(link) = cluster {
        let mut s = register(link).await?;
        if s.number != 0 {
            portal_group_tag = s.number;
        }
        let view = s.watch(0).await?;
        mapped = s.apply(&view).await?;
        sdc = Some((s, view.generation));
    }
    let data_dir = ov.data_dir.clone().unwrap_or_else(|| cfg.data_dir.clone());
    let sys = system_id(&data_dir)?;
    let mut units: HashMap<String, Arc<LogicalUnit>> = HashMap::new();
    for v in &cfg.volumes {
        let path = v
            .file
            .clone()
            .unwrap_or_else(|| data_dir.join("volumes").join(format!("{}.img", v.name)));
        let be = FileBackend::open(&path, v.size.0).map_err(|source| GatewayError::Volume {
            name: v.name.clone(),
            path: path.clone(),
            source,
        })?;
        let be: Arc<dyn BlockBackend> = Arc::new(be);
        let mut pr_file = path.clone().into_os_string();
        pr_file.push(".reservations.json");
        let shared =
            LocalStore::persistent(pr_file.into()).map_err(|e| GatewayError::Reservations {
                name: v.name.clone(),
                reason: e.to_string(),
            })?;
        let id = Identity::from_volume_id(&v.name, stable_hash(sys, &v.name));
        info!(volume = %v.name, size = v.size.0, serial = %id.serial, path = %path.display(), read_only = v.read_only, "volume online");
        units.insert(
            v.name.clone(),
            Arc::new(LogicalUnit::new(be, id, v.read_only, Arc::new(shared))),
        );
    }
    let mut targets = Vec::new();
    for t in &cfg.targets {
        let access = if t.mapped {
            mapped.clone()
        } else {
            let luns: LunMap = t
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| (i as u64, units[v].clone()))
                .collect();
            Access {
                shared: Arc::new(luns),
                ..Access::default()
            }
        };
        if t.demo_mode {
            warn!(target = %t.name, "DEMO MODE: every initiator can log in and see every LUN of this target; turn demo_mode off in production");
        }
        targets.push(Arc::new(Target::new(
            t.name.clone(),
            t.alias.clone(),
            chap(&t.chap),
            t.demo_mode,
            t.allowed_initiators.clone(),
            t.mapped,
            access,
        )));
    }
    if let Some((s, generation)) = sdc {
        let follow: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .zip(&targets)
            .filter(|(c, _)| c.mapped)
            .map(|(_, t)| t.clone())
            .collect();
        tokio::spawn(s.follow(generation, follow));
    }
    let i = &cfg.iscsi;
    let listen = if ov.listen.is_empty() {
        i.listen.clone()
    } else {
        ov.listen.clone()
    };
    let limits = Limits {
        max_recv_data_segment_length: i.max_recv_data_segment_length,
        max_burst_length: i.max_burst_length,
        first_burst_length: i.first_burst_length,
        max_outstanding_r2t: i.max_outstanding_r2t,
        initial_r2t: i.initial_r2t,
        immediate_data: i.immediate_data,
        allow_header_digest: i.header_digest,
        allow_data_digest: i.data_digest,
        ..Limits::default()
    };
    let timing = Timing {
        nop_interval: Duration::from_secs(i.nop_interval_secs.max(1)),
        nop_timeout: Duration::from_secs(i.nop_timeout_secs.max(1)),
        login_timeout: Duration::from_secs(i.login_timeout_secs.max(1)),
    };
    // Bind first so SendTargets reports the real ports (tests listen on port 0).
    let listeners = crate::iscsi::server::bind(&listen)
        .await
        .map_err(GatewayError::Listen)?;
    let portals = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let ctx = ServerCtx {
        targets: Arc::new(TargetSet {
            targets,
            portals,
            portal_group_tag,
            discovery_chap: chap(&i.discovery_chap),
        }),
        limits,
        sessions: Arc::new(SessionTable::default()),
        timing,
        queue_depth: i.queue_depth,
    };
    Ok(Server::new(Arc::new(ctx), listeners, i.max_connections))
}

/// Runs the gateway until the process is stopped.
pub async fn run(
    config: &Path,
    ov: Overrides,
    cluster: Option<ClusterLink>,
) -> Result<(), GatewayError> {
    let cfg = Config::load(config)?;
    let server = build(&cfg, &ov, cluster.as_ref()).await?;
    serve(&cfg, server).await;
    Ok(())
}

/// Logs the ready line tests and scripts wait for, then serves.
pub async fn serve(cfg: &Config, server: Server) {
    for t in &cfg.targets {
        info!(target = %t.name, mapped = t.mapped, local_luns = t.volumes.len(), "target ready");
    }
    let addrs: Vec<String> = server.local_addrs().iter().map(|a| a.to_string()).collect();
    info!(portals = %addrs.join(","), "ready: iSCSI target listening");
    server.run().await;
}
