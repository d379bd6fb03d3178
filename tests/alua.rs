//! Gateways as ALUA target port groups, and what a resize tells the initiators: MDM,
//! SDS and gateways as separate processes, the cluster changed with scli, and the test
//! initiator checking the SCSI answers.

mod common;

use common::cluster::{Cluster, GW_IQN};
use common::{key, keys, Initiator};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HOST_A: &str = "iqn.1998-01.com.vmware:alua-a";
const HOST_B: &str = "iqn.1998-01.com.vmware:alua-b";

/// A pool over two SDS with volume v1 (64 MiB, thin), mapped read-write to host A and
/// read-only to host B.
fn cluster() -> Cluster {
    let c = Cluster::with_pool(2, 1 << 30);
    c.add_volume("v1", "0.0625", &[]);
    for (name, iqn, access) in [("a", HOST_A, "read_write"), ("b", HOST_B, "read_only")] {
        c.add_host(name, iqn);
        c.map(name, "v1", &["--access_mode", access]);
    }
    c
}

/// Logged in as `host`, power-on unit attention cleared.
fn session(portal: SocketAddr, host: &str) -> Initiator {
    let mut i = Initiator::connect(portal);
    let r = i.login(host, GW_IQN, &[]);
    assert_eq!(r.status_class, 0, "{host} could not log in");
    i.clear_ua();
    i
}

/// The TargetPortalGroupTag a gateway declares in its first Login Response.
fn portal_group_tag(portal: SocketAddr, host: &str) -> String {
    let mut i = Initiator::connect(portal);
    let r = i.login_step(
        0,
        1,
        true,
        &[
            ("InitiatorName", host),
            ("TargetName", GW_IQN),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ],
    );
    key(&keys(&r.data), "TargetPortalGroupTag")
        .unwrap_or_default()
        .to_string()
}

/// (key, ASC, ASCQ) of fixed-format sense.
fn sense(s: &[u8]) -> (u8, u8, u8) {
    (s[2] & 0x0F, s[12], s[13])
}

fn capacity_bytes(i: &mut Initiator) -> u64 {
    let r = i.scsi(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8, None, 0);
    assert_eq!(r.status, 0, "READ CAPACITY(10): {:?}", r.sense);
    let last = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    (u64::from(last) + 1) * 512
}

#[test]
fn growing_a_volume_tells_every_nexus_and_shows_the_new_size() {
    let c = cluster();
    let (_gw, portal) = c.gateway(false);
    let mut rw = session(portal, HOST_A);
    let mut ro = session(portal, HOST_B);
    assert_eq!(capacity_bytes(&mut rw), 64 << 20);
    assert_eq!(capacity_bytes(&mut ro), 64 << 20);

    c.ok(&[
        "--modify_volume_capacity",
        "--volume_name",
        "v1",
        "--size_gb",
        "0.125",
    ]);
    // Both sessions, read-write and read-only, learn of it on their next command once
    // the gateway has the new layout, and then see the new size without logging in
    // again.
    for i in [&mut rw, &mut ro] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let r = i.scsi(&[0; 6], 0, None, 0);
            if r.status != 0 || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(r.status, 2, "no CAPACITY DATA HAS CHANGED within 10 s");
        assert_eq!(sense(&r.sense), (0x06, 0x2A, 0x09));
        assert_eq!(i.scsi(&[0; 6], 0, None, 0).status, 0, "reported once");
        assert_eq!(capacity_bytes(i), 128 << 20);
        let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
        let r = i.scsi(&rc16, 32, None, 0);
        let last = u64::from_be_bytes(r.data[..8].try_into().unwrap());
        assert_eq!(last + 1, (128 << 20) / 512);
    }
}

/// The designators of VPD page 0x83: (association and type byte, designator).
fn designators(page: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut v = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = page[at + 3] as usize;
        v.push((page[at + 1], page[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    v
}

#[test]
fn two_gateways_are_two_port_groups_of_one_logical_unit() {
    let c = cluster();
    let (_gw1, portal1) = c.gateway_named("gw1", false);
    let (_gw2, portal2) = c.gateway_named("gw2", false);
    let mut pages = Vec::new();
    for (portal, tag) in [(portal1, 1u16), (portal2, 2)] {
        assert_eq!(portal_group_tag(portal, HOST_A), tag.to_string());
        let mut i = session(portal, HOST_A);
        let r = i.scsi(&[0x12, 1, 0x83, 0, 255, 0], 255, None, 0);
        assert_eq!(r.status, 0);
        let d = designators(&r.data);
        let port = vec![0, 0, 0, tag as u8];
        assert!(
            d.contains(&(0x94, port.clone())),
            "relative port {tag}: {d:?}"
        );
        assert!(d.contains(&(0x95, port)), "port group {tag}: {d:?}");
        pages.push(d);
        // Both gateways serve the volume (an initiator is mapped to it): two groups,
        // active/optimized, eventually also on the gateway that registered first.
        let deadline = Instant::now() + Duration::from_secs(10);
        let groups = loop {
            let r = i.scsi(&[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, None, 0);
            assert_eq!(r.status, 0, "REPORT TARGET PORT GROUPS: {:?}", r.sense);
            let groups: Vec<(u8, u16, u16)> = r.data[4..]
                .chunks(12)
                .map(|g| {
                    let group = u16::from_be_bytes([g[2], g[3]]);
                    let port = u16::from_be_bytes([g[10], g[11]]);
                    (g[0] & 0x0F, group, port)
                })
                .collect();
            if groups.len() == 2 || Instant::now() > deadline {
                break groups;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(groups, [(0, 1, 1), (0, 2, 2)]);
    }
    // The logical unit's own designators are the same through both.
    let lu = |d: &[(u8, Vec<u8>)]| -> Vec<(u8, Vec<u8>)> {
        d.iter().filter(|(b, _)| b & 0x30 == 0).cloned().collect()
    };
    assert!(!lu(&pages[0]).is_empty());
    assert_eq!(lu(&pages[0]), lu(&pages[1]));
}
