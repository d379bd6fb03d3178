//! Reservations through the engine's entry point: the command table, the conflict
//! check, the store round trip and the unit attentions it delivers.

use super::*;
use crate::backend::MemoryBackend;
use crate::scsi::shared::{LocalStore, SharedEvent, SharedStore, UnitSink};
use crate::scsi::{execute, status, Identity, LunMap, Request, ResetKind, Response};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};

fn nexus(i: u8) -> ItNexus {
    ItNexus {
        initiator: Arc::from(format!("iqn.2024-01.test:host{i}").as_str()),
        isid: [0x40, 0, 0, 0, 0, i],
        tpgt: 1,
    }
}

fn luns_over(store: Arc<dyn SharedStore>) -> LunMap {
    let u = LogicalUnit::new(
        Arc::new(MemoryBackend::new(64)),
        Identity::from_volume_id("vol0", 7),
        false,
        store,
    );
    let mut m = LunMap::new();
    m.insert(0, Arc::new(u));
    m
}

fn luns() -> LunMap {
    luns_over(Arc::new(LocalStore::new()))
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

/// Runs TEST UNIT READY until GOOD, returning the unit attentions it met.
async fn drain(luns: &LunMap, n: &ItNexus) -> Vec<(u8, u8)> {
    let mut seen = vec![];
    loop {
        let r = run(luns, n, &[0; 6], vec![]).await;
        match r.status {
            status::GOOD => return seen,
            status::CHECK_CONDITION => seen.push((r.sense[12], r.sense[13])),
            other => panic!("TEST UNIT READY: status {other:#x}"),
        }
    }
}

fn asc_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
    (r.sense[2] & 0x0F, r.sense[12], r.sense[13])
}

fn prout_cdb(sa: u8, type_code: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, type_code, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

async fn prout(luns: &LunMap, n: &ItNexus, sa: u8, type_code: u8, key: u64, sa_key: u64) -> u8 {
    let mut d = vec![0u8; 24];
    d[..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    run(luns, n, &prout_cdb(sa, type_code, 24), d).await.status
}

async fn prin(luns: &LunMap, n: &ItNexus, sa: u8, alloc: u16) -> Response {
    let mut c = vec![0x5E, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    run(luns, n, &c, vec![]).await
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const MODE_SENSE6: [u8; 6] = [0x1A, 0, 0x3F, 0, 255, 0];

#[tokio::test]
async fn exclusive_access_fences_another_nexus_until_released() {
    let luns = luns();
    let (a, b) = (nexus(1), nexus(2));
    drain(&luns, &a).await;
    drain(&luns, &b).await;
    assert_eq!(prout(&luns, &a, 0x06, 0, 0, 0xA).await, status::GOOD);
    assert_eq!(prout(&luns, &a, 0x01, 0x3, 0xA, 0).await, status::GOOD);
    let w = vec![0u8; 512];
    assert_eq!(
        run(&luns, &a, &WRITE10, w.clone()).await.status,
        status::GOOD
    );
    assert_eq!(
        run(&luns, &b, &READ10, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        run(&luns, &b, &WRITE10, w.clone()).await.status,
        status::RESERVATION_CONFLICT
    );
    // INQUIRY, REPORT LUNS, TEST UNIT READY and READ CAPACITY still pass.
    for c in [
        &[0x12, 0, 0, 0, 36, 0][..],
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0],
        &[0; 6],
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        assert_eq!(
            run(&luns, &b, c, vec![]).await.status,
            status::GOOD,
            "{c:x?}"
        );
    }
    let r = prin(&luns, &b, 0x01, 64).await;
    assert_eq!((r.data_in[7], r.data_in[15], r.data_in[21]), (16, 0xA, 0x3));
    assert_eq!(prout(&luns, &a, 0x02, 0x3, 0xA, 0).await, status::GOOD);
    assert_eq!(run(&luns, &b, &WRITE10, w).await.status, status::GOOD);
}

#[tokio::test]
async fn preempt_tells_the_preempted_nexus() {
    let luns = luns();
    let (a, b) = (nexus(1), nexus(2));
    drain(&luns, &a).await;
    drain(&luns, &b).await;
    assert_eq!(prout(&luns, &a, 0x06, 0, 0, 0xA).await, status::GOOD);
    assert_eq!(prout(&luns, &b, 0x06, 0, 0, 0xB).await, status::GOOD);
    assert_eq!(prout(&luns, &a, 0x01, 0x1, 0xA, 0).await, status::GOOD);
    let gen = |r: &Response| u32::from_be_bytes(r.data_in[..4].try_into().unwrap());
    let before = gen(&prin(&luns, &a, 0, 64).await);
    assert_eq!(prout(&luns, &b, 0x04, 0x3, 0xB, 0xA).await, status::GOOD);
    assert_eq!(drain(&luns, &a).await, vec![(0x2A, 0x05)]);
    assert_eq!(drain(&luns, &b).await, vec![]);
    let r = prin(&luns, &a, 0, 64).await;
    assert_eq!(gen(&r), before + 1);
    assert_eq!((r.data_in[7], r.data_in[15]), (8, 0xB));
    assert_eq!(
        run(&luns, &a, &READ10, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
    // CLEAR from b: a is no longer registered, so only b's own state goes.
    assert_eq!(prout(&luns, &b, 0x03, 0, 0xB, 0).await, status::GOOD);
    assert_eq!(run(&luns, &a, &READ10, vec![]).await.status, status::GOOD);
}

#[tokio::test]
async fn errors_come_back_as_the_standard_says() {
    let luns = luns();
    let a = nexus(1);
    drain(&luns, &a).await;
    // Unknown service actions of PERSISTENT RESERVE IN.
    for sa in 4..0x20 {
        assert_eq!(asc_of(&prin(&luns, &a, sa, 64).await), (0x05, 0x24, 0x00));
    }
    // Unknown service actions of PERSISTENT RESERVE OUT.
    for sa in 8..0x20 {
        let r = run(&luns, &a, &prout_cdb(sa, 0, 24), vec![0; 24]).await;
        assert_eq!(asc_of(&r), (0x05, 0x24, 0x00));
    }
    // A parameter list that is not 24 bytes.
    let r = run(&luns, &a, &prout_cdb(0x06, 0, 20), vec![0; 20]).await;
    assert_eq!(asc_of(&r), (0x05, 0x1A, 0x00));
    // A bad key is a conflict, not a check condition.
    assert_eq!(
        prout(&luns, &a, 0x00, 0, 5, 6).await,
        status::RESERVATION_CONFLICT
    );
    // A bad type.
    assert_eq!(prout(&luns, &a, 0x06, 0, 0, 1).await, status::GOOD);
    let r = run(&luns, &a, &prout_cdb(0x01, 0x2, 24), {
        let mut d = vec![0u8; 24];
        d[7] = 1;
        d
    })
    .await;
    assert_eq!(asc_of(&r), (0x05, 0x24, 0x00));
    // READ KEYS cut to eight bytes still reports the whole length.
    let r = prin(&luns, &a, 0, 8).await;
    assert_eq!((r.data_in.len(), r.data_in[7]), (8, 8));
    // REPORT CAPABILITIES.
    let r = prin(&luns, &a, 2, 64).await;
    assert_eq!(&r.data_in[..], &[0, 8, 0x15, 0xB0, 0xEA, 0x01, 0, 0]);
    // READ FULL STATUS names the nexus in an iSCSI TransportID.
    let r = prin(&luns, &a, 3, 1024).await;
    let tid = &r.data_in[8 + 24..];
    assert_eq!(tid[0], 0x45);
    assert!(tid[4..].starts_with(b"iqn.2024-01.test:host1,i,0x400000000001\0"));
}

#[tokio::test]
async fn reserve6_between_two_initiators() {
    let luns = luns();
    let (a, b) = (nexus(1), nexus(2));
    drain(&luns, &a).await;
    drain(&luns, &b).await;
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    assert_eq!(run(&luns, &a, &reserve6, vec![]).await.status, status::GOOD);
    assert_eq!(run(&luns, &a, &reserve6, vec![]).await.status, status::GOOD);
    assert_eq!(
        run(&luns, &b, &reserve6, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(run(&luns, &b, &release6, vec![]).await.status, status::GOOD);
    assert_eq!(
        run(&luns, &a, &MODE_SENSE6, vec![]).await.status,
        status::GOOD
    );
    assert_eq!(
        run(&luns, &b, &MODE_SENSE6, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
    // Persistent reservation commands conflict for everyone meanwhile.
    assert_eq!(
        prin(&luns, &a, 0, 64).await.status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(run(&luns, &a, &release6, vec![]).await.status, status::GOOD);
    let reserve10 = [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        run(&luns, &b, &reserve10, vec![]).await.status,
        status::GOOD
    );
    // Third-party reservations are not supported.
    let r = run(&luns, &b, &[0x56, 0x10, 0, 3, 0, 0, 0, 0, 8, 0], vec![]).await;
    assert_eq!(asc_of(&r), (0x05, 0x24, 0x00));
}

#[tokio::test]
async fn reserve6_ends_with_nexus_loss_and_resets() {
    let luns = luns();
    let u = luns[&0].clone();
    let (a, b) = (nexus(1), nexus(2));
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    drain(&luns, &b).await;
    for end in 0..3 {
        drain(&luns, &a).await;
        assert_eq!(run(&luns, &a, &reserve6, vec![]).await.status, status::GOOD);
        assert_eq!(
            run(&luns, &b, &reserve6, vec![]).await.status,
            status::RESERVATION_CONFLICT
        );
        match end {
            0 => u.nexus_lost(&a).await,
            1 => u.reset(ResetKind::LogicalUnit).await,
            _ => u.reset(ResetKind::TargetWarm).await,
        }
        drain(&luns, &b).await;
        assert_eq!(run(&luns, &b, &reserve6, vec![]).await.status, status::GOOD);
        assert_eq!(
            run(&luns, &b, &[0x17, 0, 0, 0, 0, 0], vec![]).await.status,
            status::GOOD
        );
    }
    // Losing a nexus that holds nothing leaves the holder's reservation alone.
    assert_eq!(run(&luns, &b, &reserve6, vec![]).await.status, status::GOOD);
    u.nexus_lost(&a).await;
    // (a is new again: its first command meets the power-on attention.)
    assert_eq!(asc_of(&run(&luns, &a, &reserve6, vec![]).await).1, 0x29);
    assert_eq!(
        run(&luns, &a, &reserve6, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
}

#[tokio::test]
async fn prevent_and_start_stop_follow_their_cdb() {
    let luns = luns();
    let (a, b) = (nexus(1), nexus(2));
    drain(&luns, &a).await;
    drain(&luns, &b).await;
    assert_eq!(prout(&luns, &a, 0x06, 0, 0, 0xA).await, status::GOOD);
    assert_eq!(prout(&luns, &a, 0x01, 0x1, 0xA, 0).await, status::GOOD);
    let allow = [0x1E, 0, 0, 0, 0, 0];
    let prevent = [0x1E, 0, 0, 0, 1, 0];
    let start = [0x1B, 0, 0, 0, 1, 0];
    let stop = [0x1B, 0, 0, 0, 0, 0];
    assert_eq!(run(&luns, &b, &allow, vec![]).await.status, status::GOOD);
    assert_eq!(run(&luns, &b, &start, vec![]).await.status, status::GOOD);
    for c in [prevent, stop] {
        assert_eq!(
            run(&luns, &b, &c, vec![]).await.status,
            status::RESERVATION_CONFLICT
        );
    }
}

/// A store that loses the first `races` updates to someone else, or is unreachable.
#[derive(Debug)]
struct Flaky {
    inner: LocalStore,
    races: AtomicUsize,
    down: bool,
}

#[async_trait]
impl SharedStore for Flaky {
    fn load(&self) -> (u64, Bytes) {
        self.inner.load()
    }

    async fn store(
        &self,
        version: u64,
        state: Bytes,
        events: Vec<SharedEvent>,
    ) -> Result<u64, SharedError> {
        if self.down {
            return Err(SharedError::Unavailable("MDM unreachable".into()));
        }
        if self.races.load(Ordering::SeqCst) > 0 {
            self.races.fetch_sub(1, Ordering::SeqCst);
            // Someone else's update lands first.
            let (v, cur) = self.inner.load();
            self.inner.store(v, cur, vec![]).await?;
        }
        self.inner.store(version, state, events).await
    }

    async fn publish(&self, events: Vec<SharedEvent>) -> Result<(), SharedError> {
        self.inner.publish(events).await
    }

    fn attach(&self, sink: UnitSink) {
        self.inner.attach(sink)
    }
}

#[tokio::test]
async fn lost_races_rerun_and_an_unreachable_store_aborts() {
    let store = Arc::new(Flaky {
        inner: LocalStore::new(),
        races: AtomicUsize::new(3),
        down: false,
    });
    let luns = luns_over(store.clone());
    let a = nexus(1);
    drain(&luns, &a).await;
    assert_eq!(prout(&luns, &a, 0x06, 0, 0, 0xA).await, status::GOOD);
    assert_eq!(store.races.load(Ordering::SeqCst), 0);
    let r = prin(&luns, &a, 0, 64).await;
    assert_eq!((r.data_in[7], r.data_in[15]), (8, 0xA));

    let luns = luns_over(Arc::new(Flaky {
        inner: LocalStore::new(),
        races: AtomicUsize::new(0),
        down: true,
    }));
    drain(&luns, &a).await;
    let r = run(&luns, &a, &prout_cdb(0x06, 0, 24), {
        let mut d = vec![0u8; 24];
        d[15] = 1;
        d
    })
    .await;
    assert_eq!(asc_of(&r), (0x0B, 0x08, 0x00));
}

#[tokio::test]
async fn units_of_one_volume_share_reservations() {
    let store: Arc<dyn SharedStore> = Arc::new(LocalStore::new());
    let rw = luns_over(store.clone());
    let ro = luns_over(store);
    let (a, b) = (nexus(1), nexus(2));
    for l in [&rw, &ro] {
        drain(l, &a).await;
        drain(l, &b).await;
    }
    assert_eq!(prout(&rw, &a, 0x06, 0, 0, 0xA).await, status::GOOD);
    assert_eq!(prout(&ro, &b, 0x06, 0, 0, 0xB).await, status::GOOD);
    assert_eq!(prout(&rw, &a, 0x01, 0x3, 0xA, 0).await, status::GOOD);
    assert_eq!(
        run(&ro, &b, &READ10, vec![]).await.status,
        status::RESERVATION_CONFLICT
    );
    // Preempting through one unit raises the attention on both.
    assert_eq!(prout(&ro, &b, 0x04, 0x3, 0xB, 0xA).await, status::GOOD);
    assert_eq!(drain(&rw, &a).await, vec![(0x2A, 0x05)]);
    assert_eq!(drain(&ro, &a).await, vec![(0x2A, 0x05)]);
}
