//! One volume, two gateways: reservations and resets belong to the volume, so what a
//! host does through one gateway holds on the other by the time its command
//! completes. MDM, two SDS and two gateways as separate processes; one host logged in
//! to each gateway.

mod common;

use common::cluster::{logged_in, Cluster};
use common::{Initiator, ScsiResult};
use dreadnought::iscsi::pdu;

const HOST_A: &str = "iqn.1998-01.com.vmware:mp-host-a";
const HOST_B: &str = "iqn.1998-01.com.vmware:mp-host-b";
const RESERVATION_CONFLICT: u8 = 0x18;
const WRITE_EXCLUSIVE: u8 = 1;

fn cdb16(op: u8, lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn prout(i: &mut Initiator, sa: u8, kind: u8, key: u64, sa_key: u64) -> ScsiResult {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = sa;
    cdb[2] = kind;
    cdb[8] = 24;
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    i.scsi(&cdb, 24, Some(&p), 24)
}

fn write(i: &mut Initiator, fill: u8) -> ScsiResult {
    i.scsi(&cdb16(0x8A, 0), 512, Some(&[fill; 512]), 512)
}

fn sense(r: &ScsiResult) -> (u8, u8, u8) {
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

#[test]
fn a_reservation_and_a_reset_through_one_gateway_hold_on_the_other_at_once() {
    let c = Cluster::shared_volume(&[("host-a", HOST_A), ("host-b", HOST_B)]);
    let (_gw1, portal1) = c.gateway_named("gw1", false);
    let (_gw2, portal2) = c.gateway_named("gw2", false);
    let mut a = logged_in(portal1, HOST_A);
    let mut b = logged_in(portal2, HOST_B);
    assert_eq!(write(&mut b, 0xB0).status, 0);

    // A registers and takes WRITE EXCLUSIVE through gw1; B on gw2 is fenced from the
    // next command on, with no pause in between.
    assert_eq!(prout(&mut a, 0x00, 0, 0, 0xA).status, 0, "REGISTER");
    assert_eq!(
        prout(&mut a, 0x01, WRITE_EXCLUSIVE, 0xA, 0).status,
        0,
        "RESERVE"
    );
    assert_eq!(write(&mut b, 0xB1).status, RESERVATION_CONFLICT);
    assert_eq!(
        b.scsi(&cdb16(0x88, 0), 512, None, 0).status,
        0,
        "reads pass"
    );
    assert_eq!(write(&mut a, 0xA1).status, 0);

    // B sees A's reservation through its own gateway.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5E;
    cdb[1] = 0x01; // READ RESERVATION
    cdb[8] = 24;
    let r = b.scsi(&cdb, 24, None, 0);
    assert_eq!(r.status, 0);
    assert_eq!(u64::from_be_bytes(r.data[8..16].try_into().unwrap()), 0xA);
    assert_eq!(r.data[21] & 0x0F, WRITE_EXCLUSIVE);

    // Released through gw1: B writes again through gw2.
    assert_eq!(
        prout(&mut a, 0x02, WRITE_EXCLUSIVE, 0xA, 0).status,
        0,
        "RELEASE"
    );
    assert_eq!(write(&mut b, 0xB2).status, 0);

    // A LUN reset through gw1 is a unit attention for B on gw2 by the time A has its
    // TMF response.
    assert_eq!(
        a.tmf(pdu::tmf::LOGICAL_UNIT_RESET, 0xFFFF_FFFF),
        pdu::tmf_response::COMPLETE
    );
    let r = b.scsi(&[0u8; 6], 0, None, 0);
    assert_eq!(r.status, 2);
    assert_eq!(sense(&r), (0x06, 0x29, 0x03));
    assert_eq!(b.scsi(&[0u8; 6], 0, None, 0).status, 0);
    // The persistent registration survives the reset; unregister to leave it clean.
    assert_eq!(prout(&mut a, 0x00, 0, 0xA, 0).status, 2, "reset UA first");
    assert_eq!(prout(&mut a, 0x00, 0, 0xA, 0).status, 0, "unregister");
}
