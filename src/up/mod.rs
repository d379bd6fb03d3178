//! `dreadnought up`: a whole cluster on one machine from `conf/dreadnought.toml` — one
//! MDM, an SDS per `cluster.sds_listen` address with a sparse file device under the
//! data dir, and the iSCSI gateway — for a first run, a demo and the tests. The parts
//! run in one process but talk over TCP exactly as on separate hosts.
//!
//! The first start creates the protection domain, pool, SDS and volumes through the
//! MDM's admin API (what scli would send); later starts find them in the MDM's state.
//! The initiator map file is applied at every start and whenever it is edited.

mod map_watch;

use crate::cluster::api::{
    AddSds, AdminReply, AdminRequest, By, DeviceSpec, MdmReply, MdmRequest, MediaType, Protection,
    SdsInfo,
};
use crate::cluster::{frame, mdm_client};
use crate::config::{ClusterConfig, Config, ConfigError};
use crate::gateway::{self, ClusterLink, GatewayError, Overrides};
use crate::{mdm, sds};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("MDM: {0}")]
    Mdm(#[from] mdm::MdmError),
    #[error("SDS: {0}")]
    Sds(#[from] sds::SdsError),
    #[error("cannot create the device file {path}: {source}; check free space and permissions")]
    Device {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating the cluster failed at {step}: {reason}; to start over, stop and remove the data directory")]
    Bootstrap { step: String, reason: String },
}

/// Runs `up` until the process is stopped.
pub async fn run(config: &Path, ov: Overrides) -> Result<(), UpError> {
    let cfg = Config::load(config)?;
    let Some(cl) = cfg.cluster.clone() else {
        // No cluster configured: just the gateway over local file volumes.
        return Ok(gateway::run(config, ov, None).await?);
    };
    let data_dir = ov.data_dir.clone().unwrap_or_else(|| cfg.data_dir.clone());
    let mdm = mdm::start(mdm::MdmOptions {
        listen: cl.mdm_listen,
        data_dir: data_dir.join("mdm"),
    })
    .await?;
    let mdm_addr = frame::reachable(mdm.addr).to_string();
    let mut servers = Vec::new();
    for (i, listen) in cl.sds_listen.iter().enumerate() {
        let h = sds::start(sds::SdsOptions {
            listen: *listen,
            data_dir: data_dir.join(format!("sds{}", i + 1)),
            mdm: Some(mdm_addr.clone()),
            local_socket: true,
        })
        .await?;
        servers.push(h);
    }
    let sds_addrs: Vec<SocketAddr> = servers.iter().map(|s| frame::reachable(s.addr)).collect();
    let marker = data_dir.join("cluster-created");
    if marker.exists() {
        wait_for_sds(&mdm_addr, &sds_addrs).await?;
        warn_if_mode_differs(&cl, &mdm_addr).await;
    } else {
        bootstrap(&cl, &mdm_addr, &sds_addrs, &data_dir).await?;
        std::fs::write(&marker, "created by dreadnought up\n").map_err(|source| {
            UpError::Device {
                path: marker.clone(),
                source,
            }
        })?;
    }
    let map_file = config
        .parent()
        .unwrap_or(Path::new("."))
        .join(&cl.initiator_map);
    map_watch::apply_then_watch(mdm_addr.clone(), map_file).await;
    let link = ClusterLink {
        mdm: mdm_addr.clone(),
        name: cl.gateway_name.clone(),
        ip: "127.0.0.1".into(),
    };
    let server = gateway::build(&cfg, &ov, Some(&link)).await?;
    let sds_list: Vec<String> = sds_addrs.iter().map(|a| a.to_string()).collect();
    info!(mdm = %mdm_addr, sds = %sds_list.join(","), "cluster ready");
    tokio::select! {
        _ = gateway::serve(&cfg, server) => {}
        _ = mdm.wait() => {}
    }
    Ok(())
}

async fn admin(mdm: &str, step: &str, req: AdminRequest) -> Result<AdminReply, UpError> {
    match call(mdm, step, MdmRequest::Admin(req)).await? {
        MdmReply::Admin(r) => Ok(r),
        other => Err(UpError::Bootstrap {
            step: step.into(),
            reason: format!("unexpected reply {other:?}"),
        }),
    }
}

async fn call(mdm: &str, step: &str, req: MdmRequest) -> Result<MdmReply, UpError> {
    let err = |reason: String| UpError::Bootstrap {
        step: step.into(),
        reason,
    };
    mdm_client::ask(mdm, &req, Duration::from_secs(120))
        .await
        .map_err(|e| err(e.to_string()))
}

/// A sparse file of the configured size: the SDS's device.
fn device_file(dir: &Path, size: u64) -> Result<PathBuf, UpError> {
    let err = |path: &Path, source| UpError::Device {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| err(dir, e))?;
    let path = dir.join("device0.img");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| err(&path, e))?;
    if f.metadata().map_err(|e| err(&path, e))?.len() < size {
        f.set_len(size).map_err(|e| err(&path, e))?;
    }
    Ok(path)
}

fn media_type(s: &str) -> MediaType {
    match s.to_ascii_lowercase().as_str() {
        "hdd" => MediaType::Hdd,
        "cloud" => MediaType::Cloud,
        _ => MediaType::Ssd,
    }
}

async fn bootstrap(
    cl: &ClusterConfig,
    mdm: &str,
    sds: &[SocketAddr],
    data_dir: &Path,
) -> Result<(), UpError> {
    let pd = cl.protection_domain.clone();
    let pool = cl.storage_pool.clone();
    admin(
        mdm,
        "add protection domain",
        AdminRequest::AddProtectionDomain { name: pd.clone() },
    )
    .await?;
    admin(
        mdm,
        "add storage pool",
        AdminRequest::AddStoragePool {
            pd: By::Name(pd.clone()),
            name: pool.clone(),
            media_type: media_type(&cl.media_type),
            protection: cl.protection_mode,
        },
    )
    .await?;
    for (i, addr) in sds.iter().enumerate() {
        let path = device_file(&data_dir.join(format!("sds{}", i + 1)), cl.device_size.0)?;
        admin(
            mdm,
            "add SDS",
            AdminRequest::AddSds(AddSds {
                ip: addr.ip().to_string(),
                port: Some(addr.port()),
                protection_domain: pd.clone(),
                name: Some(format!("sds{}", i + 1)),
                devices: vec![DeviceSpec {
                    path: path.display().to_string(),
                    pool: pool.clone(),
                    name: None,
                }],
            }),
        )
        .await?;
    }
    call(
        mdm,
        "register the gateway",
        MdmRequest::RegisterSdc {
            name: cl.gateway_name.clone(),
            ip: "127.0.0.1".into(),
        },
    )
    .await?;
    for v in &cl.volumes {
        admin(
            mdm,
            "add volume",
            AdminRequest::AddVolume {
                pd: By::Name(pd.clone()),
                pool: By::Name(pool.clone()),
                name: Some(v.name.clone()),
                size_bytes: v.size.0,
                thin: v.thin,
            },
        )
        .await?;
        admin(
            mdm,
            "map volume",
            AdminRequest::MapVolumeToSdc {
                volume: By::Name(v.name.clone()),
                sdc: By::Name(cl.gateway_name.clone()),
            },
        )
        .await?;
    }
    info!(protection_domain = %pd, pool = %pool, sds = sds.len(), volumes = cl.volumes.len(), "cluster created");
    Ok(())
}

/// On a later start, `cluster.protection_mode` no longer applies: the pool keeps the
/// mode it was created with. An edited one is pointed out rather than silently
/// ignored.
async fn warn_if_mode_differs(cl: &ClusterConfig, mdm: &str) {
    let req = AdminRequest::QueryStoragePool {
        pd: By::Name(cl.protection_domain.clone()),
        pool: By::Name(cl.storage_pool.clone()),
    };
    if let Ok(AdminReply::StoragePool(p)) = admin(mdm, "query storage pool", req).await {
        if let Some(text) = mode_differs(&p.name, cl.protection_mode, p.protection) {
            warn!("{text}");
        }
    }
}

/// The warning for a configured protection mode that is not the existing pool's.
fn mode_differs(pool: &str, configured: Protection, existing: Protection) -> Option<String> {
    (configured != existing).then(|| {
        format!(
            "cluster.protection_mode is {} but storage pool {pool} keeps {}: a pool's mode is fixed when it is created; set {} to silence this, or stop, remove the data directory and start again to create the cluster anew",
            configured.name(),
            existing.name(),
            existing.name()
        )
    })
}

/// After a restart each SDS reports its (possibly new) address to the MDM; the
/// gateway must not fetch layouts before the MDM knows them.
async fn wait_for_sds(mdm: &str, sds: &[SocketAddr]) -> Result<(), UpError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known: Vec<SdsInfo> = match admin(mdm, "query SDS", AdminRequest::QueryAllSds).await? {
            AdminReply::AllSds(v) => v,
            _ => Vec::new(),
        };
        let all = sds.iter().all(|a| {
            known
                .iter()
                .any(|s| s.ip == a.ip().to_string() && s.port == a.port())
        });
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UpError::Bootstrap {
                step: "restart".into(),
                reason: "the SDS did not report their addresses to the MDM within 30 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edited_protection_mode_is_pointed_out() {
        let one = Protection::SingleCopy;
        let two = Protection::TwoCopies;
        assert_eq!(mode_differs("pool1", two, two), None);
        let text = mode_differs("pool1", one, two).unwrap();
        assert!(
            text.starts_with("cluster.protection_mode is single_copy but storage pool pool1 keeps two_copies: a pool's mode is fixed when it is created"),
            "{text}"
        );
    }
}
