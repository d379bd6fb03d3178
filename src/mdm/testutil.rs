//! A stand-in for SDS in tests: answers control messages from memory, remembers what
//! it was sent, and fails on request.

use super::link::{request_name, SdsLink};
use crate::cluster::api::{
    DeviceInventory, DeviceReport, SdsControl, SdsControlReply, SdsInventory, CHUNK_SIZE,
};
use async_trait::async_trait;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;

#[derive(Default)]
pub struct FakeSds {
    inner: Mutex<Fake>,
}

#[derive(Default)]
struct Fake {
    /// Addresses that answer; any other is unreachable.
    nodes: HashMap<SocketAddr, Node>,
    received: Vec<(SocketAddr, SdsControl)>,
}

#[derive(Default)]
struct Node {
    slots: u64,
    /// Owner written into the device headers by the first claim.
    system_id: u64,
    sds_id: u64,
    devices: Vec<(u64, String)>,
    chunks: BTreeSet<(u64, u64, u64)>, // (device, volume, chunk)
    /// Requests (by name) this node refuses, with the reason it gives.
    failing: HashMap<&'static str, String>,
}

fn at(addr: &str) -> SocketAddr {
    addr.parse().expect("test address")
}

impl FakeSds {
    /// An SDS at `addr` whose devices hold `slots` chunks each.
    pub fn node(&self, addr: &str, slots: u64) {
        let node = Node {
            slots,
            ..Node::default()
        };
        self.inner.lock().unwrap().nodes.insert(at(addr), node);
    }

    /// Makes the SDS at `addr` answer `request` (e.g. "Claim") with an error.
    pub fn fail(&self, addr: &str, request: &'static str, reason: &str) {
        let mut f = self.inner.lock().unwrap();
        let node = f.nodes.get_mut(&at(addr)).expect("known node");
        node.failing.insert(request, reason.to_string());
    }

    pub fn heal(&self, addr: &str) {
        let mut f = self.inner.lock().unwrap();
        f.nodes
            .get_mut(&at(addr))
            .expect("known node")
            .failing
            .clear();
    }

    pub fn down(&self, addr: &str) {
        self.inner.lock().unwrap().nodes.remove(&at(addr));
    }

    /// The messages `addr` was sent, oldest first.
    pub fn received(&self, addr: &str) -> Vec<SdsControl> {
        let f = self.inner.lock().unwrap();
        f.received
            .iter()
            .filter(|(a, _)| *a == at(addr))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Chunk copies `addr` holds for `volume`.
    pub fn chunks(&self, addr: &str, volume: u64) -> usize {
        let f = self.inner.lock().unwrap();
        f.nodes[&at(addr)]
            .chunks
            .iter()
            .filter(|c| c.1 == volume)
            .count()
    }
}

#[async_trait]
impl SdsLink for FakeSds {
    async fn control(&self, addr: SocketAddr, msg: &SdsControl) -> Result<SdsControlReply, String> {
        let mut f = self.inner.lock().unwrap();
        f.received.push((addr, msg.clone()));
        let Some(node) = f.nodes.get_mut(&addr) else {
            return Err(format!("cannot connect to {addr}: connection refused"));
        };
        if let Some(reason) = node.failing.get(request_name(msg)) {
            return Err(reason.clone());
        }
        Ok(match msg {
            SdsControl::Claim {
                system_id,
                sds_id,
                devices,
                ..
            } => {
                if node.system_id != 0 && node.system_id != *system_id {
                    return Err(format!(
                        "device {} belongs to system {:016x}",
                        devices[0].path, node.system_id
                    ));
                }
                node.system_id = *system_id;
                node.sds_id = *sds_id;
                let mut reports = Vec::new();
                for d in devices {
                    if !node.devices.iter().any(|(id, _)| *id == d.device_id) {
                        node.devices.push((d.device_id, d.path.clone()));
                    }
                    reports.push(DeviceReport {
                        device_id: d.device_id,
                        path: d.path.clone(),
                        capacity_bytes: node.slots * CHUNK_SIZE + 4096,
                        slots: node.slots,
                    });
                }
                SdsControlReply::Claimed { devices: reports }
            }
            SdsControl::AllocateThick { volume, chunks } => {
                for &(chunk, device) in chunks {
                    node.chunks.insert((device, *volume, chunk));
                }
                SdsControlReply::Ok
            }
            SdsControl::FreeVolume { volume } => {
                node.chunks.retain(|c| c.1 != *volume);
                SdsControlReply::Ok
            }
            SdsControl::Inventory => SdsControlReply::Inventory(SdsInventory {
                system_id: node.system_id,
                sds_id: node.sds_id,
                devices: node
                    .devices
                    .iter()
                    .map(|(id, path)| DeviceInventory {
                        device_id: *id,
                        path: path.clone(),
                        slots: node.slots,
                        chunks: node
                            .chunks
                            .iter()
                            .filter(|c| c.0 == *id)
                            .map(|c| (c.1, c.2))
                            .collect(),
                    })
                    .collect(),
            }),
            SdsControl::Peers { .. } => SdsControlReply::Ok,
            SdsControl::FreeChunks { chunks } => {
                for (volume, chunk, device) in chunks {
                    node.chunks.remove(&(*device, *volume, *chunk));
                }
                SdsControlReply::Ok
            }
            SdsControl::Dirty { .. } => SdsControlReply::Dirty(Vec::new()),
            SdsControl::Release => SdsControlReply::Ok,
            SdsControl::ReleaseDevice { device } => {
                node.chunks.retain(|c| c.0 != *device);
                node.devices.retain(|d| d.0 != *device);
                SdsControlReply::Ok
            }
            SdsControl::Ping => SdsControlReply::Pong {
                system_id: node.system_id,
                sds_id: node.sds_id,
            },
        })
    }

    /// Copies the chunk's presence to the target's node, as the SDS would its data.
    async fn replicate(
        &self,
        addr: SocketAddr,
        at: crate::cluster::chunk::ChunkRef,
        target: crate::cluster::chunk::Mirror,
    ) -> Result<u64, String> {
        let mut f = self.inner.lock().unwrap();
        let Some(node) = f.nodes.get(&addr) else {
            return Err(format!("cannot connect to {addr}: connection refused"));
        };
        let held = node.chunks.contains(&(at.device, at.volume, at.chunk));
        let dest = f
            .nodes
            .values_mut()
            .find(|n| n.sds_id == target.sds)
            .ok_or_else(|| format!("SDS {:x} is not a peer", target.sds))?;
        if held {
            dest.chunks.insert((target.device, at.volume, at.chunk));
        }
        Ok(if held { CHUNK_SIZE } else { 0 })
    }
}
