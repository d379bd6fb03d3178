//! EXTENDED COPY and RECEIVE COPY RESULTS through the public entry point, between
//! memory-backed units.

use super::copy_params::tests::{list, segment_desc, target_desc};
use super::*;
use crate::backend::{BlockBackend, MemoryBackend};

const BLOCKS: u64 = 4096;

fn nexus(i: u8) -> ItNexus {
    ItNexus {
        initiator: Arc::from("iqn.2024-01.test:init"),
        isid: [0x80, 0, 0, 0, 0, i],
        tpgt: 1,
    }
}

fn unit(id: u64, read_only: bool) -> (Arc<LogicalUnit>, Arc<MemoryBackend>) {
    let be = Arc::new(MemoryBackend::new(BLOCKS));
    let u = LogicalUnit::new(
        be.clone(),
        Identity::from_volume_id(&format!("vol{id}"), id),
        read_only,
        Arc::new(super::shared::LocalStore::new()),
    );
    (Arc::new(u), be)
}

/// LUN 0 and LUN 1, two volumes (ids 1 and 2), plus the backends.
fn two_luns() -> (LunMap, Arc<MemoryBackend>, Arc<MemoryBackend>) {
    let (a, ba) = unit(1, false);
    let (b, bb) = unit(2, false);
    let mut m = LunMap::new();
    m.insert(0, a);
    m.insert(1, b);
    (m, ba, bb)
}

fn naa(id: u64) -> [u8; 16] {
    Identity::from_volume_id("", id).naa
}

async fn run_on(luns: &LunMap, lun: u64, n: &ItNexus, cdb: &[u8], out: Vec<u8>) -> Response {
    // The first command of a nexus meets its power-on unit attention.
    while execute(
        luns,
        n,
        Request {
            lun,
            cdb: Bytes::from_static(&[0; 6]),
            data_out: SgList::new(),
        },
    )
    .await
    .status
        != status::GOOD
    {}
    execute(
        luns,
        n,
        Request {
            lun,
            cdb: Bytes::copy_from_slice(cdb),
            data_out: out.into(),
        },
    )
    .await
}

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

async fn xcopy(luns: &LunMap, n: &ItNexus, params: Vec<u8>) -> Response {
    run_on(luns, 0, n, &xcopy_cdb(params.len()), params).await
}

fn rcr_cdb(sa: u8, id: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// (key, asc, ascq) of fixed-format sense.
fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

fn pattern(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * 512)
        .map(|i| (i / 512) as u8 ^ seed ^ (i as u8))
        .collect()
}

async fn fill(be: &MemoryBackend, lba: u64, data: &[u8]) {
    be.write(lba, data.to_vec().into(), false).await.unwrap();
}

#[tokio::test]
async fn copies_between_two_luns_of_the_nexus() {
    let (luns, a, b) = two_luns();
    let data = pattern(1, 100);
    fill(&a, 10, &data).await;
    let p = list(
        1,
        0b10,
        &[target_desc(&naa(1)), target_desc(&naa(2))],
        &[
            segment_desc(0, 1, 60, 10, 500),
            segment_desc(0, 1, 40, 70, 560),
            segment_desc(0, 1, 0, 0, 0),
        ],
    );
    let r = xcopy(&luns, &nexus(1), p).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    assert_eq!(&b.read(500, 100).await.unwrap()[..], &data[..]);
    // Untouched around it.
    assert!(b.read(499, 1).await.unwrap().iter().all(|&x| x == 0));
    assert!(b.read(600, 1).await.unwrap().iter().all(|&x| x == 0));
}

#[tokio::test]
async fn overlapping_ranges_of_one_volume_copy_as_read_then_write() {
    for (src, dst) in [(100u64, 101u64), (100, 2047), (2047, 100), (101, 100)] {
        let (luns, a, _) = two_luns();
        let blocks = 3000u64.min(BLOCKS - src.max(dst));
        let data = pattern(7, blocks as usize);
        fill(&a, src, &data).await;
        let p = list(
            0,
            0b11,
            &[target_desc(&naa(1))],
            &[segment_desc(0, 0, blocks as u16, src, dst)],
        );
        let r = xcopy(&luns, &nexus(1), p).await;
        assert_eq!(r.status, status::GOOD, "{r:?}");
        let back = a.read(dst, blocks as u32).await.unwrap();
        assert!(back[..] == data[..], "copy {src} -> {dst} is not a memmove");
    }
}

#[tokio::test]
async fn a_volume_outside_the_nexus_lun_map_is_unreachable() {
    let (luns, a, _) = two_luns();
    // Volume 3 exists on this gateway but is not in this nexus's map.
    let (hidden, hidden_be) = unit(3, false);
    fill(&hidden_be, 0, &pattern(9, 8)).await;
    fill(&a, 0, &pattern(4, 8)).await;
    let both = |src, dst| {
        list(
            1,
            0,
            &[target_desc(&naa(1)), target_desc(&naa(3))],
            &[segment_desc(src, dst, 8, 0, 0)],
        )
    };
    for p in [both(1, 0), both(0, 1)] {
        let r = xcopy(&luns, &nexus(1), p).await;
        assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x02));
        // Segment pointer at the unreachable target descriptor (the second one).
        assert_eq!(&r.sense[15..18], &[0x80, 0, 48]);
    }
    assert_eq!(hidden_be.read(0, 8).await.unwrap()[..], pattern(9, 8)[..]);
    assert_eq!(a.read(0, 8).await.unwrap()[..], pattern(4, 8)[..]);
    drop(hidden);
}

#[tokio::test]
async fn copy_aborted_cases_change_nothing() {
    let (luns, a, b) = two_luns();
    fill(&a, 0, &pattern(2, 16)).await;
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    // The first segment is fine; the second names target 5: nothing is copied.
    let p = list(
        1,
        0,
        &t,
        &[segment_desc(0, 1, 16, 0, 0), segment_desc(0, 5, 1, 0, 0)],
    );
    let r = xcopy(&luns, &nexus(1), p).await;
    assert_eq!(sense_of(&r), (0x0A, 0x08, 0x04));
    assert_eq!(&r.sense[15..18], &[0x80, 0, 16 + 64 + 28 + 6]);
    assert!(b.read(0, 16).await.unwrap().iter().all(|&x| x == 0));
    // Past the end of the source, then of the destination.
    for (src_lba, dst_lba, ptr) in [(BLOCKS - 1, 0, 12), (0, BLOCKS - 1, 20)] {
        let p = list(1, 0, &t, &[segment_desc(0, 1, 2, src_lba, dst_lba)]);
        let r = xcopy(&luns, &nexus(1), p).await;
        assert_eq!(sense_of(&r), (0x0A, 0x00, 0x00));
        assert_eq!(r.sense[17], 16 + 64 + ptr);
    }
    // A target whose designator is not an NAA one.
    let mut t10 = target_desc(&naa(2));
    t10[5] = 0x01;
    let p = list(
        1,
        0,
        &[target_desc(&naa(1)), t10],
        &[segment_desc(0, 1, 1, 0, 0)],
    );
    assert_eq!(
        sense_of(&xcopy(&luns, &nexus(1), p).await),
        (0x0A, 0x0D, 0x02)
    );
    // A block length other than ours.
    let mut big = target_desc(&naa(2));
    big[29..32].copy_from_slice(&[0, 0x10, 0]);
    let p = list(
        1,
        0,
        &[target_desc(&naa(1)), big],
        &[segment_desc(0, 1, 1, 0, 0)],
    );
    assert_eq!(
        sense_of(&xcopy(&luns, &nexus(1), p).await),
        (0x05, 0x26, 0x00)
    );
    assert!(b.read(0, 16).await.unwrap().iter().all(|&x| x == 0));
}

#[tokio::test]
async fn read_only_destination_is_data_protect_and_may_be_a_source() {
    let (rw, a) = unit(1, false);
    let (ro, b) = unit(2, true);
    let mut luns = LunMap::new();
    luns.insert(0, rw);
    luns.insert(1, ro);
    fill(&b, 0, &pattern(3, 8)).await;
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    let r = xcopy(
        &luns,
        &nexus(1),
        list(1, 0, &t, &[segment_desc(0, 1, 8, 0, 0)]),
    )
    .await;
    assert_eq!(sense_of(&r), (0x07, 0x27, 0x00));
    let r = xcopy(
        &luns,
        &nexus(1),
        list(1, 0, &t, &[segment_desc(1, 0, 8, 0, 0)]),
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(a.read(0, 8).await.unwrap()[..], pattern(3, 8)[..]);
}

#[tokio::test]
async fn parameter_list_errors_are_illegal_request() {
    let (luns, _, _) = two_luns();
    let n = nexus(1);
    // An empty list is not an error.
    assert_eq!(xcopy(&luns, &n, vec![]).await.status, status::GOOD);
    let t = [target_desc(&naa(1))];
    let s = [segment_desc(0, 0, 1, 0, 1)];
    let mut p = list(1, 0, &t, &s);
    p.truncate(p.len() - 1);
    assert_eq!(sense_of(&xcopy(&luns, &n, p).await), (0x05, 0x1A, 0x00));
    let mut fc = target_desc(&naa(1));
    fc[0] = 0xE0;
    let p = list(1, 0, &[fc], &s);
    assert_eq!(sense_of(&xcopy(&luns, &n, p).await), (0x05, 0x26, 0x07));
    let p = list(1, 0, &vec![target_desc(&naa(1)); 9], &s);
    assert_eq!(sense_of(&xcopy(&luns, &n, p).await), (0x05, 0x26, 0x06));
    let p = list(1, 0, &t, &vec![s[0].clone(); 65]);
    assert_eq!(sense_of(&xcopy(&luns, &n, p).await), (0x05, 0x26, 0x08));
    // LID4 (service action 1) is not offered.
    let mut c = xcopy_cdb(0);
    c[1] = 0x01;
    assert_eq!(
        sense_of(&run_on(&luns, 0, &n, &c, vec![]).await),
        (0x05, 0x24, 0x00)
    );
}

#[tokio::test]
async fn copy_status_is_held_per_nexus_and_list_id() {
    let (luns, a, _) = two_luns();
    fill(&a, 0, &pattern(5, 4)).await;
    let (n1, n2) = (nexus(1), nexus(2));
    let status_of = |n: ItNexus, id| {
        let luns = luns.clone();
        async move { run_on(&luns, 0, &n, &rcr_cdb(0, id, 1024), vec![]).await }
    };
    // Nothing held yet.
    assert_eq!(
        sense_of(&status_of(n1.clone(), 9).await),
        (0x05, 0x24, 0x00)
    );
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    let p = list(9, 0, &t, &[segment_desc(0, 1, 4, 0, 0)]);
    assert_eq!(xcopy(&luns, &n1, p).await.status, status::GOOD);
    // Another nexus does not see it.
    assert_eq!(
        sense_of(&status_of(n2.clone(), 9).await),
        (0x05, 0x24, 0x00)
    );
    let r = status_of(n1.clone(), 9).await;
    assert_eq!(r.status, status::GOOD);
    // 8 bytes available; completed without errors; 1 segment; 2048 bytes.
    assert_eq!(&r.data_in[..], &[0, 0, 0, 8, 1, 0, 1, 0, 0, 0, 8, 0]);
    // Reported once, then discarded.
    assert_eq!(
        sense_of(&status_of(n1.clone(), 9).await),
        (0x05, 0x24, 0x00)
    );
    // LIST ID USAGE 10b holds nothing.
    let p = list(10, 0b10, &t, &[segment_desc(0, 1, 4, 0, 0)]);
    assert_eq!(xcopy(&luns, &n1, p).await.status, status::GOOD);
    assert_eq!(
        sense_of(&status_of(n1.clone(), 10).await),
        (0x05, 0x24, 0x00)
    );
    // A failed copy: completed with errors, and its sense as failed segment details.
    let p = list(11, 0, &t, &[segment_desc(0, 1, 2, 0, BLOCKS - 1)]);
    let r = xcopy(&luns, &n1, p).await;
    // Checked before processing: nothing held for a list the copy never started.
    assert_eq!(sense_of(&r), (0x0A, 0x00, 0x00));
    assert_eq!(
        sense_of(&status_of(n1.clone(), 11).await),
        (0x05, 0x24, 0x00)
    );
    // A lost nexus takes its results along.
    let p = list(12, 0, &t, &[segment_desc(0, 1, 4, 0, 0)]);
    assert_eq!(xcopy(&luns, &n1, p).await.status, status::GOOD);
    luns[&0].nexus_lost(&n1).await;
    assert_eq!(
        sense_of(&status_of(n1.clone(), 12).await),
        (0x05, 0x24, 0x00)
    );
}

/// A destination whose data has no copy on a running server: the copy target is
/// not reachable, not a generic third-party failure.
#[tokio::test]
async fn unavailable_data_aborts_the_copy_as_an_unreachable_target() {
    let (src, a) = unit(1, false);
    let gone: Arc<dyn BlockBackend> = Arc::new(super::tests::Failing(|| {
        crate::backend::BackendError::Unavailable("no copy on a running SDS".into())
    }));
    let dst = Arc::new(LogicalUnit::new(
        gone,
        Identity::from_volume_id("gone", 2),
        false,
        Arc::new(super::shared::LocalStore::new()),
    ));
    let mut luns = LunMap::new();
    luns.insert(0, src);
    luns.insert(1, dst);
    fill(&a, 0, &pattern(1, 4)).await;
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    let r = xcopy(
        &luns,
        &nexus(1),
        list(3, 0, &t, &[segment_desc(0, 1, 4, 0, 0)]),
    )
    .await;
    assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x02));
}

#[tokio::test]
async fn failed_segment_details_return_the_sense_once() {
    // A destination whose writes fail after the checks pass.
    let (src, a) = unit(1, false);
    let failing: Arc<dyn BlockBackend> = Arc::new(super::tests::Failing(|| {
        crate::backend::BackendError::Io(std::io::Error::other("boom"))
    }));
    let dst = Arc::new(LogicalUnit::new(
        failing,
        Identity::from_volume_id("bad", 2),
        false,
        Arc::new(super::shared::LocalStore::new()),
    ));
    let mut luns = LunMap::new();
    luns.insert(0, src);
    luns.insert(1, dst);
    fill(&a, 0, &pattern(1, 4)).await;
    let n = nexus(1);
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    let r = xcopy(&luns, &n, list(3, 0, &t, &[segment_desc(0, 1, 4, 0, 0)])).await;
    assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x01));
    let st = run_on(&luns, 0, &n, &rcr_cdb(0, 3, 64), vec![]).await;
    assert_eq!(st.data_in[4], 2, "completed with errors");
    let fsd = run_on(&luns, 0, &n, &rcr_cdb(4, 3, 1024), vec![]).await;
    assert_eq!(fsd.status, status::GOOD);
    let d = &fsd.data_in;
    assert_eq!(d[56], status::CHECK_CONDITION);
    assert_eq!(u16::from_be_bytes([d[58], d[59]]), 18);
    assert_eq!((d[60] & 0x7F, d[62], d[72]), (0x70, 0x0A, 0x0D));
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
        d.len() - 4
    );
    // Delivered whole: gone.
    let again = run_on(&luns, 0, &n, &rcr_cdb(4, 3, 1024), vec![]).await;
    assert_eq!(sense_of(&again), (0x05, 0x24, 0x00));
}

#[tokio::test]
async fn operating_parameters_and_vpd_8f_agree() {
    let (luns, _, _) = two_luns();
    let n = nexus(1);
    let r = run_on(&luns, 0, &n, &rcr_cdb(3, 0, 1024), vec![]).await;
    let d = &r.data_in;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize,
        d.len() - 4
    );
    assert_eq!(u16::from_be_bytes([d[8], d[9]]), 8);
    assert_eq!(u16::from_be_bytes([d[10], d[11]]), 64);
    let max_list = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
    assert_eq!(max_list, 8 * 32 + 64 * 28);
    let max_seg = u32::from_be_bytes([d[16], d[17], d[18], d[19]]);
    assert_eq!(max_seg, 65535 * 512);
    assert_eq!(&d[20..24], &[0; 4], "no inline data");
    assert_eq!(&d[43..], &[2, 0x02, 0xE4]);

    // VPD 0x00 lists 0x8F; the page's descriptors carry the same limits.
    let r = run_on(&luns, 0, &n, &[0x12, 1, 0x00, 0, 255, 0], vec![]).await;
    assert!(r.data_in[4..].contains(&0x8F));
    let r = run_on(&luns, 0, &n, &[0x12, 1, 0x8F, 1, 0, 0], vec![]).await;
    let p = &r.data_in;
    assert_eq!(p[1], 0x8F);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len() - 4);
    let mut descs = std::collections::BTreeMap::new();
    let mut at = 4;
    while at < p.len() {
        let kind = u16::from_be_bytes([p[at], p[at + 1]]);
        let len = u16::from_be_bytes([p[at + 2], p[at + 3]]) as usize;
        assert_eq!(len % 4, 0);
        descs.insert(kind, p[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    assert_eq!(at, p.len());
    assert_eq!(&descs[&0x0001][..9], &[8, 0x83, 1, 0, 0x84, 3, 0, 3, 4]);
    let pd = &descs[&0x0004];
    assert_eq!(&pd[4..12], &d[8..16]);
    assert_eq!(&descs[&0x0008][..3], &[2, 0x02, 0xE4]);
    let gco = &descs[&0x8001];
    assert_eq!(&gco[8..12], &d[16..20]);
    assert_eq!(gco[12], 9);
    // Standard INQUIRY says third-party copy is supported.
    let r = run_on(&luns, 0, &n, &[0x12, 0, 0, 0, 96, 0], vec![]).await;
    assert_eq!(r.data_in[5] & 0x08, 0x08);
}

#[tokio::test]
async fn a_second_copy_with_a_running_list_id_is_refused() {
    let (luns, _, _) = two_luns();
    let n = nexus(1);
    luns[&0].lock().copies.begin(&n, 4, true).unwrap();
    let t = [target_desc(&naa(1))];
    let r = xcopy(&luns, &n, list(4, 0, &t, &[segment_desc(0, 0, 1, 0, 1)])).await;
    assert_eq!(sense_of(&r), (0x05, 0x00, 0x16));
    // Another nexus may use the same list identifier.
    let r = xcopy(
        &luns,
        &nexus(2),
        list(4, 0, &t, &[segment_desc(0, 0, 1, 0, 1)]),
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    let st = run_on(&luns, 0, &n, &rcr_cdb(0, 4, 64), vec![]).await;
    assert_eq!(st.data_in[4], 0, "still running");
}

#[tokio::test]
async fn a_volume_reached_read_only_and_read_write_is_written_through_the_writable_lun() {
    let (src, a) = unit(1, false);
    let be = Arc::new(MemoryBackend::new(BLOCKS));
    let store: Arc<dyn super::shared::SharedStore> = Arc::new(super::shared::LocalStore::new());
    let id = Identity::from_volume_id("vol2", 2);
    let ro = LogicalUnit::new(be.clone(), id.clone(), true, store.clone());
    let rw = LogicalUnit::new(be.clone(), id, false, store);
    let mut luns = LunMap::new();
    luns.insert(0, Arc::new(ro));
    luns.insert(1, Arc::new(rw));
    luns.insert(2, src);
    fill(&a, 0, &pattern(6, 8)).await;
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    let r = xcopy(
        &luns,
        &nexus(1),
        list(1, 0, &t, &[segment_desc(0, 1, 8, 0, 0)]),
    )
    .await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    assert_eq!(be.read(0, 8).await.unwrap()[..], pattern(6, 8)[..]);
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn prout(sa: u8, kind: u8, key: u64, sark: u64) -> (Vec<u8>, Vec<u8>) {
    let mut c = vec![0u8; 10];
    c[0] = 0x5F;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    (c, p)
}

#[tokio::test]
async fn reservations_on_the_source_and_destination_bind_the_copy() {
    let (luns, a, b) = two_luns();
    fill(&a, 0, &pattern(8, 8)).await;
    fill(&b, 0, &pattern(9, 8)).await;
    // Another nexus holds a Write Exclusive reservation on LUN 1 (volume 2).
    let holder = nexus(2);
    let (c, p) = prout(0x00, 0, 0, 0xABC);
    assert_eq!(run_on(&luns, 1, &holder, &c, p).await.status, status::GOOD);
    let (c, p) = prout(0x01, 0x01, 0xABC, 0);
    assert_eq!(run_on(&luns, 1, &holder, &c, p).await.status, status::GOOD);
    let t = [target_desc(&naa(1)), target_desc(&naa(2))];
    // Writing into it through the copy manager on LUN 0 conflicts, and changes nothing.
    let r = xcopy(
        &luns,
        &nexus(1),
        list(1, 0, &t, &[segment_desc(0, 1, 8, 0, 0)]),
    )
    .await;
    assert_eq!(r.status, status::RESERVATION_CONFLICT);
    assert_eq!(b.read(0, 8).await.unwrap()[..], pattern(9, 8)[..]);
    // Reading from it is what Write Exclusive allows.
    let r = xcopy(
        &luns,
        &nexus(1),
        list(1, 0, &t, &[segment_desc(1, 0, 8, 0, 0)]),
    )
    .await;
    assert_eq!(r.status, status::GOOD);
    assert_eq!(a.read(0, 8).await.unwrap()[..], pattern(9, 8)[..]);
    // The holder itself may copy into it.
    let r = xcopy(
        &luns,
        &holder,
        list(1, 0, &t, &[segment_desc(0, 1, 8, 0, 0)]),
    )
    .await;
    assert_eq!(r.status, status::GOOD);
}
