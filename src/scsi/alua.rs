//! Asymmetric logical unit access (SPC-4 5.15), the implicit kind: INQUIRY says
//! TPGS = 01b and REPORT TARGET PORT GROUPS lists who serves the unit.
//!
//! Every gateway is a target port group of its own with exactly one target port, both
//! numbered with the gateway's portal group tag (the small number the MDM gives each
//! SDC; 1 for a standalone target). Any gateway can serve any I/O of a pool volume, so
//! every group is active/optimized and no group ever changes state: initiators may
//! spread I/O over all paths, and ESXi claims the device with its ALUA plugin.

use super::sense::Sense;
use super::{cdb, Ctx, Done, HandlerResult};
use std::sync::RwLock;

/// The target port groups (= gateways, by portal group tag) that serve a volume.
/// Shared by the volume's units and replaced by the gateway when the MDM's view
/// changes; empty means "only the port the command came through" (a local volume).
#[derive(Debug, Default)]
pub struct PortGroups(RwLock<Vec<u16>>);

impl PortGroups {
    pub fn set(&self, mut groups: Vec<u16>) {
        groups.sort_unstable();
        groups.dedup();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = groups;
    }

    /// The groups serving the unit as seen through port `via`, which always serves it.
    pub fn through(&self, via: u16) -> Vec<u16> {
        let mut g = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !g.contains(&via) {
            g.push(via);
            g.sort_unstable();
        }
        g
    }
}

/// Asymmetric access state active/optimized with PREF clear.
const ACTIVE_OPTIMIZED: u8 = 0x00;
/// Supported states: only AO_SUP, since no group ever leaves active/optimized.
const SUPPORTED_STATES: u8 = 0x01;

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN 0xA3 / 0x0A), both parameter data
/// formats: 000b (length only) and 001b (extended header).
pub(crate) fn report_target_port_groups(c: &Ctx<'_>) -> HandlerResult {
    let format = c.cdb[1] >> 5;
    if format > 1 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    let alloc = cdb::u32_at(c.cdb, 6).unwrap_or(0) as usize;
    let groups = c.unit.ports().through(c.nexus.tpgt);
    let mut d = vec![0u8; 4];
    if format == 1 {
        // FORMAT TYPE 001b; IMPLICIT TRANSITION TIME 0: no transitions ever happen.
        d.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    for g in groups {
        d.push(ACTIVE_OPTIMIZED);
        d.push(SUPPORTED_STATES);
        d.extend_from_slice(&g.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 1]); // reserved, status 0, vendor, one port
        d.extend_from_slice(&[0, 0]); // obsolete
        d.extend_from_slice(&g.to_be_bytes()); // its relative target port id
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Done::data(d, alloc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_always_include_the_port_asked_through() {
        let p = PortGroups::default();
        assert_eq!(p.through(1), vec![1]);
        p.set(vec![3, 1, 3]);
        assert_eq!(p.through(1), vec![1, 3]);
        assert_eq!(p.through(2), vec![1, 2, 3]);
    }
}
