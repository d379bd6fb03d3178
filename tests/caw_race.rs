//! COMPARE AND WRITE is atomic across gateways: MDM, two SDS and two gateways as
//! separate processes, one thin mirrored volume mapped to two hosts, each host logged
//! in to a different gateway. Round after round both hosts try to swap the same
//! expected value for their own; exactly one may win each round.

mod common;

use common::cluster::{logged_in, Cluster};
use common::Initiator;
use std::sync::{Arc, Barrier, Mutex};

const HOST_A: &str = "iqn.1998-01.com.vmware:caw-host-a";
const HOST_B: &str = "iqn.1998-01.com.vmware:caw-host-b";
const ROUNDS: u64 = 200;
/// The contended block: 1 MiB + 7 blocks, inside chunk 1.
const LBA: u64 = 2048 + 7;

/// The block as host `who` (1 or 2) writes it in `round`; round 0 is the start value.
fn value(round: u64, who: u8) -> Vec<u8> {
    let mut b: Vec<u8> = (0..512u32)
        .map(|i| (i as u8) ^ (round as u8).wrapping_mul(31) ^ who)
        .collect();
    b[..8].copy_from_slice(&round.to_be_bytes());
    b[8] = who;
    b
}

fn write16(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8A;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

fn read16(lba: u64) -> [u8; 16] {
    let mut c = write16(lba);
    c[0] = 0x88;
    c
}

fn compare_and_write(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Won,
    /// MISCOMPARE with this INFORMATION (byte offset of the first difference).
    Lost(u32),
}

#[test]
fn two_gateways_never_both_win_a_compare_and_write() {
    let c = Cluster::shared_volume(&[("host-a", HOST_A), ("host-b", HOST_B)]);
    let (_gw1, portal1) = c.gateway_named("gw1", false);
    let (_gw2, portal2) = c.gateway_named("gw2", false);
    assert_ne!(portal1, portal2);
    let mut a = logged_in(portal1, HOST_A);
    let b = logged_in(portal2, HOST_B);

    let start = value(0, 0);
    assert_eq!(a.scsi(&write16(LBA), 512, Some(&start), 512).status, 0);

    // Each round: both wait at the barrier, then send COMPARE AND WRITE with the same
    // expected value and their own new one; then both record and check the round.
    let barrier = Arc::new(Barrier::new(2));
    let results: Arc<Mutex<Vec<[Option<Outcome>; 2]>>> =
        Arc::new(Mutex::new(vec![[None; 2]; ROUNDS as usize + 1]));
    let run = |mut i: Initiator, who: u8| {
        let barrier = barrier.clone();
        let results = results.clone();
        std::thread::spawn(move || {
            let mut expected = value(0, 0);
            for round in 1..=ROUNDS {
                let mut out = expected.clone();
                out.extend_from_slice(&value(round, who));
                barrier.wait();
                let r = i.scsi(&compare_and_write(LBA), 1024, Some(&out), 1024);
                let outcome = match r.status {
                    0 => Outcome::Won,
                    2 => {
                        let s = &r.sense;
                        assert_eq!(
                            (s[0], s[2] & 0x0F, s[12], s[13]),
                            (0xF0, 0x0E, 0x1D, 0x00),
                            "round {round}: MISCOMPARE with a valid INFORMATION field"
                        );
                        Outcome::Lost(u32::from_be_bytes(s[3..7].try_into().unwrap()))
                    }
                    other => panic!("round {round}: host {who} got status {other:#x}"),
                };
                results.lock().unwrap()[round as usize][who as usize - 1] = Some(outcome);
                barrier.wait();
                let [r1, r2] = results.lock().unwrap()[round as usize];
                let winner = match (r1, r2) {
                    (Some(Outcome::Won), Some(Outcome::Lost(_))) => 1,
                    (Some(Outcome::Lost(_)), Some(Outcome::Won)) => 2,
                    other => panic!("round {round}: not exactly one winner: {other:?}"),
                };
                let now = value(round, winner);
                // The loser compared the old value with the winner's new one: the
                // INFORMATION field names their first differing byte.
                if let Outcome::Lost(at) = outcome {
                    let first = expected.iter().zip(&now).position(|(x, y)| x != y);
                    assert_eq!(Some(at as usize), first, "round {round}");
                }
                // Both gateways read back the winner's block.
                let read = i.scsi(&read16(LBA), 512, None, 0);
                assert_eq!(read.status, 0);
                assert!(
                    read.data == now,
                    "round {round}: host {who} reads another block"
                );
                expected = now;
            }
            i
        })
    };
    let ta = run(a, 1);
    let tb = run(b, 2);
    let mut a = ta.join().unwrap();
    tb.join().unwrap();

    let results = results.lock().unwrap();
    let wins_a = results[1..]
        .iter()
        .filter(|r| r[0] == Some(Outcome::Won))
        .count();
    let wins_b = results[1..]
        .iter()
        .filter(|r| r[1] == Some(Outcome::Won))
        .count();
    println!(
        "COMPARE AND WRITE race: {ROUNDS} rounds, host A via gw1 won {wins_a}, host B via gw2 won {wins_b}"
    );
    assert_eq!(wins_a + wins_b, ROUNDS as usize);
    let last = results[ROUNDS as usize];
    let winner = if last[0] == Some(Outcome::Won) { 1 } else { 2 };
    let end = a.scsi(&read16(LBA), 512, None, 0);
    assert_eq!(
        end.data,
        value(ROUNDS, winner),
        "the final block is the last winner's"
    );
}
