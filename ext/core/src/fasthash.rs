//! The hash maps of compiled tables (domains, paths, path segments, methods, principals).
//!
//! Keys come from configuration; requests only look them up and cannot insert, so collision
//! flooding is not a concern, and std's SipHash cost more than the rest of a lookup. This
//! hasher takes a word at a time (the tail as the last, overlapping word) and mixes the result once
//! in `finish`, so that both the low bits (hashbrown's bucket) and the top bits (its tag)
//! depend on every byte.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x517c_c1b7_2722_0a95;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let word = |at: usize| -> u64 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let half = |at: usize| -> u64 {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[at..at + 4]);
            u64::from(u32::from_le_bytes(w))
        };
        if n >= 8 {
            let mut at = 0;
            while at + 8 <= n {
                self.add(word(at));
                at += 8;
            }
            if at < n {
                // The tail as the last 8 bytes (overlapping): no byte loop, no copy.
                self.add(word(n - 8));
            }
        } else if n >= 4 {
            self.add(half(0) | (half(n - 4) << 32));
        } else if n > 0 {
            let b = |i: usize| u64::from(bytes[i]);
            self.add(b(0) | (b(n / 2) << 8) | (b(n - 1) << 16));
        }
    }

    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let h = (self.0 ^ (self.0 >> 32)).wrapping_mul(K);
        h ^ (h >> 29)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// For maps keyed by a [`hash_of`] value: the key is already a hash, so it is used as is.
#[derive(Default, Clone, Copy)]
pub struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this; any other input still hashes (slowly).
        let mut h = FastHasher(self.0);
        h.write(bytes);
        self.0 = h.finish();
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by [`hash_of`] values.
pub type HashKeyMap<V> = HashMap<u64, V, BuildHasherDefault<PrehashedKey>>;

/// The hash of a key, for indexes keyed by hash alone (where a collision only adds a
/// candidate that the full check then rejects).
pub fn hash_of(key: &str) -> u64 {
    use std::hash::BuildHasher;
    BuildHasherDefault::<FastHasher>::default().hash_one(key)
}

/// A short list of ids (routes, policies) under one index key, kept inline for the common
/// single-id case (one cache miss less per lookup).
#[derive(Debug, Clone)]
pub enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Ids {
    pub fn push(&mut self, id: u32) {
        match self {
            Ids::One(first) => *self = Ids::Many(vec![*first, id]),
            Ids::Many(v) => v.push(id),
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        match self {
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_bits_depend_on_every_byte() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<FastHasher>::default();
        let mut low = std::collections::HashSet::new();
        for i in 0..256u32 {
            // Keys that differ only in their last byte, as paths of one service do.
            let key = format!(
                "/svc1/api/v1/res{}",
                char::from_u32(0x20 + i % 90).unwrap_or('a')
            );
            low.insert(b.hash_one(&key) & 0xff);
        }
        assert!(low.len() > 60, "{}", low.len());
    }
}
