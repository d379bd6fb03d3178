//! One pipelined chunk client per SDS address, shared by every volume a gateway
//! serves, so all volumes' I/O to an SDS shares its few connections.

use crate::cluster::chunk::ChunkClient;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct SdsPool {
    clients: DashMap<SocketAddr, Arc<ChunkClient>>,
}

impl SdsPool {
    pub fn client(&self, addr: SocketAddr) -> Arc<ChunkClient> {
        self.clients
            .entry(addr)
            .or_insert_with(|| Arc::new(ChunkClient::new(addr)))
            .clone()
    }
}
