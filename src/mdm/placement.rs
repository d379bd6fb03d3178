//! Where the copies of each chunk go. Pure and deterministic: the same pool and the
//! same request give the same placement, so a retried thick grow asks the SDS for the
//! very slots it may already have reserved.
//!
//! Greedy, one chunk at a time: the first copy goes to the least filled device
//! (copies per slot, counting the chunk about to land; among equals the one with
//! fewest primaries per slot), the second (two-copy pools) to the least filled
//! device of another SDS, preferring among equals the device that shares the fewest
//! chunks with the first (so a failed SDS's data is rebuilt from many peers, not one).
//! Of the two, the device with fewer primaries per slot becomes the primary, since
//! reads go to primaries; a single copy is its chunk's primary. Filling by copies per
//! slot keeps every device, hence every SDS, at a share proportional to its capacity.

use crate::cluster::api::Protection;
use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("devices on {sds} SDS; a chunk's copies need devices on {needed} SDS")]
    TooFewSds { sds: usize, needed: usize },
    #[error("room for {placed} of {wanted} chunks")]
    Full { placed: u64, wanted: u64 },
}

/// A device chunks can go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub sds: u64,
    pub slots: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    copies: u64,
    primaries: u64,
    /// Copies of thick volumes: slots they own whether written or not.
    reserved: u64,
}

pub struct Placer {
    targets: Vec<Target>,
    load: Vec<Load>,
    /// `pairs[a * n + b]`: chunks with copies on both a and b.
    pairs: Vec<u32>,
}

/// `a` per `a_slots` against `b` per `b_slots`, exactly.
fn per_slot(a: u64, a_slots: u64, b: u64, b_slots: u64) -> Ordering {
    (a as u128 * b_slots as u128).cmp(&(b as u128 * a_slots as u128))
}

impl Placer {
    pub fn new(targets: Vec<Target>) -> Self {
        let n = targets.len();
        Self {
            load: vec![Load::default(); n],
            pairs: vec![0; n * n],
            targets,
        }
    }

    /// Counts a chunk already in the pool (indices into the targets, primary first; a
    /// degraded chunk has no secondary); `reserved` for a thick volume's chunk.
    pub fn record(&mut self, chunk: [Option<usize>; 2], reserved: bool) {
        if let Some(p) = chunk[0] {
            self.load[p].primaries += 1;
        }
        for i in chunk.into_iter().flatten() {
            self.load[i].copies += 1;
            self.load[i].reserved += u64::from(reserved);
        }
        if let [Some(p), Some(s)] = chunk {
            let n = self.targets.len();
            self.pairs[p * n + s] += 1;
            self.pairs[s * n + p] += 1;
        }
    }

    /// Slots thick volumes have not reserved, over every target.
    pub fn unreserved(&self) -> u64 {
        self.targets
            .iter()
            .zip(&self.load)
            .map(|(t, l)| t.slots.saturating_sub(l.reserved))
            .sum()
    }

    /// Places `chunks` new chunks with the copies `protection` keeps, returning for
    /// each the target indices of its primary and secondary (none in a single-copy
    /// pool). With `reserve` (thick), a copy only goes where a slot is free of
    /// reservations, and takes it. On error the placer is spent.
    pub fn place(
        &mut self,
        chunks: u64,
        protection: Protection,
        reserve: bool,
    ) -> Result<Vec<[Option<usize>; 2]>, PlacementError> {
        let copies = protection.copies();
        let mut sds: Vec<u64> = self
            .targets
            .iter()
            .filter(|t| t.slots > 0)
            .map(|t| t.sds)
            .collect();
        sds.sort_unstable();
        sds.dedup();
        if (sds.len() as u64) < copies {
            return Err(PlacementError::TooFewSds {
                sds: sds.len(),
                needed: copies as usize,
            });
        }
        let full = |placed| PlacementError::Full {
            placed,
            wanted: chunks,
        };
        if reserve && chunks.saturating_mul(copies) > self.unreserved() {
            return Err(full(0));
        }
        let mut out = Vec::with_capacity(chunks as usize);
        for placed in 0..chunks {
            let first = self.pick(reserve, None).ok_or_else(|| full(placed))?;
            let pair = match protection {
                Protection::SingleCopy => [Some(first), None],
                Protection::TwoCopies => {
                    let second = self
                        .pick(reserve, Some(first))
                        .ok_or_else(|| full(placed))?;
                    if self.fewer_primaries(second, first) {
                        [Some(second), Some(first)]
                    } else {
                        [Some(first), Some(second)]
                    }
                }
            };
            self.record(pair, reserve);
            out.push(pair);
        }
        Ok(out)
    }

    /// The least filled eligible target; with `beside`, only on another SDS than it.
    fn pick(&self, reserve: bool, beside: Option<usize>) -> Option<usize> {
        let n = self.targets.len();
        let mut best: Option<usize> = None;
        for (i, t) in self.targets.iter().enumerate() {
            let l = &self.load[i];
            if t.slots == 0 || (reserve && l.reserved >= t.slots) {
                continue;
            }
            if let Some(b) = beside {
                if self.targets[b].sds == t.sds {
                    continue;
                }
            }
            let better = match best {
                None => true,
                Some(j) => {
                    let lj = &self.load[j];
                    let tj = &self.targets[j];
                    let by_fill = per_slot(l.copies + 1, t.slots, lj.copies + 1, tj.slots);
                    let tie = match beside {
                        Some(b) => self.pairs[b * n + i].cmp(&self.pairs[b * n + j]),
                        None => per_slot(l.primaries, t.slots, lj.primaries, tj.slots),
                    };
                    by_fill.then(tie) == Ordering::Less
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    fn fewer_primaries(&self, a: usize, b: usize) -> bool {
        let (la, lb) = (&self.load[a], &self.load[b]);
        per_slot(
            la.primaries + 1,
            self.targets[a].slots,
            lb.primaries + 1,
            self.targets[b].slots,
        ) == Ordering::Less
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Protection = Protection::TwoCopies;

    /// Two-copy placements as plain (primary, secondary) pairs.
    fn pairs(
        placed: Result<Vec<[Option<usize>; 2]>, PlacementError>,
    ) -> Result<Vec<[usize; 2]>, PlacementError> {
        placed.map(|all| all.into_iter().map(|c| c.map(Option::unwrap)).collect())
    }

    /// One target per (sds, slots) entry.
    fn placer(devices: &[(u64, u64)]) -> Placer {
        Placer::new(
            devices
                .iter()
                .map(|&(sds, slots)| Target { sds, slots })
                .collect(),
        )
    }

    /// Copies and primaries per target.
    fn tally(n: usize, placed: &[[usize; 2]]) -> (Vec<u64>, Vec<u64>) {
        let (mut copies, mut primaries) = (vec![0; n], vec![0; n]);
        for &[p, s] in placed {
            copies[p] += 1;
            copies[s] += 1;
            primaries[p] += 1;
        }
        (copies, primaries)
    }

    fn assert_near(what: &str, got: u64, want: f64, tolerance: f64) {
        let err = (got as f64 - want).abs() / want;
        assert!(
            err <= tolerance,
            "{what}: got {got}, fair share {want:.1} ({:.1}% off)",
            err * 100.0
        );
    }

    fn assert_separate(devices: &[(u64, u64)], placed: &[[usize; 2]]) {
        for &[p, s] in placed {
            assert_ne!(devices[p].0, devices[s].0, "two copies on one SDS");
        }
    }

    #[test]
    fn four_equal_sds_share_copies_and_primaries_evenly() {
        let devices = [(1, 10_000), (2, 10_000), (3, 10_000), (4, 10_000)];
        let placed = pairs(placer(&devices).place(20_480, TWO, false)).unwrap();
        assert_eq!(placed.len(), 20_480);
        assert_separate(&devices, &placed);
        let (copies, primaries) = tally(4, &placed);
        for i in 0..4 {
            assert_near("copies", copies[i], 10_240.0, 0.01);
            assert_near("primaries", primaries[i], 5_120.0, 0.01);
        }
    }

    #[test]
    fn unequal_capacities_fill_in_proportion() {
        let devices = [(1, 1_000), (2, 2_000), (3, 3_000), (4, 4_000), (5, 2_500)];
        let total: u64 = devices.iter().map(|d| d.1).sum();
        let chunks = 20_480;
        let placed = pairs(placer(&devices).place(chunks, TWO, false)).unwrap();
        assert_separate(&devices, &placed);
        let (copies, primaries) = tally(devices.len(), &placed);
        for (i, &(_, slots)) in devices.iter().enumerate() {
            let share = slots as f64 / total as f64;
            assert_near("copies", copies[i], 2.0 * chunks as f64 * share, 0.05);
            assert_near("primaries", primaries[i], chunks as f64 * share, 0.05);
        }
    }

    #[test]
    fn several_devices_per_sds_fill_in_proportion_and_copies_never_share_an_sds() {
        let devices = [
            (1, 500),
            (1, 1_500),
            (2, 1_000),
            (3, 800),
            (3, 800),
            (3, 400),
            (4, 1_000),
        ];
        let total: u64 = devices.iter().map(|d| d.1).sum();
        let chunks = 3_000;
        let placed = pairs(placer(&devices).place(chunks, TWO, false)).unwrap();
        assert_separate(&devices, &placed);
        let (copies, _) = tally(devices.len(), &placed);
        for (i, &(_, slots)) in devices.iter().enumerate() {
            let want = 2.0 * chunks as f64 * slots as f64 / total as f64;
            assert_near("copies", copies[i], want, 0.05);
        }
    }

    #[test]
    fn pairs_spread_over_every_combination() {
        let devices = [(1, 1_000), (2, 1_000), (3, 1_000), (4, 1_000)];
        let placed = pairs(placer(&devices).place(600, TWO, false)).unwrap();
        let mut pairs = std::collections::BTreeMap::new();
        for [p, s] in placed {
            *pairs.entry((p.min(s), p.max(s))).or_insert(0u64) += 1;
        }
        assert_eq!(pairs.len(), 6, "{pairs:?}");
        for (&pair, &count) in &pairs {
            assert_near(&format!("pair {pair:?}"), count, 100.0, 0.05);
        }
    }

    #[test]
    fn chunks_already_in_the_pool_steer_new_ones_elsewhere() {
        let devices = [(1, 1_000), (2, 1_000), (3, 1_000), (4, 1_000)];
        let mut p = placer(&devices);
        for _ in 0..300 {
            p.record([Some(0), Some(1)], false);
        }
        // 1200 copies in all: 300 each, so the new 600 all go to sds3 and sds4.
        let placed = pairs(p.place(300, TWO, false)).unwrap();
        assert_eq!(tally(4, &placed).0, [0, 0, 300, 300]);
        let placed = pairs(p.place(400, TWO, false)).unwrap();
        assert_eq!(tally(4, &placed).0, [200, 200, 200, 200]);
    }

    #[test]
    fn thick_reservations_stop_at_the_slots() {
        let devices = [(1, 10), (2, 10), (3, 4)];
        let mut p = placer(&devices);
        assert_eq!(p.unreserved(), 24);
        let placed = pairs(p.place(12, TWO, true)).unwrap();
        let (copies, _) = tally(3, &placed);
        assert!(copies.iter().zip(&devices).all(|(c, d)| *c <= d.1));
        assert_eq!(p.unreserved(), 0);
        assert_eq!(
            pairs(p.place(1, TWO, true)),
            Err(PlacementError::Full {
                placed: 0,
                wanted: 1
            })
        );
        // Thin chunks may still go anywhere: over-provisioning.
        assert_eq!(pairs(p.place(5, TWO, false)).unwrap().len(), 5);
    }

    #[test]
    fn thick_room_on_a_single_sds_is_not_enough() {
        // 20 free slots, but 16 of them on one SDS: only 4 chunks fit.
        let devices = [(1, 8), (1, 8), (2, 4)];
        assert_eq!(
            pairs(placer(&devices).place(6, TWO, true)),
            Err(PlacementError::Full {
                placed: 4,
                wanted: 6
            })
        );
    }

    #[test]
    fn one_sds_is_not_enough_for_two_copies() {
        let devices = [(1, 100), (1, 100), (2, 0)];
        assert_eq!(
            pairs(placer(&devices).place(1, TWO, false)),
            Err(PlacementError::TooFewSds { sds: 1, needed: 2 })
        );
    }

    const ONE: Protection = Protection::SingleCopy;

    #[test]
    fn a_single_copy_is_a_primary_alone_spread_in_proportion_to_slots() {
        let devices = [(1, 1_000), (2, 2_000), (3, 3_000), (3, 2_000)];
        let total: u64 = devices.iter().map(|d| d.1).sum();
        let chunks = 8_000;
        let placed = placer(&devices).place(chunks, ONE, false).unwrap();
        assert!(placed.iter().all(|c| c[0].is_some() && c[1].is_none()));
        let mut primaries = vec![0; devices.len()];
        for c in &placed {
            primaries[c[0].unwrap()] += 1;
        }
        for (i, &(_, slots)) in devices.iter().enumerate() {
            let want = chunks as f64 * slots as f64 / total as f64;
            assert_near("primaries", primaries[i], want, 0.01);
        }
    }

    #[test]
    fn a_single_copy_pool_works_on_one_sds_and_reserves_one_slot_per_chunk() {
        let devices = [(1, 10), (1, 6)];
        let mut p = placer(&devices);
        assert_eq!(p.place(16, ONE, true).unwrap().len(), 16);
        assert_eq!(p.unreserved(), 0);
        assert_eq!(
            p.place(1, ONE, true),
            Err(PlacementError::Full {
                placed: 0,
                wanted: 1
            })
        );
        assert_eq!(
            placer(&[(1, 0)]).place(1, ONE, false),
            Err(PlacementError::TooFewSds { sds: 0, needed: 1 })
        );
    }

    #[test]
    fn the_same_input_gives_the_same_placement() {
        let devices = [(1, 700), (2, 300), (3, 500)];
        assert_eq!(
            pairs(placer(&devices).place(1_000, TWO, false)),
            pairs(placer(&devices).place(1_000, TWO, false))
        );
    }

    #[test]
    fn a_hundred_thousand_chunks_over_forty_devices_are_quick() {
        let devices: Vec<(u64, u64)> = (0..40).map(|i| (i / 4, 10_000 + i * 100)).collect();
        let mut p = placer(&devices);
        let start = std::time::Instant::now();
        for _ in 0..5 {
            assert_eq!(pairs(p.place(20_480, TWO, false)).unwrap().len(), 20_480);
        }
        // Generous for an unoptimised build on a busy machine; typically ~0.1 s.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }
}
