//! Object ids: nonzero and unique across every kind of object, so an id an admin pastes
//! can only mean one thing.

use super::model::State;
use std::collections::HashSet;

pub struct IdGen {
    taken: HashSet<u64>,
}

impl IdGen {
    pub fn new(state: &State) -> Self {
        Self {
            taken: state.ids().collect(),
        }
    }

    /// A random id (protection domains, pools, volumes, SDC).
    pub fn fresh(&mut self) -> u64 {
        loop {
            let id: u64 = rand::random();
            if id != 0 && self.taken.insert(id) {
                return id;
            }
        }
    }

    /// An id derived from the system id and what identifies the object (an SDS's
    /// address, a device's path on it). SDS and devices carry their ids in on-disk
    /// headers written by a claim; when a batch fails half-way, the SDS already claimed
    /// keep those headers, and deriving the ids lets a retry present the same ones.
    pub fn derived(&mut self, system_id: u64, parts: &[&str]) -> u64 {
        for attempt in 0u64.. {
            let mut h = fnv1a(
                system_id ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                parts,
            );
            h = mix(h);
            if h != 0 && self.taken.insert(h) {
                return h;
            }
        }
        unreachable!("u64 ids never run out")
    }
}

/// FNV-1a over the parts, each followed by a separator so ["ab","c"] != ["a","bc"].
fn fnv1a(seed: u64, parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in seed.to_le_bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A finaliser, so ids of similar paths do not share their high bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_nonzero_and_distinct() {
        let mut g = IdGen::new(&State::new(1));
        let ids: HashSet<u64> = (0..1000).map(|_| g.fresh()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
    }

    #[test]
    fn derived_ids_repeat_for_the_same_inputs_and_skip_taken_ones() {
        let a = IdGen::new(&State::new(1)).derived(42, &["10.0.0.1:7072"]);
        let b = IdGen::new(&State::new(1)).derived(42, &["10.0.0.1:7072"]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            IdGen::new(&State::new(1)).derived(43, &["10.0.0.1:7072"])
        );
        assert_ne!(
            IdGen::new(&State::new(1)).derived(42, &["ab", "c"]),
            IdGen::new(&State::new(1)).derived(42, &["a", "bc"])
        );
        let mut g = IdGen::new(&State::new(1));
        let first = g.derived(42, &["x"]);
        let second = g.derived(42, &["x"]);
        assert_ne!(first, second, "a taken id is not handed out twice");
    }
}
