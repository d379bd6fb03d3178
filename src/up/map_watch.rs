//! Keeps the MDM's initiator map in step with `conf/initiators.toml`: every edit is
//! validated whole (syntax, names, volumes) and applied atomically, exactly as
//! `scli --apply_initiator_map` does; a broken edit is refused with the file, line
//! and reason in the log, and the map in force stays.

use crate::scli;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{error, info};

/// How often the file is looked at; edits apply within this.
const POLL: Duration = Duration::from_secs(1);

async fn apply(mdm: &str, path: &Path) {
    match scli::apply_initiator_map(mdm, path.to_owned()).await {
        Ok(report) => {
            for line in report.lines() {
                info!(file = %path.display(), "initiator map: {line}");
            }
        }
        Err(e) => error!("{e}; the initiator map in force is unchanged"),
    }
}

/// Applies the file now (if it exists), then spawns a task that applies it again on
/// every change of its content.
pub async fn apply_then_watch(mdm: String, path: PathBuf) {
    let read = |p: &Path| std::fs::read(p).ok();
    let mut seen = read(&path);
    if seen.is_some() {
        apply(&mdm, &path).await;
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
                    apply(&mdm, &path).await;
                }
            }
        }
    });
}
