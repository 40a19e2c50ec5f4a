//! Maps keyed by ids this cluster assigns (request, call, peer, reference
//! numbers) and by function names, looked up on every message: hashed with
//! a multiply-rotate hash (the Fx hash of rustc) instead of SipHash, which
//! costs some 20 ns a lookup here. Their keys come from this process or from
//! peers holding the cluster's secret; maps keyed by user data (dictionary
//! stores) keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the key's low bits (all zero
        // for ids of one pending-table shard): its well-mixed middle bits
        // come to the bottom, where the table picks its bucket.
        self.hash.rotate_left(26)
    }
}

pub fn new<K, V>() -> FastMap<K, V> {
    FastMap::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash_of(v: impl Hash) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn sequential_ids_spread_over_the_top_bits() {
        // hashbrown picks a group by the low bits and tags entries with the
        // top 7: consecutive ids must differ in both.
        let tops: std::collections::HashSet<u64> = (1..=128u64).map(|i| hash_of(i) >> 57).collect();
        assert!(tops.len() > 64, "only {} distinct tags for 128 ids", tops.len());
        // Also ids that are all multiples of 16 (one shard of the pending table).
        let lows: std::collections::HashSet<u64> = (1..=128u64).map(|i| hash_of(i * 16) & 127).collect();
        assert!(lows.len() > 64, "only {} distinct low bits for 128 ids", lows.len());
    }

    #[test]
    fn strings_of_every_length_hash_apart_and_maps_work() {
        let names: Vec<String> = (0..40).map(|n| "f".repeat(n)).collect();
        let hashes: std::collections::HashSet<u64> = names.iter().map(hash_of).collect();
        assert_eq!(hashes.len(), names.len());
        let mut m: FastMap<String, usize> = new();
        for (i, n) in names.iter().enumerate() {
            m.insert(n.clone(), i);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(m.get(n.as_str()), Some(&i));
        }
        let mut ids: FastMap<u64, u64> = new();
        for i in 0..10_000u64 {
            ids.insert(i * 16, i);
        }
        assert!((0..10_000u64).all(|i| ids.remove(&(i * 16)) == Some(i)));
        assert!(ids.is_empty());
    }
}
