//! The MDM's durable state: one JSON snapshot, `mdm-state.json` in the data directory,
//! replaced atomically on every change (write a temporary file, fsync it, rename it
//! over the old one, fsync the directory), so a kill -9 at any instant leaves either
//! the old state or the new one. A lock file keeps a second MDM off the directory.

use super::model::State;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const STATE_FILE: &str = "mdm-state.json";
#[cfg(test)]
const TEMP_FILE: &str = "mdm-state.json.tmp";
const LOCK_FILE: &str = "mdm.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use MDM data directory {path}: {source}; check it exists and is writable, or pass another data directory")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another MDM is already using data directory {path}; stop it first or pass another data directory")]
    Locked { path: PathBuf },
    #[error("cannot read MDM state file {path}: {source}; fix its permissions or restore it from a backup")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The MDM never starts empty over a cluster it would then forget.
    #[error("MDM state file {path} is damaged ({reason}); restore it from a backup; the MDM will not start with an empty cluster in its place")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot save the MDM state to {path}: {source}; nothing was changed; free space in the data directory and retry")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The data directory, held locked for as long as any clone lives.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    _lock: Arc<File>,
}

impl Store {
    /// Creates the directory if needed, locks it, and loads the state if there is one.
    pub fn open(dir: &Path) -> Result<(Self, Option<State>), StoreError> {
        let dir_err = |source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: dir.to_owned(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        let store = Self {
            dir: dir.to_owned(),
            _lock: Arc::new(lock),
        };
        let path = store.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((store, None)),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut state: State =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        state.upgrade();
        state.check().map_err(|e| corrupt(e.to_string()))?;
        Ok((store, Some(state)))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Makes `state` the durable state; when this returns Ok it survives a crash.
    pub async fn save(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(state).expect("the state always serialises");
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write(&bytes))
            .await
            .expect("the state writer does not panic")
    }

    fn write(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path();
        crate::durable::replace(&path, bytes).map_err(|source| StoreError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{sample, sample_with_initiator};
    use super::super::model::FORMAT;
    use super::*;

    #[tokio::test]
    async fn a_saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, None);
        let st = sample();
        store.save(&st).await.unwrap();
        let mut changed = st.clone();
        changed.protection_domains.get_mut(&1).unwrap().name = "renamed".into();
        store.save(&changed).await.unwrap();
        drop(store);
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, Some(changed));
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[tokio::test]
    async fn initiators_mappings_and_chap_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let st = sample_with_initiator();
        store.save(&st).await.unwrap();
        drop(store);
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded, st);
        assert_eq!(
            loaded.initiators[&31].chap.as_ref().unwrap().secret,
            "initiator-secret"
        );
    }

    #[test]
    fn a_format_1_file_loads_with_no_initiators() {
        let dir = tempfile::tempdir().unwrap();
        let mut json = serde_json::to_value(sample()).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("initiators");
        obj.insert("format".into(), 1.into());
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.format, FORMAT);
        assert!(loaded.initiators.is_empty());
        assert_eq!(loaded.sds, sample().sds);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"format\":1,\"syst").unwrap();
        let e = Store::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("restore it from a backup"), "{e}");

        let mut st = sample();
        st.pools.get_mut(&11).unwrap().pd = 99;
        std::fs::write(
            dir.path().join(STATE_FILE),
            serde_json::to_vec(&st).unwrap(),
        )
        .unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("missing protection domain"), "{e}");
    }

    #[test]
    fn a_leftover_temporary_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TEMP_FILE), b"half a write").unwrap();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, None);
    }
}
