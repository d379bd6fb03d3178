//! The other SDS of the system, for forwarding mirror writes: their addresses (from
//! the MDM's `Peers` message) and one pooled chunk client each, kept while the
//! address stays the same.

use crate::cluster::chunk::ChunkClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Peers {
    clients: Mutex<HashMap<u64, Arc<ChunkClient>>>,
}

impl Peers {
    /// Replaces the table; clients of peers whose address did not change keep their
    /// connections.
    pub fn set(&self, peers: &[(u64, SocketAddr)]) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut old = std::mem::take(&mut *clients);
        for &(id, addr) in peers {
            let c = match old.remove(&id) {
                Some(c) if c.addr() == addr => c,
                _ => Arc::new(ChunkClient::local_first(addr)),
            };
            clients.insert(id, c);
        }
    }

    pub fn client(&self, sds: u64) -> Option<Arc<ChunkClient>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sds)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_survive_while_the_address_holds() {
        let p = Peers::default();
        let a: SocketAddr = "10.0.0.1:7072".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7072".parse().unwrap();
        p.set(&[(1, a), (2, b)]);
        let c1 = p.client(1).unwrap();
        p.set(&[(1, a), (2, a)]);
        assert!(Arc::ptr_eq(&c1, &p.client(1).unwrap()));
        assert_eq!(p.client(2).unwrap().addr(), a);
        p.set(&[]);
        assert!(p.client(1).is_none());
    }
}
