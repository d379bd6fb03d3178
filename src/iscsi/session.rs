//! The session table: TSIH assignment and session reinstatement (RFC 7143 section
//! 6.3.5): a new login with the same initiator name, ISID and target replaces the old
//! session, which is closed before the new one starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// What makes two logins the same session (the I_T nexus plus the session type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    /// `None` for discovery sessions.
    pub target: Option<String>,
}

#[derive(Debug)]
struct Entry {
    key: SessionKey,
    kill: Arc<Notify>,
    gone: watch::Receiver<()>,
}

#[derive(Debug, Default)]
struct Inner {
    next_tsih: u16,
    sessions: HashMap<u16, Entry>,
}

#[derive(Debug, Default)]
pub struct SessionTable {
    inner: Mutex<Inner>,
}

/// Held by a session's connection for its lifetime; dropping it removes the session.
#[derive(Debug)]
pub struct SessionGuard {
    table: Arc<SessionTable>,
    pub tsih: u16,
    /// Notified when the session must end (reinstatement, target cold reset).
    pub kill: Arc<Notify>,
    _alive: watch::Sender<()>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.table.inner.lock().unwrap().sessions.remove(&self.tsih);
    }
}

/// How long a reinstating login waits for the old session to wind down.
const REINSTATE_WAIT: Duration = Duration::from_secs(5);

impl SessionTable {
    /// Registers a new session under a fresh TSIH, first ending any session with the
    /// same key (reinstatement).
    pub async fn register(self: &Arc<Self>, key: SessionKey) -> SessionGuard {
        let old: Vec<(Arc<Notify>, watch::Receiver<()>)> = {
            let inner = self.inner.lock().unwrap();
            inner
                .sessions
                .values()
                .filter(|e| e.key == key)
                .map(|e| (e.kill.clone(), e.gone.clone()))
                .collect()
        };
        for (kill, mut gone) in old {
            tracing::info!(initiator = %key.initiator, "reinstating session: closing the old one");
            kill.notify_one();
            let _ = tokio::time::timeout(REINSTATE_WAIT, async {
                while gone.changed().await.is_ok() {}
            })
            .await;
        }
        let (tx, rx) = watch::channel(());
        let kill = Arc::new(Notify::new());
        let mut inner = self.inner.lock().unwrap();
        let tsih = loop {
            inner.next_tsih = inner.next_tsih.wrapping_add(1);
            let t = inner.next_tsih;
            if t != 0 && !inner.sessions.contains_key(&t) {
                break t;
            }
        };
        inner.sessions.insert(
            tsih,
            Entry {
                key,
                kill: kill.clone(),
                gone: rx,
            },
        );
        SessionGuard {
            table: self.clone(),
            tsih,
            kill,
            _alive: tx,
        }
    }

    pub fn contains(&self, tsih: u16) -> bool {
        self.inner.lock().unwrap().sessions.contains_key(&tsih)
    }

    /// Ends every session of `target` (TARGET COLD RESET).
    pub fn kill_target(&self, target: &str) {
        for e in self.inner.lock().unwrap().sessions.values() {
            if e.key.target.as_deref() == Some(target) {
                e.kill.notify_one();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(isid: u8) -> SessionKey {
        SessionKey {
            initiator: "iqn.x".into(),
            isid: [isid; 6],
            target: Some("t".into()),
        }
    }

    #[tokio::test]
    async fn tsihs_are_unique_and_nonzero_and_freed_on_drop() {
        let t = Arc::new(SessionTable::default());
        let a = t.register(key(1)).await;
        let b = t.register(key(2)).await;
        assert_ne!(a.tsih, 0);
        assert_ne!(a.tsih, b.tsih);
        assert_eq!(t.len(), 2);
        drop(a);
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn same_key_reinstates() {
        let t = Arc::new(SessionTable::default());
        let old = t.register(key(1)).await;
        let kill = old.kill.clone();
        let waiter = tokio::spawn(async move {
            kill.notified().await;
            drop(old);
        });
        let new = t.register(key(1)).await;
        waiter.await.unwrap();
        assert_eq!(t.len(), 1);
        assert!(t.contains(new.tsih));
    }
}
