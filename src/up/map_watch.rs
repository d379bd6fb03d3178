//! Keeps the MDM's initiator map in step with `conf/initiators.toml`: every edit is
//! validated whole (syntax, names, volumes) and applied atomically; a broken edit is
//! refused with the file, line and reason in the log, and the map in force stays.

use crate::cluster::api::{AdminReply, AdminRequest, MdmReply, MdmRequest};
use crate::cluster::initiator_file::{self, MapFileError};
use crate::cluster::mdm_client;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info};

/// How often the file is looked at; edits apply within this.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MapWatchError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{}: {}; the initiator map in force is unchanged", .error.line, .error.message)]
    Invalid { path: PathBuf, error: MapFileError },
    #[error("{path}: {reason}; the initiator map in force is unchanged")]
    Refused { path: PathBuf, reason: String },
}

/// Validates `path` and applies it through the MDM; returns the changes made.
pub async fn apply_file(mdm: &str, path: &Path) -> Result<Vec<String>, MapWatchError> {
    let text = std::fs::read_to_string(path).map_err(|source| MapWatchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |error| MapWatchError::Invalid {
        path: path.to_owned(),
        error,
    };
    let refused = |reason: String| MapWatchError::Refused {
        path: path.to_owned(),
        reason,
    };
    let file = initiator_file::parse(&text).map_err(invalid)?;
    let timeout = Duration::from_secs(30);
    let ask = |req| async move {
        mdm_client::ask(mdm, &MdmRequest::Admin(req), timeout)
            .await
            .map_err(|e| e.to_string())
    };
    let known: Vec<String> = match ask(AdminRequest::QueryAllVolumes).await.map_err(refused)? {
        MdmReply::Admin(AdminReply::AllVolumes(v)) => v.into_iter().map(|v| v.name).collect(),
        other => return Err(refused(format!("unexpected reply {other:?}"))),
    };
    file.check_volumes(&known).map_err(invalid)?;
    match ask(AdminRequest::ApplyInitiatorMap(file.map))
        .await
        .map_err(refused)?
    {
        MdmReply::Admin(AdminReply::MapApplied(changes)) => Ok(changes),
        other => Err(refused(format!("unexpected reply {other:?}"))),
    }
}

fn log_outcome(path: &Path, r: Result<Vec<String>, MapWatchError>) {
    match r {
        Ok(changes) if changes.is_empty() => {
            info!(file = %path.display(), "initiator map unchanged")
        }
        Ok(changes) => {
            for c in changes {
                info!(file = %path.display(), change = %c, "initiator map applied");
            }
        }
        Err(e) => error!("{e}"),
    }
}

/// Applies the file now (if it exists), then spawns a task that applies it again on
/// every change of its content.
pub async fn apply_then_watch(mdm: String, path: PathBuf) {
    let read = |p: &Path| std::fs::read(p).ok();
    let mut seen = read(&path);
    if seen.is_some() {
        log_outcome(&path, apply_file(&mdm, &path).await);
    } else {
        info!(file = %path.display(), "no initiator map file; manage initiators with scli");
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let now = read(&path);
            if now != seen {
                seen = now;
                if seen.is_some() {
                    info!(file = %path.display(), "initiator map edited; validating");
                    log_outcome(&path, apply_file(&mdm, &path).await);
                }
            }
        }
    });
}
