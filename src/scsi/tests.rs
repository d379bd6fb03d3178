//! Engine tests through the public entry point, against a MemoryBackend.

use super::*;
use crate::backend::{
    AtomicOp, AtomicOutcome, BackendError, BlockBackend, MemoryBackend, Provisioning,
};
use async_trait::async_trait;
use rand::{Rng, SeedableRng};

const BLOCKS: u64 = 1024;

fn nexus(i: u8) -> ItNexus {
    ItNexus {
        initiator: Arc::from("iqn.2024-01.test:init"),
        isid: [0x80, 0, 0, 0, 0, i],
        tpgt: 1,
    }
}

fn unit_with(backend: Arc<dyn BlockBackend>, read_only: bool) -> LunMap {
    let u = LogicalUnit::new(
        backend,
        Identity::from_volume_id("vol0", 0x1234),
        read_only,
        Arc::new(super::shared::LocalStore::new()),
    );
    let mut m = LunMap::new();
    m.insert(0, Arc::new(u));
    m
}

fn lun_map(read_only: bool) -> LunMap {
    unit_with(Arc::new(MemoryBackend::new(BLOCKS)), read_only)
}

async fn run(luns: &LunMap, n: &ItNexus, cdb: &[u8], out: Vec<u8>) -> Response {
    execute(
        luns,
        n,
        Request {
            lun: 0,
            cdb: Bytes::copy_from_slice(cdb),
            data_out: out.into(),
        },
    )
    .await
}

/// Runs a command after clearing the initial power-on unit attention.
async fn cmd(luns: &LunMap, cdb: &[u8], out: Vec<u8>) -> Response {
    let n = nexus(1);
    clear_ua(luns, &n).await;
    run(luns, &n, cdb, out).await
}

async fn clear_ua(luns: &LunMap, n: &ItNexus) {
    while run(luns, n, &[0; 6], vec![]).await.status != status::GOOD {}
}

/// (key, asc, ascq) from fixed or descriptor sense.
fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
    let s = &r.sense;
    match s[0] & 0x7F {
        0x70 => (s[2] & 0x0F, s[12], s[13]),
        0x72 => (s[1] & 0x0F, s[2], s[3]),
        other => panic!("bad response code {other:#x}"),
    }
}

fn rw10(op: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![op, flags, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw12(op: u8, flags: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

const ILLEGAL: u8 = 0x05;

#[tokio::test]
async fn unit_attention_delivered_once_and_not_to_inquiry() {
    let luns = lun_map(false);
    let n = nexus(1);
    let r = run(&luns, &n, &[0x12, 0, 0, 0, 36, 0], vec![]).await;
    assert_eq!(r.status, status::GOOD);
    let r = run(&luns, &n, &[0; 6], vec![]).await;
    assert_eq!(sense_of(&r), (0x06, 0x29, 0x00));
    let r = run(&luns, &n, &[0; 6], vec![]).await;
    assert_eq!(r.status, status::GOOD);
}

#[tokio::test]
async fn request_sense_reports_and_clears_unit_attention() {
    let luns = lun_map(false);
    let n = nexus(1);
    let r = run(&luns, &n, &[0x03, 0, 0, 0, 252, 0], vec![]).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(
        (r.data_in[0], r.data_in[2], r.data_in[12]),
        (0x70, 0x06, 0x29)
    );
    let r = run(&luns, &n, &[0x03, 1, 0, 0, 252, 0], vec![]).await;
    assert_eq!(&r.data_in[..4], &[0x72, 0, 0, 0]);
    assert_eq!(run(&luns, &n, &[0; 6], vec![]).await.status, status::GOOD);
}

#[tokio::test]
async fn resets_raise_the_right_unit_attention_and_clear_prevent() {
    let luns = lun_map(false);
    let u = luns[&0].clone();
    let n = nexus(1);
    clear_ua(&luns, &n).await;
    assert_eq!(
        run(&luns, &n, &[0x1E, 0, 0, 0, 1, 0], vec![]).await.status,
        status::GOOD
    );
    let eject = [0x1B, 0, 0, 0, 0x02, 0];
    assert_eq!(
        sense_of(&run(&luns, &n, &eject, vec![]).await),
        (ILLEGAL, 0x53, 0x02)
    );
    // Another nexus is blocked too: prevention is per unit, held per nexus.
    let n2 = nexus(2);
    clear_ua(&luns, &n2).await;
    assert_eq!(
        sense_of(&run(&luns, &n2, &eject, vec![]).await),
        (ILLEGAL, 0x53, 0x02)
    );

    u.reset(ResetKind::LogicalUnit).await;
    assert_eq!(
        sense_of(&run(&luns, &n, &[0; 6], vec![]).await),
        (0x06, 0x29, 0x03)
    );
    assert_eq!(run(&luns, &n, &eject, vec![]).await.status, status::GOOD);
    u.reset(ResetKind::TargetCold).await;
    assert_eq!(
        sense_of(&run(&luns, &n, &[0; 6], vec![]).await),
        (0x06, 0x29, 0x01)
    );
    u.reset(ResetKind::TargetWarm).await;
    assert_eq!(
        sense_of(&run(&luns, &n, &[0; 6], vec![]).await),
        (0x06, 0x29, 0x03)
    );
}

#[tokio::test]
async fn nexus_loss_forgets_prevent_and_restarts_with_power_on() {
    let luns = lun_map(false);
    let u = luns[&0].clone();
    let n = nexus(1);
    clear_ua(&luns, &n).await;
    run(&luns, &n, &[0x1E, 0, 0, 0, 1, 0], vec![]).await;
    u.nexus_lost(&n).await;
    assert_eq!(
        sense_of(&run(&luns, &n, &[0; 6], vec![]).await),
        (0x06, 0x29, 0x00)
    );
    let r = run(&luns, &n, &[0x1B, 0, 0, 0, 0x02, 0], vec![]).await;
    assert_eq!(r.status, status::GOOD);
}

#[tokio::test]
async fn unknown_opcode_and_bad_service_action() {
    let luns = lun_map(false);
    assert_eq!(
        sense_of(&cmd(&luns, &[0xC5, 0, 0, 0, 0, 0], vec![]).await),
        (ILLEGAL, 0x20, 0x00)
    );
    let r = cmd(
        &luns,
        &[0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        vec![],
    )
    .await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    // Field pointer on byte 1: libiscsi reads that as "not implemented".
    assert_eq!(&r.sense[15..18], &[0xCC, 0, 1]);
    assert_eq!(
        sense_of(&cmd(&luns, &[], vec![]).await),
        (ILLEGAL, 0x20, 0x00)
    );
}

#[tokio::test]
async fn absent_lun_handling() {
    let luns = lun_map(false);
    let n = nexus(1);
    let req = |cdb: &[u8]| Request {
        lun: 7,
        cdb: Bytes::copy_from_slice(cdb),
        data_out: SgList::new(),
    };
    let r = execute(&luns, &n, req(&[0; 6])).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x25, 0x00));
    let r = execute(&luns, &n, req(&[0x12, 0, 0, 0, 96, 0])).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.data_in[0], 0x7F);
    let r = execute(&luns, &n, req(&[0x03, 0, 0, 0, 18, 0])).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!((r.data_in[2], r.data_in[12]), (ILLEGAL, 0x25));
    let r = execute(&luns, &n, req(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])).await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&r.data_in[..4], &[0, 0, 0, 8]);
}

#[tokio::test]
async fn report_luns_selects_and_allocation_length() {
    let mut luns = lun_map(false);
    let second = luns[&0].clone();
    luns.insert(300, second);
    let r = cmd(&luns, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], vec![]).await;
    assert_eq!(&r.data_in[..4], &[0, 0, 0, 16]);
    assert_eq!(&r.data_in[8..16], &encode_lun(0).to_be_bytes());
    assert_eq!(&r.data_in[16..24], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
    let r = cmd(&luns, &[0xA0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], vec![]).await;
    assert_eq!(&r.data_in[..], &[0, 0, 0, 0, 0, 0, 0, 0]);
    let r = cmd(&luns, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&luns, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], vec![]).await;
    assert_eq!(r.data_in.len(), 16);
    let r = cmd(&luns, &[0xA0, 0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[tokio::test]
async fn write_then_read_all_sizes() {
    let luns = lun_map(false);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 10, 2), data.clone()).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw10(0x28, 0x18, 10, 2), vec![]).await.data_in,
        &data[..]
    );
    assert_eq!(
        cmd(&luns, &rw12(0xA8, 0, 10, 2), vec![]).await.data_in,
        &data[..]
    );
    assert_eq!(
        cmd(&luns, &rw16(0x88, 0, 10, 2), vec![]).await.data_in,
        &data[..]
    );
    assert_eq!(
        cmd(&luns, &[0x08, 0, 0, 10, 2, 0], vec![]).await.data_in,
        &data[..]
    );
    // WRITE(16) with FUA, WRITE(12), WRITE(6)
    assert_eq!(
        cmd(&luns, &rw16(0x8A, 0x08, 20, 2), data.clone())
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw12(0xAA, 0x10, 30, 2), data.clone())
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &[0x0A, 0, 0, 40, 2, 0], data.clone())
            .await
            .status,
        status::GOOD
    );
    for lba in [20u32, 30, 40] {
        assert_eq!(
            cmd(&luns, &rw10(0x28, 0, lba, 2), vec![]).await.data_in,
            &data[..]
        );
    }
    // READ(6) with length 0 transfers 256 blocks.
    assert_eq!(
        cmd(&luns, &[0x08, 0, 0, 0, 0, 0], vec![])
            .await
            .data_in
            .len(),
        256 * 512
    );
}

#[tokio::test]
async fn range_and_field_errors() {
    let luns = lun_map(false);
    let oob = (ILLEGAL, 0x21, 0x00);
    assert_eq!(
        sense_of(&cmd(&luns, &rw10(0x28, 0, BLOCKS as u32 + 1, 0), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw10(0x28, 0, BLOCKS as u32 - 1, 2), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw16(0x88, 0, u64::MAX, 1), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw10(0x2A, 0, u32::MAX, 0), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw16(0x8F, 0x02, BLOCKS, 1), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw10(0x34, 0, BLOCKS as u32, 1), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rw16(0x91, 0, BLOCKS + 1, 0), vec![]).await),
        oob
    );
    assert_eq!(
        sense_of(&cmd(&luns, &[0x08, 0x1F, 0xFF, 0xFF, 1, 0], vec![]).await),
        oob
    );
    // Zero-length transfers are fine.
    assert_eq!(
        cmd(&luns, &rw10(0x28, 0, 0, 0), vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 0, 0), vec![]).await.status,
        status::GOOD
    );
    // RDPROTECT/WRPROTECT/VRPROTECT without protection information.
    for p in 1..8u8 {
        for op in [0x28u8, 0x2A, 0x2F, 0x2E] {
            let r = cmd(&luns, &rw10(op, p << 5, 0, 1), vec![0; 512]).await;
            assert_eq!(
                sense_of(&r),
                (ILLEGAL, 0x24, 0x00),
                "op {op:#x} protect {p}"
            );
        }
    }
    // Over the advertised maximum transfer length.
    let r = cmd(
        &luns,
        &rw16(0x88, 0, 0, rw::MAX_TRANSFER_BLOCKS + 1),
        vec![],
    )
    .await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    // NACA in the control byte.
    let mut c = rw10(0x28, 0, 0, 1);
    c[9] = 0x04;
    assert_eq!(
        sense_of(&cmd(&luns, &c, vec![]).await),
        (ILLEGAL, 0x24, 0x00)
    );
    // Prefetch and sync cache inside the volume.
    assert_eq!(
        cmd(&luns, &rw10(0x34, 0x02, 0, 256), vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw16(0x90, 0, BLOCKS - 1, 1), vec![])
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw10(0x35, 0, 0, 0), vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw16(0x91, 0, 0, 8), vec![]).await.status,
        status::GOOD
    );
}

#[tokio::test]
async fn write_uses_what_arrived() {
    let luns = lun_map(false);
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 0, 2), vec![b'a'; 1024])
            .await
            .status,
        status::GOOD
    );
    // 200 bytes for a 1-block write: those 200 land, the rest of the block stays.
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 0, 1), vec![b'b'; 200])
            .await
            .status,
        status::GOOD
    );
    let d = cmd(&luns, &rw10(0x28, 0, 0, 2), vec![]).await.data_in;
    assert!(d[..200].iter().all(|&b| b == b'b'));
    assert!(d[200..].iter().all(|&b| b == b'a'));
    // More Data-Out than the CDB asks for: only the CDB's blocks are written.
    assert_eq!(
        cmd(&luns, &rw10(0x2E, 0x02, 0, 1), vec![b'c'; 1024])
            .await
            .status,
        status::GOOD
    );
    let d = cmd(&luns, &rw10(0x28, 0, 0, 2), vec![]).await.data_in;
    assert!(d[..512].iter().all(|&b| b == b'c'));
    assert!(d[512..].iter().all(|&b| b == b'a'));
    // No Data-Out at all writes nothing.
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 0, 1), vec![]).await.status,
        status::GOOD
    );
    // WRITE AND VERIFY with reserved BYTCHK.
    let r = cmd(&luns, &rw10(0x2E, 0x04, 0, 1), vec![0; 512]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[tokio::test]
async fn read_only_unit_refuses_writes() {
    let luns = lun_map(true);
    for c in [
        rw10(0x2A, 0, 0, 1),
        rw12(0xAA, 0, 0, 1),
        rw16(0x8A, 0, 0, 1),
        rw10(0x2E, 2, 0, 1),
    ] {
        let r = cmd(&luns, &c, vec![0; 512]).await;
        assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
    }
    let r = cmd(&luns, &[0x1A, 0, 0x3F, 0, 255, 0], vec![]).await;
    assert_eq!(r.data_in[2] & 0x80, 0x80);
    assert_eq!(
        cmd(&luns, &rw10(0x28, 0, 0, 1), vec![]).await.status,
        status::GOOD
    );
}

#[tokio::test]
async fn verify_compares() {
    let luns = lun_map(false);
    let data: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
    cmd(&luns, &rw10(0x2A, 0, 4, 4), data.clone()).await;
    assert_eq!(
        cmd(&luns, &rw10(0x2F, 0x02, 4, 4), data.clone())
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw12(0xAF, 0x12, 4, 4), data.clone())
            .await
            .status,
        status::GOOD
    );
    let mut bad = data.clone();
    bad[1234] ^= b'X';
    let r = cmd(&luns, &rw16(0x8F, 0x02, 4, 4), bad.clone()).await;
    assert_eq!(sense_of(&r), (0x0E, 0x1D, 0x00));
    assert_eq!(r.sense[0], 0xF0);
    assert_eq!(u32::from_be_bytes(r.sense[3..7].try_into().unwrap()), 1234);
    // BYTCHK 0 does not look at the data.
    assert_eq!(
        cmd(&luns, &rw10(0x2F, 0, 4, 4), bad).await.status,
        status::GOOD
    );
    // Short Data-Out compares what is present.
    assert_eq!(
        cmd(&luns, &rw10(0x2F, 0x02, 4, 4), data[..100].to_vec())
            .await
            .status,
        status::GOOD
    );
    // BYTCHK 3: one block against each.
    cmd(&luns, &rw10(0x2A, 0, 8, 2), vec![9; 1024]).await;
    assert_eq!(
        cmd(&luns, &rw10(0x2F, 0x06, 8, 2), vec![9; 512])
            .await
            .status,
        status::GOOD
    );
    let r = cmd(&luns, &rw10(0x2F, 0x06, 7, 2), vec![9; 512]).await;
    assert_eq!(sense_of(&r), (0x0E, 0x1D, 0x00));
    let r = cmd(&luns, &rw10(0x2F, 0x04, 8, 2), vec![9; 512]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[tokio::test]
async fn d_sense_switches_format_and_notifies_other_nexus() {
    let luns = lun_map(false);
    let n1 = nexus(1);
    let n2 = nexus(2);
    clear_ua(&luns, &n1).await;
    clear_ua(&luns, &n2).await;
    let r = run(&luns, &n1, &rw16(0x88, 0, u64::MAX, 1), vec![]).await;
    assert_eq!(r.sense[0], 0x70);

    let ms = run(&luns, &n1, &[0x1A, 0x08, 0x0A, 0, 255, 0], vec![]).await;
    assert_eq!(ms.status, status::GOOD);
    let mut page = ms.data_in[4..].to_vec();
    assert_eq!(&page[..2], &[0x0A, 0x0A]);
    page[2] |= 0x04;
    let mut list = vec![0u8; 4];
    list.extend_from_slice(&page);
    let sel = [0x15, 0x10, 0, 0, list.len() as u8, 0];
    assert_eq!(run(&luns, &n1, &sel, list).await.status, status::GOOD);

    let r = run(&luns, &n1, &rw16(0x88, 0, u64::MAX, 1), vec![]).await;
    assert_eq!(r.sense[0], 0x72);
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    // The other nexus hears about it, in the new format.
    let r = run(&luns, &n2, &[0; 6], vec![]).await;
    assert_eq!(r.sense[0], 0x72);
    assert_eq!(sense_of(&r), (0x06, 0x2A, 0x01));
    assert_eq!(run(&luns, &n1, &[0; 6], vec![]).await.status, status::GOOD);
    let ms = run(
        &luns,
        &n1,
        &[0x5A, 0x08, 0x0A, 0, 0, 0, 0, 0, 255, 0],
        vec![],
    )
    .await;
    assert_eq!(ms.data_in[8 + 2] & 0x04, 0x04);
}

#[tokio::test]
async fn mode_sense_variants() {
    let luns = lun_map(false);
    let all = cmd(&luns, &[0x1A, 0, 0x3F, 0, 255, 0], vec![]).await;
    assert_eq!(all.status, status::GOOD);
    let d = &all.data_in;
    assert_eq!(d[0] as usize, d.len() - 1);
    assert_eq!(d[2], 0x10); // DPOFUA, not write protected
    assert_eq!(d[3], 8);
    assert_eq!(
        u32::from_be_bytes(d[4..8].try_into().unwrap()),
        BLOCKS as u32
    );
    // Pages follow in order: 01, 08, 0A, 1C.
    let mut codes = vec![];
    let mut off = 12;
    while off < d.len() {
        codes.push(d[off] & 0x3F);
        off += 2 + d[off + 1] as usize;
    }
    assert_eq!(codes, vec![0x01, 0x08, 0x0A, 0x1C]);
    let r = cmd(&luns, &[0x1A, 0, 0x3F, 0, 4, 0], vec![]).await;
    assert_eq!(r.data_in.len(), 4);
    let r = cmd(&luns, &[0x1A, 0x08, 0x08, 0, 255, 0], vec![]).await;
    assert_eq!(r.data_in[3], 0);
    assert_eq!(r.data_in[4 + 2] & 0x04, 0x04);
    let r = cmd(&luns, &[0x1A, 0x08, 0x48, 0, 255, 0], vec![]).await;
    assert_eq!(r.data_in[4 + 2], 0x04, "changeable mask");
    assert_eq!(
        cmd(&luns, &[0x1A, 0x08, 0x88, 0, 255, 0], vec![])
            .await
            .status,
        status::GOOD
    );
    let r = cmd(&luns, &[0x1A, 0, 0xC8, 0, 255, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x39, 0x00));
    let r = cmd(&luns, &[0x1A, 0, 0x25, 0, 255, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&luns, &[0x1A, 0, 0x08, 0x05, 255, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    assert_eq!(
        cmd(&luns, &[0x1A, 0, 0x3F, 0xFF, 255, 0], vec![])
            .await
            .status,
        status::GOOD
    );
    // MODE SENSE(10) with LLBAA: long block descriptor.
    let r = cmd(&luns, &[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 1, 0, 0], vec![]).await;
    assert_eq!(r.data_in[4] & 1, 1);
    assert_eq!(u16::from_be_bytes([r.data_in[6], r.data_in[7]]), 16);
    assert_eq!(
        u64::from_be_bytes(r.data_in[8..16].try_into().unwrap()),
        BLOCKS
    );
}

#[tokio::test]
async fn mode_select_validation_and_swp() {
    let luns = lun_map(false);
    let control = |b2: u8, b4: u8| {
        let mut v = vec![0u8; 4];
        v.extend_from_slice(&[0x0A, 0x0A, b2, 0x10, b4, 0, 0, 0, 0xFF, 0xFF, 0, 0]);
        v
    };
    // SP is not supported.
    let r = cmd(&luns, &[0x15, 0x11, 0, 0, 16, 0], control(0, 0)).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    // A non-changeable bit (TST) is refused.
    let r = cmd(&luns, &[0x15, 0x10, 0, 0, 16, 0], control(0x20, 0)).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00));
    assert_eq!(&r.sense[15..18], &[0x80 | 0x08 | 5, 0, 6]);
    // Wrong page length.
    let mut bad = control(0, 0);
    bad[5] = 0x0B;
    bad.push(0);
    let r = cmd(&luns, &[0x15, 0x10, 0, 0, 17, 0], bad).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00));
    // Unknown page.
    let r = cmd(
        &luns,
        &[0x15, 0x10, 0, 0, 8, 0],
        vec![0, 0, 0, 0, 0x19, 2, 0, 0],
    )
    .await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00));
    // Truncated header.
    let r = cmd(&luns, &[0x15, 0x10, 0, 0, 2, 0], vec![0, 0]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x1A, 0x00));
    // SWP on: writes are software write protected, reads still work, WP reported.
    assert_eq!(
        cmd(&luns, &[0x15, 0x10, 0, 0, 16, 0], control(0, 0x08))
            .await
            .status,
        status::GOOD
    );
    let r = cmd(&luns, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x02));
    assert_eq!(
        cmd(&luns, &rw10(0x28, 0, 0, 1), vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &[0x1A, 0, 0x0A, 0, 255, 0], vec![])
            .await
            .data_in[2]
            & 0x80,
        0x80
    );
    assert_eq!(
        cmd(&luns, &[0x15, 0x10, 0, 0, 16, 0], control(0, 0))
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await.status,
        status::GOOD
    );
    // MODE SELECT(10) with a block descriptor, clearing WCE.
    let mut v = vec![0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 2, 0];
    v.extend_from_slice(&[0x08, 0x12, 0, 0, 0xFF, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    v.extend_from_slice(&[0; 8]);
    let c = [0x55, 0x10, 0, 0, 0, 0, 0, 0, v.len() as u8, 0];
    assert_eq!(cmd(&luns, &c, v).await.status, status::GOOD);
    assert!(luns[&0].write_through());
}

#[tokio::test]
async fn inquiry_pages() {
    let luns = lun_map(false);
    let r = cmd(&luns, &[0x12, 0, 0, 1, 0, 0], vec![]).await;
    let d = &r.data_in;
    assert_eq!(d.len(), 96);
    assert_eq!((d[0], d[2], d[3] & 0x0F), (0, 0x06, 2));
    assert_eq!(d[4] as usize, d.len() - 5);
    assert_eq!(
        &d[58..66],
        &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
    );
    assert_eq!(
        cmd(&luns, &[0x12, 0, 0, 0, 5, 0], vec![])
            .await
            .data_in
            .len(),
        5
    );
    assert_eq!(
        cmd(&luns, &[0x12, 0, 0, 0, 0, 0], vec![])
            .await
            .data_in
            .len(),
        0
    );
    let r = cmd(&luns, &[0x12, 0, 0x80, 0, 255, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&luns, &[0x12, 1, 0x00, 0, 255, 0], vec![]).await;
    let pages = r.data_in[4..].to_vec();
    assert_eq!(pages, vec![0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]);
    for p in pages {
        let r = cmd(&luns, &[0x12, 1, p, 0, 255, 0], vec![]).await;
        assert_eq!(r.status, status::GOOD);
        assert_eq!(r.data_in[1], p);
        let len = u16::from_be_bytes([r.data_in[2], r.data_in[3]]) as usize;
        assert_eq!(r.data_in.len(), len + 4);
    }
    let r = cmd(&luns, &[0x12, 1, 0x80, 0, 255, 0], vec![]).await;
    assert_eq!(&r.data_in[4..], b"0000000000001234");
    let r = cmd(&luns, &[0x12, 1, 0x83, 0, 255, 0], vec![]).await;
    assert_eq!(&r.data_in[4..8], &[0x01, 0x03, 0x00, 16]);
    assert_eq!(r.data_in[8] >> 4, 6);
    assert_eq!(&r.data_in[16..24], &0x1234u64.to_be_bytes());
    let r = cmd(&luns, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await;
    assert_eq!(r.data_in[3], 0x3C);
    // MemoryBackend is thin: UNMAP limits, WRITE SAME limit, LBPU/LBPWS/LBPWS10/LBPRZ.
    assert_eq!(r.data_in[4] & 0x01, 0, "WSNZ");
    assert_eq!(&r.data_in[20..24], &(1024u32 * 1024).to_be_bytes());
    assert_eq!(&r.data_in[24..28], &256u32.to_be_bytes());
    assert_eq!(&r.data_in[28..32], &8u32.to_be_bytes());
    assert_eq!(r.data_in[32], 0x80);
    assert_eq!(&r.data_in[36..44], &16384u64.to_be_bytes());
    let r = cmd(&luns, &[0x12, 1, 0xB1, 0, 255, 0], vec![]).await;
    assert_eq!(&r.data_in[4..6], &[0, 1]);
    let r = cmd(&luns, &[0x12, 1, 0xB2, 0, 255, 0], vec![]).await;
    assert_eq!(&r.data_in[4..8], &[0, 0xE4, 0x02, 0]);
    let r = cmd(&luns, &[0x12, 1, 0x99, 0, 255, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[tokio::test]
async fn read_capacity() {
    let luns = lun_map(false);
    let r = cmd(&luns, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![]).await;
    assert_eq!(&r.data_in[..], &[0, 0, 3, 0xFF, 0, 0, 2, 0]);
    let r = cmd(&luns, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let rc16 = |alloc: u8| [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, alloc, 0, 0];
    let r = cmd(&luns, &rc16(32), vec![]).await;
    assert_eq!(r.data_in.len(), 32);
    assert_eq!(
        u64::from_be_bytes(r.data_in[..8].try_into().unwrap()),
        BLOCKS - 1
    );
    assert_eq!(
        r.data_in[14] & 0xC0,
        0xC0,
        "LBPME and LBPRZ on a thin backend"
    );
    for alloc in 0..16 {
        let r = cmd(&luns, &rc16(alloc), vec![]).await;
        assert_eq!((r.status, r.data_in.len()), (status::GOOD, alloc as usize));
    }
}

#[tokio::test]
async fn report_supported_opcodes_formats() {
    let luns = lun_map(false);
    let rsoc = |opts: u8, op: u8, sa: u16| {
        let mut c = vec![0xA3, 0x0C, opts, op, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c
    };
    let r = cmd(&luns, &rsoc(0, 0, 0), vec![]).await;
    let len = u32::from_be_bytes(r.data_in[..4].try_into().unwrap()) as usize;
    assert_eq!(len, OPS.len() * 8);
    assert_eq!(r.data_in.len(), len + 4);
    for (i, op) in OPS.iter().enumerate() {
        let d = &r.data_in[4 + 8 * i..12 + 8 * i];
        assert_eq!(d[0], op.opcode);
        assert_eq!(d[5] & 1, op.sa.is_some() as u8);
        assert_eq!(u16::from_be_bytes([d[6], d[7]]) as usize, op.usage.len());
    }
    let r = cmd(&luns, &rsoc(0x80, 0, 0), vec![]).await;
    assert_eq!(r.data_in.len(), 4 + OPS.len() * 20);
    assert_eq!(r.data_in[4 + 5] & 0x02, 0x02);
    assert_eq!(&r.data_in[12..14], &[0, 0x0A]);
    // One command: READ(10) advertises DPO and FUA.
    let r = cmd(&luns, &rsoc(1, 0x28, 0), vec![]).await;
    assert_eq!(r.data_in[1] & 0x07, 3);
    assert_eq!(&r.data_in[2..4], &[0, 10]);
    assert_eq!(r.data_in[4], 0x28);
    assert_eq!(r.data_in[5] & 0x18, 0x18);
    let r = cmd(&luns, &rsoc(0x81, 0x2F, 0), vec![]).await;
    assert_eq!(r.data_in[1], 0x83);
    assert_eq!(r.data_in.len(), 4 + 10 + 12);
    // Service-action commands need option 2, others option 1.
    assert_eq!(
        sense_of(&cmd(&luns, &rsoc(1, 0x9E, 0x10), vec![]).await).1,
        0x24
    );
    assert_eq!(
        sense_of(&cmd(&luns, &rsoc(2, 0x28, 0), vec![]).await).1,
        0x24
    );
    let r = cmd(&luns, &rsoc(2, 0x9E, 0x10), vec![]).await;
    assert_eq!((r.data_in[1], r.data_in[4], r.data_in[5]), (3, 0x9E, 0x10));
    let r = cmd(&luns, &rsoc(2, 0x9E, 0x11), vec![]).await;
    assert_eq!(r.data_in[1] & 7, 1);
    let r = cmd(&luns, &rsoc(1, 0xC5, 0), vec![]).await;
    assert_eq!(&r.data_in[..], &[0, 1, 0, 0]);
    let r = cmd(&luns, &rsoc(3, 0x28, 0), vec![]).await;
    assert_eq!(r.data_in[1] & 7, 3);
    assert_eq!(sense_of(&cmd(&luns, &rsoc(5, 0, 0), vec![]).await).1, 0x24);
    let mut short = rsoc(0, 0, 0);
    short[6..10].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(cmd(&luns, &short, vec![]).await.data_in.len(), 8);
}

#[tokio::test]
async fn misc_commands() {
    let luns = lun_map(false);
    let r = cmd(&luns, &[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0], vec![]).await;
    assert_eq!(&r.data_in[..], &[0, 0x1D, 0, 0]);
    let r = cmd(&luns, &[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], vec![]).await;
    assert_eq!(&r.data_in[..], &[0, 0x0C, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        cmd(&luns, &[0x1B, 1, 0, 0, 0x01, 0], vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &[0x1B, 0, 0, 0, 0x30, 0], vec![]).await.status,
        status::GOOD
    );
    let r = cmd(&luns, &[0x1E, 0, 0, 0, 2, 0], vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[test]
fn data_out_lengths() {
    assert_eq!(data_out_length(&rw10(0x2A, 0, 0, 3)), Some(1536));
    assert_eq!(data_out_length(&rw16(0x8A, 0, 0, 1)), Some(512));
    assert_eq!(data_out_length(&[0x0A, 0, 0, 0, 0, 0]), Some(256 * 512));
    assert_eq!(data_out_length(&rw10(0x28, 0, 0, 3)), Some(0));
    assert_eq!(data_out_length(&rw10(0x2F, 0, 0, 3)), Some(0));
    assert_eq!(data_out_length(&rw10(0x2F, 2, 0, 3)), Some(1536));
    assert_eq!(data_out_length(&rw10(0x2F, 6, 0, 3)), Some(512));
    assert_eq!(data_out_length(&rw12(0xAE, 2, 0, 2)), Some(1024));
    assert_eq!(data_out_length(&[0x15, 0x10, 0, 0, 24, 0]), Some(24));
    assert_eq!(
        data_out_length(&[0x55, 0x10, 0, 0, 0, 0, 0, 1, 2, 0]),
        Some(258)
    );
    assert_eq!(data_out_length(&[0xC5, 0, 0, 0, 0, 0]), None);
    assert_eq!(data_out_length(&[0x2A, 0, 0]), None);
    assert_eq!(data_out_length(&rw16(0x8A, 0, 0, u32::MAX)), Some(u32::MAX));
}

#[test]
fn lun_encoding_round_trips() {
    for lun in [0u64, 1, 255, 256, 300, 16383] {
        assert_eq!(decode_lun(encode_lun(lun)), lun);
    }
    assert_eq!(encode_lun(1), 0x0001_0000_0000_0000);
    assert_eq!(encode_lun(256), 0x4100_0000_0000_0000);
    assert_eq!(decode_lun(0x0101_0000_0000_0000), u64::MAX);
    assert_eq!(decode_lun(0x0001_0001_0000_0000), u64::MAX);
    assert_eq!(decode_lun(0xC100_0000_0000_0000), u64::MAX);
    assert_eq!(encode_lun(16384), u64::MAX);
}

#[test]
fn identity_is_stable() {
    let a = Identity::from_volume_id("x", 0xDEAD_BEEF);
    let b = Identity::from_volume_id("y", 0xDEAD_BEEF);
    assert_eq!(a.naa, b.naa);
    assert_eq!(a.serial, "00000000deadbeef");
    assert_eq!(a.naa[0] >> 4, 6);
}

/// A backend whose every operation fails the same way.
#[derive(Debug)]
pub(super) struct Failing(pub fn() -> BackendError);

#[async_trait]
impl BlockBackend for Failing {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn num_blocks(&self) -> u64 {
        BLOCKS
    }
    fn thin(&self) -> bool {
        false
    }
    async fn read(&self, _: u64, _: u32) -> Result<Bytes, BackendError> {
        Err((self.0)())
    }
    async fn write(&self, _: u64, _: SgList, _: bool) -> Result<(), BackendError> {
        Err((self.0)())
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Err((self.0)())
    }
    async fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), BackendError> {
        Err((self.0)())
    }
    async fn unmap(&self, _: u64, _: u64) -> Result<(), BackendError> {
        Err((self.0)())
    }
    async fn atomic(&self, _: u64, _: AtomicOp, _: bool) -> Result<AtomicOutcome, BackendError> {
        Err((self.0)())
    }
    async fn allocation_status(&self, _: u64) -> Result<(Provisioning, u64), BackendError> {
        Err((self.0)())
    }
}

#[tokio::test]
async fn backend_errors_map_to_sense() {
    let io = unit_with(
        Arc::new(Failing(|| BackendError::Io(std::io::Error::other("boom")))),
        false,
    );
    assert_eq!(
        sense_of(&cmd(&io, &rw10(0x28, 0, 0, 1), vec![]).await),
        (0x03, 0x11, 0x00)
    );
    assert_eq!(
        sense_of(&cmd(&io, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await),
        (0x03, 0x0C, 0x00)
    );
    assert_eq!(
        sense_of(&cmd(&io, &rw10(0x35, 0, 0, 0), vec![]).await),
        (0x03, 0x0C, 0x00)
    );
    let full = unit_with(Arc::new(Failing(|| BackendError::NoSpace)), false);
    assert_eq!(
        sense_of(&cmd(&full, &rw10(0x2A, 0, 0, 1), vec![0; 512]).await),
        (0x07, 0x27, 0x07)
    );
}

/// Data with no copy on a running server fails at once as a medium error: an
/// unrecovered read error for commands that read, a write error for those that write
/// or make writes durable.
#[tokio::test]
async fn unavailable_data_is_a_medium_error() {
    let gone = unit_with(
        Arc::new(Failing(|| {
            BackendError::Unavailable("chunk 3 of volume 9 has no copy on a running SDS".into())
        })),
        false,
    );
    const READ_ERROR: (u8, u8, u8) = (0x03, 0x11, 0x00);
    const WRITE_ERROR: (u8, u8, u8) = (0x03, 0x0C, 0x00);
    let table = [
        ("READ(10)", rw10(0x28, 0, 0, 1), vec![], READ_ERROR),
        ("WRITE(10)", rw10(0x2A, 0, 0, 1), vec![0; 512], WRITE_ERROR),
        (
            "SYNCHRONIZE CACHE",
            rw10(0x35, 0, 0, 0),
            vec![],
            WRITE_ERROR,
        ),
        ("WRITE SAME(10)", ws10(0, 0, 8), vec![0; 512], WRITE_ERROR),
        (
            "COMPARE AND WRITE",
            caw(0, 0, 1),
            vec![0; 1024],
            WRITE_ERROR,
        ),
    ];
    for (name, cdb, data, want) in table {
        assert_eq!(sense_of(&cmd(&gone, &cdb, data).await), want, "{name}");
    }
}

/// No CDB, however malformed, may panic the engine.
#[tokio::test]
async fn random_cdbs_never_panic() {
    let luns = lun_map(false);
    let n = nexus(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5C51);
    for op in 0..=255u8 {
        for len in 0..=32usize {
            for _ in 0..4 {
                let mut c = vec![0u8; len];
                rng.fill(&mut c[..]);
                if let Some(b) = c.first_mut() {
                    *b = op;
                }
                let out_len = rng.gen_range(0..2048);
                let r = run(&luns, &n, &c, vec![0xA5; out_len]).await;
                assert!(r.status == status::GOOD || !r.sense.is_empty());
                let _ = data_out_length(&c);
            }
        }
    }
}

fn ws10(flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    rw10(0x41, flags, lba, blocks)
}

fn ws16(flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    rw16(0x93, flags, lba, blocks)
}

fn unmap_cdb(param_len: u16, anchor: bool) -> Vec<u8> {
    let mut c = vec![0x42, anchor as u8, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// An UNMAP parameter list with consistent header lengths.
fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let bdl = ranges.len() * 16;
    let mut v = Vec::with_capacity(8 + bdl);
    v.extend_from_slice(&((bdl + 6) as u16).to_be_bytes());
    v.extend_from_slice(&(bdl as u16).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for &(lba, n) in ranges {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

fn lba_status_cdb(lba: u64, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// (lba, blocks, provisioning status) of every descriptor in GET LBA STATUS data.
fn lba_status(r: &Response) -> Vec<(u64, u32, u8)> {
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let d = &r.data_in;
    let len = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
    assert_eq!((len - 4) % 16, 0);
    d[8..]
        .chunks_exact(16)
        .map(|e| {
            (
                u64::from_be_bytes(e[..8].try_into().unwrap()),
                u32::from_be_bytes(e[8..12].try_into().unwrap()),
                e[12] & 0x0F,
            )
        })
        .collect()
}

async fn read_blocks(luns: &LunMap, lba: u32, blocks: u16) -> Bytes {
    let r = cmd(luns, &rw10(0x28, 0, lba, blocks), vec![]).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    r.data_in
}

#[tokio::test]
async fn write_same_replicates_the_block() {
    let luns = lun_map(false);
    let r = cmd(&luns, &ws10(0, 10, 3), vec![0xA5; 512]).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    assert!(read_blocks(&luns, 10, 3).await.iter().all(|&b| b == 0xA5));
    assert!(read_blocks(&luns, 9, 1).await.iter().all(|&b| b == 0));
    assert!(read_blocks(&luns, 13, 1).await.iter().all(|&b| b == 0));
    // UNMAP deallocates whatever the pattern (libiscsi's UnmapUntilEnd sends 0xFF).
    let r = cmd(&luns, &ws16(0x08, 10, 2), vec![0x5A; 512]).await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 10, 2).await.iter().all(|&b| b == 0));
    let st = lba_status(&cmd(&luns, &lba_status_cdb(10, 24), vec![]).await);
    assert_eq!(st, vec![(10, 2, 1)]);
    // Larger than one fill chunk (1 MiB), ending exactly at the end of the medium.
    let big = unit_with(Arc::new(MemoryBackend::new(5000)), false);
    let mut block = vec![0u8; 512];
    block[0] = 7;
    block[511] = 9;
    let r = cmd(&big, &ws16(0, 100, 4900), block.clone()).await;
    assert_eq!(r.status, status::GOOD);
    let back = cmd(&big, &rw16(0x88, 0, 100, 4900), vec![]).await.data_in;
    assert!(back.chunks(512).all(|c| c == &block[..]));
}

#[tokio::test]
async fn write_same_zeros_and_unmap() {
    let luns = lun_map(false);
    let mapped = |v: &[(u64, u32, u8)]| v[0];
    cmd(&luns, &rw10(0x2A, 0, 0, 8), vec![0xFF; 8 * 512]).await;
    // Zeros without UNMAP: written, stays mapped.
    let r = cmd(&luns, &ws10(0, 0, 2), vec![0; 512]).await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 0, 2).await.iter().all(|&b| b == 0));
    let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 24), vec![]).await);
    assert_eq!(mapped(&st), (0, 8, 0));
    // Zeros with UNMAP: deallocated, reads zeros (LBPRZ).
    let r = cmd(&luns, &ws10(0x08, 2, 2), vec![0; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let st = lba_status(&cmd(&luns, &lba_status_cdb(2, 24), vec![]).await);
    assert_eq!(st, vec![(2, 2, 1)]);
    assert!(read_blocks(&luns, 2, 2).await.iter().all(|&b| b == 0));
    // NDOB (WRITE SAME(16) only): zeros without any Data-Out; with UNMAP deallocates.
    let r = cmd(&luns, &ws16(0x09, 4, 2), vec![]).await;
    assert_eq!(r.status, status::GOOD);
    let st = lba_status(&cmd(&luns, &lba_status_cdb(4, 24), vec![]).await);
    assert_eq!(st, vec![(4, 2, 1)]);
    let r = cmd(&luns, &ws16(0x01, 6, 1), vec![]).await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 6, 1).await.iter().all(|&b| b == 0));
    assert_eq!(
        lba_status(&cmd(&luns, &lba_status_cdb(6, 24), vec![]).await),
        vec![(6, 2, 0)]
    );
    // Zero blocks: to the end of the medium (WSNZ=0).
    cmd(&luns, &rw10(0x2A, 0, 1000, 24), vec![0xFF; 24 * 512]).await;
    let r = cmd(&luns, &ws10(0x08, 1000, 0), vec![0; 512]).await;
    assert_eq!(r.status, status::GOOD);
    let st = lba_status(&cmd(&luns, &lba_status_cdb(1000, 24), vec![]).await);
    assert_eq!(st, vec![(1000, 24, 1)]);
}

#[tokio::test]
async fn write_same_errors() {
    let luns = lun_map(false);
    let one = || vec![0u8; 512];
    let check = |r: Response| sense_of(&r);
    // Range: past the end, zero blocks starting at/after the end, LBA wrap.
    for c in [
        ws10(0, BLOCKS as u32, 1),
        ws10(0, BLOCKS as u32 - 1, 2),
        ws10(0, BLOCKS as u32, 0),
        ws10(0, u32::MAX, 0),
        ws16(0, u64::MAX, 1),
        ws16(0, 0x8000_0000_0000_0000, 0),
    ] {
        assert_eq!(check(cmd(&luns, &c, one()).await), (ILLEGAL, 0x21, 0x00));
    }
    // WRPROTECT, ANCHOR, PBDATA/LBDATA.
    for flags in [0x20, 0xE0, 0x10, 0x18, 0x02, 0x04] {
        let r = cmd(&luns, &ws10(flags, 0, 1), one()).await;
        assert_eq!(check(r), (ILLEGAL, 0x24, 0x00), "flags {flags:#x}");
    }
    // The pattern must be exactly one block.
    for len in [0, 256, 1024] {
        let r = cmd(&luns, &ws16(0, 0, 1), vec![1; len]).await;
        assert_eq!(check(r), (ILLEGAL, 0x24, 0x00), "len {len}");
    }
    // Beyond MAXIMUM WRITE SAME LENGTH, explicitly or by reaching the end.
    let big = unit_with(Arc::new(MemoryBackend::new(20_000)), false);
    let r = cmd(&big, &ws16(0, 0, 16_385), one()).await;
    assert_eq!(check(r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&big, &ws16(0, 0, 0), one()).await;
    assert_eq!(check(r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&big, &ws16(0, 20_000 - 16_385, 0), one()).await;
    assert_eq!(check(r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&big, &ws16(0, 20_000 - 16_384, 0), one()).await;
    assert_eq!(r.status, status::GOOD);
    // Read-only units.
    let ro = lun_map(true);
    let r = cmd(&ro, &ws10(0, 0, 1), one()).await;
    assert_eq!(check(r), (0x07, 0x27, 0x00));
}

#[tokio::test]
async fn unmap_releases_listed_ranges() {
    let luns = lun_map(false);
    cmd(&luns, &rw10(0x2A, 0, 0, 64), vec![0xEE; 64 * 512]).await;
    let list = unmap_list(&[(4, 4), (20, 0), (30, 2), (BLOCKS, 0)]);
    let r = cmd(&luns, &unmap_cdb(list.len() as u16, false), list).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 8 + 16 * 6), vec![]).await);
    assert_eq!(
        &st[..5],
        &[(0, 4, 0), (4, 4, 1), (8, 22, 0), (30, 2, 1), (32, 32, 0)]
    );
    assert!(read_blocks(&luns, 4, 4).await.iter().all(|&b| b == 0));
    // An empty list, or a header with no descriptors, does nothing.
    let r = cmd(&luns, &unmap_cdb(0, false), vec![]).await;
    assert_eq!(r.status, status::GOOD);
    let list = unmap_list(&[]);
    let r = cmd(&luns, &unmap_cdb(8, false), list).await;
    assert_eq!(r.status, status::GOOD);
    // A trailing partial descriptor is ignored.
    let mut list = unmap_list(&[(40, 1)]);
    list[2..4].copy_from_slice(&20u16.to_be_bytes());
    list.extend_from_slice(&[0xFF; 4]);
    let r = cmd(&luns, &unmap_cdb(list.len() as u16, false), list).await;
    assert_eq!(r.status, status::GOOD);
    let st = lba_status(&cmd(&luns, &lba_status_cdb(40, 24), vec![]).await);
    assert_eq!(st, vec![(40, 1, 1)]);
}

#[tokio::test]
async fn unmap_errors() {
    let luns = lun_map(false);
    cmd(&luns, &rw10(0x2A, 0, 0, 8), vec![0xEE; 8 * 512]).await;
    let still_mapped = || async {
        let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 24), vec![]).await);
        assert_eq!(st[0], (0, 8, 0));
    };
    let run_list = |list: Vec<u8>| {
        let luns = &luns;
        async move { cmd(luns, &unmap_cdb(list.len() as u16, false), list).await }
    };
    // A bad descriptor anywhere leaves every range mapped.
    let r = run_list(unmap_list(&[(0, 4), (BLOCKS - 1, 2)])).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    let r = run_list(unmap_list(&[(0, 4), (u64::MAX, 1)])).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    still_mapped().await;
    // Header shorter than 8 bytes.
    let r = cmd(&luns, &unmap_cdb(4, false), vec![0; 4]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x1A, 0x00));
    // More descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 0)).collect();
    let r = run_list(unmap_list(&many)).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00));
    // ANCHOR is not supported.
    let list = unmap_list(&[(0, 1)]);
    let r = cmd(&luns, &unmap_cdb(list.len() as u16, true), list).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    still_mapped().await;
    // More blocks than MAXIMUM UNMAP LBA COUNT in total.
    let big = unit_with(Arc::new(MemoryBackend::new(1 << 21)), false);
    let list = unmap_list(&[(0, 1 << 20), (1 << 20, 1)]);
    let r = cmd(&big, &unmap_cdb(list.len() as u16, false), list).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00));
    // Read-only unit; fully provisioned backend (no LBPU).
    let ro = lun_map(true);
    let list = unmap_list(&[(0, 1)]);
    let r = cmd(&ro, &unmap_cdb(list.len() as u16, false), list.clone()).await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
    let full = unit_with(
        Arc::new(Failing(|| BackendError::Io(std::io::Error::other("x")))),
        false,
    );
    let r = cmd(&full, &unmap_cdb(list.len() as u16, false), list).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x20, 0x00));
}

#[tokio::test]
async fn get_lba_status_reports_runs() {
    let luns = lun_map(false);
    let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 24), vec![]).await);
    assert_eq!(st, vec![(0, BLOCKS as u32, 1)]);
    cmd(&luns, &rw10(0x2A, 0, 100, 10), vec![1; 10 * 512]).await;
    let st = lba_status(&cmd(&luns, &lba_status_cdb(50, 1000), vec![]).await);
    assert_eq!(
        st,
        vec![(50, 50, 1), (100, 10, 0), (110, BLOCKS as u32 - 110, 1)]
    );
    // The last block is valid; the capacity is not.
    let st = lba_status(&cmd(&luns, &lba_status_cdb(BLOCKS - 1, 24), vec![]).await);
    assert_eq!(st, vec![(BLOCKS - 1, 1, 1)]);
    for lba in [BLOCKS, BLOCKS + 1, 0x8000_0000_0000_0000, u64::MAX] {
        let r = cmd(&luns, &lba_status_cdb(lba, 24), vec![]).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    }
    // Short allocation lengths truncate; the length field still counts one descriptor.
    for alloc in [0u32, 4, 8, 23] {
        let r = cmd(&luns, &lba_status_cdb(50, alloc), vec![]).await;
        assert_eq!((r.status, r.data_in.len()), (status::GOOD, alloc as usize));
        if alloc >= 4 {
            assert_eq!(&r.data_in[..4], &20u32.to_be_bytes());
        }
    }
    // A fully provisioned backend is mapped everywhere, without asking it.
    let full = unit_with(
        Arc::new(Failing(|| BackendError::Io(std::io::Error::other("x")))),
        false,
    );
    let st = lba_status(&cmd(&full, &lba_status_cdb(3, 24), vec![]).await);
    assert_eq!(st, vec![(3, BLOCKS as u32 - 3, 0)]);
}

#[tokio::test]
async fn provisioning_reported_only_for_thin_backends() {
    let full = unit_with(
        Arc::new(Failing(|| BackendError::Io(std::io::Error::other("x")))),
        false,
    );
    let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let r = cmd(&full, &rc16, vec![]).await;
    assert_eq!(r.data_in[14] & 0xC0, 0);
    let r = cmd(&full, &[0x12, 1, 0xB2, 0, 255, 0], vec![]).await;
    assert_eq!(&r.data_in[4..8], &[0, 0, 0, 0]);
    let r = cmd(&full, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await;
    assert!(r.data_in[20..36].iter().all(|&b| b == 0), "no unmap limits");
    assert_eq!(&r.data_in[36..44], &16384u64.to_be_bytes());
}

#[test]
fn provisioning_data_out_lengths() {
    assert_eq!(data_out_length(&ws10(0x08, 0, 100)), Some(512));
    assert_eq!(data_out_length(&ws10(0x01, 0, 0)), Some(512));
    assert_eq!(data_out_length(&ws16(0, 0, 100)), Some(512));
    assert_eq!(data_out_length(&ws16(0x01, 0, 100)), Some(0));
    assert_eq!(data_out_length(&ws16(0x09, 0, 0)), Some(0));
    assert_eq!(data_out_length(&unmap_cdb(24, false)), Some(24));
    assert_eq!(data_out_length(&lba_status_cdb(0, 24)), Some(0));
    assert_eq!(data_out_length(&[0x41, 0, 0, 0]), None);
    assert_eq!(data_out_length(&[0x93; 10]), None);
}

/// WRITE SAME, UNMAP and GET LBA STATUS with in-range fields and random parameter
/// lists, which the all-random CDBs above rarely produce.
#[tokio::test]
async fn random_provisioning_commands_never_panic() {
    let luns = lun_map(false);
    let n = nexus(1);
    clear_ua(&luns, &n).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7417);
    for _ in 0..3000 {
        let lba = rng.gen_range(0..BLOCKS + 4);
        let blocks = rng.gen_range(0..64u32);
        let flags: u8 = rng.gen();
        let out_len = *[0usize, 1, 8, 24, 511, 512, 513, 4096]
            .get(rng.gen_range(0..8))
            .unwrap();
        let mut out = vec![0u8; out_len];
        if rng.gen_bool(0.5) {
            rng.fill(&mut out[..]);
        }
        let c = match rng.gen_range(0..4) {
            0 => ws10(flags, lba as u32, blocks as u16),
            1 => ws16(flags, lba, blocks),
            2 => {
                let mut list = unmap_list(
                    &(0..rng.gen_range(0..4))
                        .map(|_| (rng.gen_range(0..BLOCKS + 4), rng.gen_range(0..64)))
                        .collect::<Vec<_>>(),
                );
                if rng.gen_bool(0.3) {
                    let cut = rng.gen_range(0..=list.len());
                    list.truncate(cut);
                    rng.fill(&mut list[..cut.min(4)]);
                }
                out = list;
                unmap_cdb(rng.gen(), flags & 0x01 != 0)
            }
            _ => lba_status_cdb(lba, rng.gen_range(0..200)),
        };
        let r = run(&luns, &n, &c, out).await;
        assert!(r.status == status::GOOD || !r.sense.is_empty());
        let _ = data_out_length(&c);
    }
}

fn caw(flags: u8, lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x89;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn write_atomic16(flags: u8, lba: u64, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x9C;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

const MISCOMPARE: (u8, u8, u8) = (0x0E, 0x1D, 0x00);

#[tokio::test]
async fn compare_and_write_swaps_or_reports_the_first_difference() {
    let luns = lun_map(false);
    cmd(&luns, &rw10(0x2A, 0, 7, 1), vec![b'A'; 512]).await;
    let mut out = vec![b'A'; 512];
    out.extend_from_slice(&[b'B'; 512]);
    assert_eq!(
        cmd(&luns, &caw(0, 7, 1), out.clone()).await.status,
        status::GOOD
    );
    assert_eq!(read_blocks(&luns, 7, 1).await, vec![b'B'; 512]);

    // Now the compare data is stale: MISCOMPARE, INFORMATION = offset into the
    // Data-Out of the first differing byte, VALID set; the block is unchanged.
    let mut stale = vec![b'B'; 1024];
    stale[300] = b'x';
    let r = cmd(&luns, &caw(0x08, 7, 1), stale).await;
    assert_eq!(sense_of(&r), MISCOMPARE);
    assert_eq!(r.sense[0], 0xF0);
    assert_eq!(&r.sense[3..7], &300u32.to_be_bytes());
    let r = cmd(&luns, &caw(0, 7, 1), out).await;
    assert_eq!(sense_of(&r), MISCOMPARE);
    assert_eq!(&r.sense[3..7], &0u32.to_be_bytes());
    assert_eq!(read_blocks(&luns, 7, 1).await, vec![b'B'; 512]);

    // An unwritten block reads as zeros and is compared as such.
    let r = cmd(&luns, &caw(0, 9, 1), vec![b'%'; 1024]).await;
    assert_eq!(sense_of(&r), MISCOMPARE);
    let mut zeros = vec![0u8; 512];
    zeros.extend_from_slice(&[3; 512]);
    assert_eq!(cmd(&luns, &caw(0, 9, 1), zeros).await.status, status::GOOD);
}

#[tokio::test]
async fn compare_and_write_limits_and_errors() {
    let luns = lun_map(false);
    // More than MAXIMUM COMPARE AND WRITE LENGTH (1), WRPROTECT, a wrong Data-Out size.
    let r = cmd(&luns, &caw(0, 0, 2), vec![0; 2048]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    assert_eq!(&r.sense[15..18], &[0xC0, 0, 13]);
    let r = cmd(&luns, &caw(0x20, 0, 1), vec![0; 1024]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    for len in [0, 512, 2048] {
        let r = cmd(&luns, &caw(0, 0, 1), vec![0; len]).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "{len} bytes");
    }
    let r = cmd(&luns, &caw(0, 0, 0), vec![0; 1024]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "data for no blocks");
    let r = cmd(&luns, &caw(0, BLOCKS, 1), vec![0; 1024]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    assert_eq!(
        cmd(&luns, &caw(0, BLOCKS, 0), vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &caw(0x18, 0, 0), vec![]).await.status,
        status::GOOD
    );
    let ro = lun_map(true);
    let r = cmd(&ro, &caw(0, 0, 1), vec![0; 1024]).await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
    let io = unit_with(
        Arc::new(Failing(|| BackendError::NotAtomic { lba: 0, blocks: 1 })),
        false,
    );
    let r = cmd(&io, &caw(0, 0, 1), vec![0; 1024]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
}

#[tokio::test]
async fn orwrite_ors_into_the_blocks() {
    let luns = lun_map(false);
    cmd(&luns, &rw10(0x2A, 0, 1000, 24), vec![0x0F; 24 * 512]).await;
    let r = cmd(&luns, &rw16(0x8B, 0x08, 1000, 24), vec![0x30; 24 * 512]).await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 1000, 24)
        .await
        .iter()
        .all(|&b| b == 0x3F));
    // A short Data-Out ORs what arrived and leaves the rest.
    let r = cmd(&luns, &rw16(0x8B, 0, 1000, 2), vec![0xC0; 700]).await;
    assert_eq!(r.status, status::GOOD);
    let d = read_blocks(&luns, 1000, 2).await;
    assert!(d[..700].iter().all(|&b| b == 0xFF) && d[700..].iter().all(|&b| b == 0x3F));
    assert_eq!(
        cmd(&luns, &rw16(0x8B, 0, 0, 0), vec![]).await.status,
        status::GOOD
    );
    let r = cmd(&luns, &rw16(0x8B, 0, BLOCKS + 1, 0), vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00));
    let r = cmd(&luns, &rw16(0x8B, 0x40, 0, 1), vec![0; 512]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&lun_map(true), &rw16(0x8B, 0, 0, 1), vec![0; 512]).await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
}

#[tokio::test]
async fn write_atomic_within_alignment_and_granularity() {
    let luns = lun_map(false);
    let r = cmd(
        &luns,
        &write_atomic16(0x18, 256, 256),
        vec![0x77; 256 * 512],
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 256, 256)
        .await
        .iter()
        .all(|&b| b == 0x77));
    assert_eq!(
        cmd(&luns, &write_atomic16(0, 0, 8), vec![1; 4096])
            .await
            .status,
        status::GOOD
    );
    assert_eq!(
        cmd(&luns, &write_atomic16(0, 0, 0), vec![]).await.status,
        status::GOOD
    );
    // Misaligned, not a multiple of the granularity, longer than the maximum.
    for (lba, blocks, field) in [(1, 8, 2), (0, 1, 12), (0, 264, 12)] {
        let r = cmd(
            &luns,
            &write_atomic16(0, lba, blocks),
            vec![0; blocks as usize * 512],
        )
        .await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "{lba}+{blocks}");
        assert_eq!(r.sense[17], field);
    }
    // Past the end is LBA OUT OF RANGE even when also misaligned.
    for (lba, blocks) in [(BLOCKS - 8, 16), (BLOCKS + 256, 0), (u64::MAX - 255, 8)] {
        let r = cmd(
            &luns,
            &write_atomic16(0, lba, blocks),
            vec![0; blocks as usize * 512],
        )
        .await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x21, 0x00), "{lba}+{blocks}");
    }
    let r = cmd(&luns, &write_atomic16(0, 0, 8), vec![0; 4000]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&luns, &write_atomic16(0x60, 0, 8), vec![0; 4096]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    let r = cmd(&lun_map(true), &write_atomic16(0, 0, 8), vec![0; 4096]).await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
}

#[tokio::test]
async fn atomic_limits_in_block_limits_and_usage_data() {
    let luns = lun_map(false);
    let r = cmd(&luns, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await;
    let d = &r.data_in;
    assert_eq!(d[5], 1, "MAXIMUM COMPARE AND WRITE LENGTH");
    assert_eq!(
        &d[44..48],
        &256u32.to_be_bytes(),
        "MAXIMUM ATOMIC TRANSFER LENGTH"
    );
    assert_eq!(&d[48..52], &256u32.to_be_bytes(), "ATOMIC ALIGNMENT");
    assert_eq!(
        &d[52..56],
        &8u32.to_be_bytes(),
        "ATOMIC TRANSFER LENGTH GRANULARITY"
    );
    assert_eq!(&d[56..64], &[0; 8], "no atomic boundary");
    // An aligned atomic range never crosses a 2048-block chunk.
    let (align, max) = (256u64, 256u64);
    assert!((0..1 << 14)
        .step_by(align as usize)
        .all(|s: u64| s / 2048 == (s + max - 1) / 2048));
    for op in [0x89u8, 0x8B, 0x9C] {
        let c = [0xA3, 0x0C, 1, op, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        let r = cmd(&luns, &c, vec![]).await;
        assert_eq!(r.data_in[1] & 0x07, 3, "{op:#x} supported");
        assert_eq!(&r.data_in[2..4], &[0, 16]);
        assert_eq!(r.data_in[5] & 0x18, 0x18, "{op:#x} DPO/FUA");
    }
    assert_eq!(data_out_length(&caw(0, 0, 3)), Some(3 * 1024));
    assert_eq!(data_out_length(&rw16(0x8B, 0, 0, 5)), Some(5 * 512));
    assert_eq!(data_out_length(&write_atomic16(0, 0, 16)), Some(16 * 512));
}

#[tokio::test]
async fn alua_identity_follows_the_port_and_groups_follow_the_gateways() {
    let luns = lun_map(false);
    let r = cmd(&luns, &[0x12, 0, 0, 0, 96, 0], vec![]).await;
    assert_eq!(r.data_in[5] & 0x30, 0x10, "TPGS 01b: implicit ALUA");
    // Through port 2, VPD 0x83 names port and group 2 after the LU designators.
    let n2 = ItNexus {
        tpgt: 2,
        ..nexus(2)
    };
    clear_ua(&luns, &n2).await;
    let r = run(&luns, &n2, &[0x12, 1, 0x83, 0, 255, 0], vec![]).await;
    let d = &r.data_in;
    let mut descs = Vec::new();
    let mut at = 4;
    while at < d.len() {
        let len = d[at + 3] as usize;
        descs.push((d[at], d[at + 1], d[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    assert_eq!(descs[0].1, 0x03, "NAA, LU association first");
    assert_eq!(descs[2], (0x51, 0x94, vec![0, 0, 0, 2]), "relative port");
    assert_eq!(descs[3], (0x51, 0x95, vec![0, 0, 0, 2]), "port group");
    // The LU designators do not depend on the port.
    let r1 = cmd(&luns, &[0x12, 1, 0x83, 0, 255, 0], vec![]).await;
    let lu_len = 4 + descs[0].2.len() + 4 + descs[1].2.len();
    assert_eq!(&r1.data_in[4..4 + lu_len], &d[4..4 + lu_len]);

    let rtpg = |format: u8| {
        let mut c = vec![0xA3, 0x0A | format << 5, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        c[6..10].copy_from_slice(&256u32.to_be_bytes());
        c
    };
    // A local volume: one group, the port asked through.
    let r = cmd(&luns, &rtpg(0), vec![]).await;
    assert_eq!(
        &r.data_in[..],
        &[0, 0, 0, 12, 0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    );
    // Gateways 1 and 3 serve it: two groups, all active/optimized, one port each.
    luns[&0].ports().set(vec![3, 1]);
    let r = cmd(&luns, &rtpg(1), vec![]).await;
    let d = &r.data_in;
    assert_eq!(&d[..8], &[0, 0, 0, 28, 0x10, 0, 0, 0]);
    assert_eq!(&d[8..20], &[0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(&d[20..32], &[0x00, 0x01, 0, 3, 0, 0, 0, 1, 0, 0, 0, 3]);
    let r = cmd(&luns, &rtpg(2), vec![]).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00));
    // Listed by REPORT SUPPORTED OPERATION CODES (one command, service action).
    let c = [0xA3, 0x0C, 0x02, 0xA3, 0, 0x0A, 0, 0, 1, 0, 0, 0];
    let r = cmd(&luns, &c, vec![]).await;
    assert_eq!(r.data_in[1] & 0x07, 0x03, "supported");
}

#[tokio::test]
async fn physical_blocks_are_512_bytes_and_vpd_b0_prefers_4k() {
    let luns = lun_map(false);
    let rc16 = [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let r = cmd(&luns, &rc16, vec![]).await;
    assert_eq!(r.data_in[13] & 0x0F, 0, "one logical block per physical");
    assert_eq!(
        (r.data_in[14] & 0x3F, r.data_in[15]),
        (0, 0),
        "aligned at 0"
    );
    let r = cmd(&luns, &[0x12, 1, 0xB0, 0, 255, 0], vec![]).await;
    assert_eq!(
        &r.data_in[6..8],
        &8u16.to_be_bytes(),
        "transfer granularity"
    );
    assert_eq!(&r.data_in[28..32], &8u32.to_be_bytes(), "unmap granularity");
    assert_eq!(r.data_in[32], 0x80, "UGAVALID, alignment 0");
}

#[tokio::test]
async fn capacity_change_reaches_every_nexus_of_every_twin() {
    let luns = lun_map(false);
    let ro = Arc::new(luns[&0].twin(true));
    let mut ro_map = LunMap::new();
    ro_map.insert(0, ro.clone());
    let (a, b) = (nexus(1), nexus(2));
    clear_ua(&luns, &a).await;
    clear_ua(&ro_map, &b).await;
    luns[&0].capacity_changed();
    ro.capacity_changed();
    for (m, n) in [(&luns, &a), (&ro_map, &b)] {
        let r = run(m, n, &[0; 6], vec![]).await;
        assert_eq!(sense_of(&r), (0x06, 0x2A, 0x09));
        assert_eq!(run(m, n, &[0; 6], vec![]).await.status, status::GOOD);
    }
}

fn sanitize_cdb(b1: u8, param_len: u16) -> Vec<u8> {
    let mut c = vec![0x48, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

fn overwrite_list(b0: u8, pattern: &[u8]) -> Vec<u8> {
    let mut v = vec![b0, 0];
    v.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    v.extend_from_slice(pattern);
    v
}

#[tokio::test]
async fn sanitize_overwrite_fills_every_block_and_inverts_between_passes() {
    let luns = lun_map(false);
    let list = overwrite_list(0x01, &[0xAA, 0x55]);
    let r = cmd(&luns, &sanitize_cdb(0x01, list.len() as u16), list).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let last = read_blocks(&luns, (BLOCKS - 1) as u32, 1).await;
    assert!(last.chunks(2).all(|p| p == [0xAA, 0x55]));
    // Two passes with INVERT: the second pass writes the inverse.
    let list = overwrite_list(0x82, &[0x0F]);
    let r = cmd(&luns, &sanitize_cdb(0x01, 5), list).await;
    assert_eq!(r.status, status::GOOD);
    assert!(read_blocks(&luns, 0, 4).await.iter().all(|&b| b == 0xF0));
}

#[tokio::test]
async fn sanitize_checks_its_cdb_and_parameters() {
    let luns = lun_map(false);
    let list = overwrite_list(0x01, &[0xAA; 512]);
    for len in [0u16, 4, 517] {
        let r = cmd(&luns, &sanitize_cdb(0x01, len), list.clone()).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "param len {len}");
    }
    let r = cmd(&luns, &sanitize_cdb(0x01 | 0x40, 516), list.clone()).await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "reserved bit");
    for byte in 2..7 {
        let mut c = sanitize_cdb(0x02, 0);
        c[byte] = 1;
        let r = cmd(&luns, &c, vec![]).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "reserved byte {byte}");
    }
    for sa in [0u8, 4, 0x10, 0x1E] {
        let r = cmd(&luns, &sanitize_cdb(sa, 0), vec![]).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "service action {sa}");
    }
    for sa in [0x02, 0x03, 0x1F] {
        let r = cmd(&luns, &sanitize_cdb(sa, 8), vec![0; 8]).await;
        assert_eq!(sense_of(&r), (ILLEGAL, 0x24, 0x00), "erase with a list");
    }
    let r = cmd(
        &luns,
        &sanitize_cdb(0x01, 516),
        overwrite_list(0x00, &[1; 512]),
    )
    .await;
    assert_eq!(sense_of(&r), (ILLEGAL, 0x26, 0x00), "OVERWRITE COUNT 0");
    assert_eq!(cmd(&luns, &sanitize_cdb(0x1F, 0), vec![]).await.status, 0);
    // Refused on a read-only unit.
    let ro = lun_map(true);
    let r = cmd(&ro, &sanitize_cdb(0x02, 0), vec![]).await;
    assert_eq!(sense_of(&r).0, 0x07);
}

#[tokio::test]
async fn sanitize_erase_deallocates_a_thin_unit() {
    let luns = lun_map(false);
    let w = rw10(0x2A, 0, 0, 8);
    assert_eq!(cmd(&luns, &w, vec![0x61; 8 * 512]).await.status, 0);
    for sa in [0x02, 0x03] {
        let r = cmd(&luns, &sanitize_cdb(sa, 0), vec![]).await;
        assert_eq!(r.status, status::GOOD);
        assert!(read_blocks(&luns, 0, 8).await.iter().all(|&b| b == 0));
        let r = cmd(&luns, &lba_status_cdb(0, 64), vec![]).await;
        assert!(lba_status(&r).iter().all(|d| d.2 == 1), "deallocated");
    }
}

/// A backend whose writes wait for a permit, so a sanitize can be watched running.
#[derive(Debug)]
struct Gated {
    inner: MemoryBackend,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl BlockBackend for Gated {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        fua: bool,
    ) -> Result<AtomicOutcome, BackendError> {
        self.inner.atomic(lba, op, fua).await
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn thin(&self) -> bool {
        true
    }
    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BackendError> {
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: SgList, fua: bool) -> Result<(), BackendError> {
        self.gate.acquire().await.expect("open").forget();
        self.inner.write(lba, data, fua).await
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        self.inner.write_zeroes(lba, blocks, unmap).await
    }
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        self.inner.unmap(lba, blocks).await
    }
    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        self.inner.allocation_status(lba).await
    }
}

#[tokio::test]
async fn a_running_sanitize_holds_commands_off_and_reports_progress() {
    let gated = Arc::new(Gated {
        inner: MemoryBackend::new(BLOCKS),
        gate: tokio::sync::Semaphore::new(0),
    });
    let luns = unit_with(gated.clone(), false);
    // IMMED: GOOD at once, the overwrite (four passes of 1024 blocks, one write each)
    // runs on.
    let list = overwrite_list(0x04, &[0x11]);
    let r = cmd(&luns, &sanitize_cdb(0x81, 5), list).await;
    assert_eq!(r.status, status::GOOD);
    gated.gate.add_permits(1);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // A new nexus: the sanitize answers before its power-on unit attention.
    let n = nexus(7);
    let r = run(&luns, &n, &[0; 6], vec![]).await;
    assert_eq!(sense_of(&r), (0x02, 0x04, 0x1B));
    assert_eq!(&r.sense[15..18], &[0x80, 0x40, 0x00], "a quarter done");
    assert_eq!(
        run(&luns, &n, &[0x12, 0, 0, 0, 36, 0], vec![]).await.status,
        0
    );
    let r = run(&luns, &n, &[0x03, 0, 0, 0, 18, 0], vec![]).await;
    assert_eq!((r.status, r.data_in[2], r.data_in[12]), (0, 0x02, 0x04));
    gated.gate.add_permits(3);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = run(&luns, &n, &[0; 6], vec![]).await;
    assert_eq!(sense_of(&r), (0x06, 0x29, 0x00), "now the unit attention");
    assert_eq!(run(&luns, &n, &[0; 6], vec![]).await.status, 0);
}

/// A thin backend that, like a pool volume, reports allocation one 16-block piece at a
/// time.
#[derive(Debug)]
struct Pieces(MemoryBackend);

#[async_trait]
impl BlockBackend for Pieces {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    async fn atomic(
        &self,
        lba: u64,
        op: AtomicOp,
        fua: bool,
    ) -> Result<AtomicOutcome, BackendError> {
        self.0.atomic(lba, op, fua).await
    }
    fn num_blocks(&self) -> u64 {
        self.0.num_blocks()
    }
    fn thin(&self) -> bool {
        true
    }
    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BackendError> {
        self.0.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: SgList, fua: bool) -> Result<(), BackendError> {
        self.0.write(lba, data, fua).await
    }
    async fn flush(&self) -> Result<(), BackendError> {
        Ok(())
    }
    async fn write_zeroes(&self, lba: u64, blocks: u64, unmap: bool) -> Result<(), BackendError> {
        self.0.write_zeroes(lba, blocks, unmap).await
    }
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        self.0.unmap(lba, blocks).await
    }
    async fn allocation_status(&self, lba: u64) -> Result<(Provisioning, u64), BackendError> {
        let (state, run) = self.0.allocation_status(lba).await?;
        Ok((state, run.min(16 - lba % 16)))
    }
}

#[tokio::test]
async fn get_lba_status_merges_runs_of_one_state() {
    let luns = unit_with(Arc::new(Pieces(MemoryBackend::new(BLOCKS))), false);
    cmd(&luns, &rw10(0x2A, 0, 40, 30), vec![1; 30 * 512]).await;
    let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 1000), vec![]).await);
    assert_eq!(
        st,
        vec![(0, 40, 1), (40, 30, 0), (70, BLOCKS as u32 - 70, 1)]
    );
    // Room for two descriptors: the second still covers its whole extent.
    let st = lba_status(&cmd(&luns, &lba_status_cdb(0, 8 + 32), vec![]).await);
    assert_eq!(st, vec![(0, 40, 1), (40, 30, 0)]);
}
