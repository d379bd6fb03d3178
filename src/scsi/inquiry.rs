//! INQUIRY: standard data and the VPD pages.
//!
//! Logical block provisioning follows the backend: a thin one is reported as thin
//! provisioned with UNMAP and WRITE SAME deallocation (VPD 0xB2, unmap limits in 0xB0,
//! LBPME/LBPRZ in READ CAPACITY(16)); any other stays fully provisioned, so initiators
//! never send it deallocation hints it cannot honour.

use super::atomic::{
    ATOMIC_ALIGNMENT, ATOMIC_GRANULARITY, MAX_ATOMIC_BLOCKS, MAX_COMPARE_AND_WRITE_BLOCKS,
};
use super::capacity::OPTIMAL_GRANULARITY_BLOCKS;
use super::provisioning::{
    MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, UNMAP_GRANULARITY,
};
use super::rw::MAX_TRANSFER_BLOCKS;
use super::sense::{asc, Sense};
use super::{cdb, status, Ctx, Done, HandlerResult, Identity, Response};
use bytes::Bytes;

const VENDOR: &[u8; 8] = b"DREADNOT";
const PRODUCT: &[u8; 16] = b"Dreadnought     ";

/// Version descriptors: SAM-5, iSCSI (no version), SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];

/// VPD pages in ascending order (Supported VPD Pages must list them sorted).
/// Builds one VPD page.
type VpdBuilder = fn(&Ctx<'_>) -> Vec<u8>;

const VPD_PAGES: &[(u8, VpdBuilder)] = &[
    (0x00, supported_pages),
    (0x80, unit_serial),
    (0x83, device_identification),
    (0x8F, third_party_copy),
    (0xB0, block_limits),
    (0xB1, block_device_characteristics),
    (0xB2, logical_block_provisioning),
];

fn revision() -> [u8; 4] {
    let mut r = [b' '; 4];
    for (d, s) in r.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
        *d = s;
    }
    r
}

fn standard(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = peripheral;
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x08; // 3PC: EXTENDED COPY
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(&revision());
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Wraps a VPD page body in its 4-byte header (direct-access device, qualifier 0).
fn vpd(code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0x00, code];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(body);
    d
}

fn supported_pages(_: &Ctx<'_>) -> Vec<u8> {
    let codes: Vec<u8> = VPD_PAGES.iter().map(|(c, _)| *c).collect();
    vpd(0x00, &codes)
}

fn unit_serial(c: &Ctx<'_>) -> Vec<u8> {
    let id = c.unit.identity();
    vpd(0x80, id.serial.as_bytes())
}

/// Protocol identifier for iSCSI in designators with PIV set (SPC-4 7.6.1).
const PROTOCOL_ISCSI: u8 = 0x5;

/// Device Identification. The logical unit's designators (NAA, T10 vendor ID) are the
/// volume's and the same through every gateway; the relative target port and target
/// port group designators name the gateway the command came through (its portal group
/// tag numbers both), which is how a multipath initiator tells the paths apart.
fn device_identification(c: &Ctx<'_>) -> Vec<u8> {
    let id: &Identity = c.unit.identity();
    let mut body = Vec::new();
    // NAA IEEE Registered Extended, binary, associated with the logical unit.
    body.extend_from_slice(&[0x01, 0x03, 0x00, id.naa.len() as u8]);
    body.extend_from_slice(&id.naa);
    // T10 vendor ID: vendor followed by the volume name, ASCII.
    let mut t10 = VENDOR.to_vec();
    t10.extend(
        id.name
            .bytes()
            .filter(|b| (0x20..0x7F).contains(b))
            .take(200),
    );
    body.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    body.extend_from_slice(&t10);
    let port = c.nexus.tpgt.to_be_bytes();
    // Binary, PIV, association 01b (target port): type 4 relative target port, then
    // type 5 target port group.
    for kind in [0x94, 0x95] {
        body.extend_from_slice(&[PROTOCOL_ISCSI << 4 | 0x01, kind, 0x00, 4]);
        body.extend_from_slice(&[0, 0, port[0], port[1]]);
    }
    vpd(0x83, &body)
}

fn third_party_copy(_: &Ctx<'_>) -> Vec<u8> {
    vpd(0x8F, &super::copy::third_party_copy_vpd())
}

fn block_limits(c: &Ctx<'_>) -> Vec<u8> {
    let u = c.unit;
    let mut b = vec![0u8; 0x3C];
    // Limits that keep a COMPARE AND WRITE or WRITE ATOMIC inside one chunk (see
    // `atomic`); the "with atomic boundary" pair stays 0: no boundary-split writes.
    b[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
    b[40..44].copy_from_slice(&MAX_ATOMIC_BLOCKS.to_be_bytes());
    b[44..48].copy_from_slice(&ATOMIC_ALIGNMENT.to_be_bytes());
    b[48..52].copy_from_slice(&ATOMIC_GRANULARITY.to_be_bytes());
    // Optimal granularity: 4 KiB.
    b[2..4].copy_from_slice(&(OPTIMAL_GRANULARITY_BLOCKS as u16).to_be_bytes());
    b[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    b[8..12].copy_from_slice(&(1024u32 * 1024 / 512).to_be_bytes());
    b[12..16].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    // WSNZ=0: WRITE SAME with zero blocks reaches the end of the medium (within the
    // maximum below). Unmap limits stay 0 unless UNMAP is offered (LBPU).
    if u.backend().thin() {
        b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[24..28].copy_from_slice(&UNMAP_GRANULARITY.to_be_bytes());
        // UGAVALID with alignment 0: granules start at LBA 0.
        b[28] = 0x80;
    }
    b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    vpd(0xB0, &b)
}

fn block_device_characteristics(_: &Ctx<'_>) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
                                                  // WABEREQ 01b and WACEREQ 01b: after a SANITIZE BLOCK ERASE or CRYPTOGRAPHIC ERASE
                                                  // reads succeed (and return zeros) without a write first.
    b[3] = 0x50;
    vpd(0xB1, &b)
}

fn logical_block_provisioning(c: &Ctx<'_>) -> Vec<u8> {
    let u = c.unit;
    if !u.backend().thin() {
        // No LBPU/LBPWS/LBPWS10, provisioning type 0 (full): matches LBPME=0.
        return vpd(0xB2, &[0, 0, 0, 0]);
    }
    // Threshold exponent 0: no provisioning thresholds. LBPU, LBPWS, LBPWS10 and LBPRZ
    // (as READ CAPACITY(16) says); ANC_SUP=0, DP=0; provisioning type 2 (thin).
    vpd(0xB2, &[0, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0])
}

pub(crate) fn inquiry(c: &Ctx<'_>) -> HandlerResult {
    let alloc = usize::from(cdb::u16_at(c.cdb, 3).unwrap_or(0));
    let evpd = c.cdb[1] & 0x01 != 0;
    if c.cdb[1] & 0xFE != 0 {
        return Err(Sense::invalid_cdb(1, Some(1)));
    }
    let page = c.cdb[2];
    if !evpd {
        if page != 0 {
            return Err(Sense::invalid_cdb(2, None));
        }
        let mut d = standard(0x00);
        d[5] |= 0x10; // TPGS 01b: implicit ALUA (REPORT TARGET PORT GROUPS)
        return Ok(Done::data(d, alloc));
    }
    match VPD_PAGES.iter().find(|(code, _)| *code == page) {
        Some((_, build)) => Ok(Done::data(build(c), alloc)),
        None => Err(Sense::invalid_cdb(2, None)),
    }
}

/// INQUIRY for a LUN the nexus cannot reach: standard data with peripheral qualifier
/// 011b / type 1Fh, so the initiator's scan stops there instead of failing.
pub(crate) fn absent_lun(cdb: &[u8]) -> Response {
    let (Some(&b1), Some(&page), Some(alloc)) = (cdb.get(1), cdb.get(2), cdb::u16_at(cdb, 3))
    else {
        return Response {
            status: status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: Sense::invalid_cdb(cdb.len(), None).encode(false),
        };
    };
    if b1 & 0x01 != 0 || page != 0 {
        return Response {
            status: status::CHECK_CONDITION,
            data_in: Bytes::new(),
            sense: Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED).encode(false),
        };
    }
    let mut d = standard(0x7F);
    d.truncate(usize::from(alloc));
    Response {
        status: status::GOOD,
        data_in: d.into(),
        sense: Bytes::new(),
    }
}
