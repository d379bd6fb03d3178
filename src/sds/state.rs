//! What an SDS remembers across restarts, kept in `sds-state.json` in its data
//! directory: who claimed it, where the MDM is, its devices and its peers. Replaced
//! atomically (write, fsync, rename, fsync the directory) so a crash leaves either the
//! old or the new state, never a mix.

use super::SdsError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

pub const FILE_NAME: &str = "sds-state.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdsState {
    pub system_id: u64,
    pub sds_id: u64,
    pub name: String,
    /// `IP:PORT` of the MDM that claimed this SDS.
    pub mdm_addr: String,
    pub devices: Vec<DeviceRecord>,
    pub peers: Vec<(u64, SocketAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: u64,
    pub path: String,
    pub pool: u64,
}

/// The saved state, or `None` for an SDS never claimed.
pub fn load(dir: &Path) -> Result<Option<SdsState>, SdsError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SdsError::StateCorrupt {
                path,
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| SdsError::StateCorrupt {
            path,
            reason: e.to_string(),
        })
}

pub fn save(dir: &Path, state: &SdsState) -> Result<(), SdsError> {
    let path = dir.join(FILE_NAME);
    let body = serde_json::to_vec_pretty(state).expect("the state always serializes");
    crate::durable::replace(&path, &body).map_err(|source| SdsError::StateWrite { path, source })
}

/// Forgets the state (the SDS was released): the next start is bare.
pub fn remove(dir: &Path) -> Result<(), SdsError> {
    let path = dir.join(FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SdsError::StateWrite { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SdsError::StateWrite { path, source }),
    }
}

/// Creates the data directory if needed; fails early if it cannot be used.
pub fn prepare_dir(dir: &Path) -> Result<(), SdsError> {
    std::fs::create_dir_all(dir).map_err(|source| SdsError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let s = SdsState {
            system_id: 1,
            sds_id: 2,
            name: "sds1".into(),
            mdm_addr: "10.0.0.1:6611".into(),
            devices: vec![DeviceRecord {
                id: 3,
                path: "/dev/xvdf".into(),
                pool: 4,
            }],
            peers: vec![(5, "10.0.0.2:7072".parse().unwrap())],
        };
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s));
        assert!(!dir.path().join("sds-state.json.tmp").exists());
    }

    #[test]
    fn unreadable_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FILE_NAME), "{e}");
    }
}
