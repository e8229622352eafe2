//! A frozen string-keyed table laid out for cold lookups: one 64-byte slot per entry holding
//! the full hash, the key (inline up to [`INLINE`] bytes) and the value, so that a hit costs
//! one cache line of the table instead of hashbrown's three (control bytes, bucket, the key's
//! own allocation). Beside the slots, a 16-bit fingerprint per slot (32 to a cache line, small
//! enough to stay cached): a lookup that misses, the common case of the exact-path table,
//! reads no slot. Open addressing with linear probing at a load of at most one half; built
//! once from all its entries, never resized. Each key also carries a `tag` (a trie node id for
//! the trie's children, 0 for paths), compared with the key.

use std::hash::Hasher;

use crate::fasthash::FastHasher;

/// Key bytes stored in the slot itself; longer keys live in `spill`.
pub const INLINE: usize = 36;

const EMPTY: u32 = u32::MAX;

/// The value of a slot: three words (route ids, floors, node ids, list indices).
pub type Words = [u32; 3];

#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Slot {
    hash: u64,
    /// Key length in bytes; `EMPTY` marks a free slot.
    len: u32,
    tag: u32,
    value: Words,
    /// The key when it fits; otherwise its first 4 bytes hold the key's offset in `spill`.
    key: [u8; INLINE],
}

const FREE: Slot = Slot {
    hash: 0,
    len: EMPTY,
    tag: 0,
    value: [0; 3],
    key: [0; INLINE],
};

#[derive(Debug, Clone, Default)]
pub struct SlotTable {
    /// Per slot: 0 when free, else the top bits of the hash (never 0).
    fingerprints: Vec<u16>,
    slots: Vec<Slot>,
    mask: usize,
    spill: Vec<u8>,
}

fn hash(tag: u32, key: &[u8]) -> u64 {
    let mut h = FastHasher::default();
    h.write_usize(tag as usize);
    h.write(key);
    h.finish()
}

/// The fingerprint of a hash: bits the slot index does not use (for tables under 2^48 slots).
fn fingerprint(h: u64) -> u16 {
    (h >> 48) as u16 | 1
}

impl SlotTable {
    /// The table of `entries` (tag, key, value); a repeated (tag, key) keeps its first value.
    pub fn build<'k>(entries: impl ExactSizeIterator<Item = (u32, &'k [u8], Words)>) -> Self {
        let n = entries.len();
        if n == 0 {
            return Self::default();
        }
        let cap = (n * 2).next_power_of_two().max(8);
        let mut t = Self {
            fingerprints: vec![0; cap],
            slots: vec![FREE; cap],
            mask: cap - 1,
            spill: Vec::new(),
        };
        for (tag, key, value) in entries {
            if t.get(tag, key).is_some() {
                continue;
            }
            let h = hash(tag, key);
            let mut i = h as usize & t.mask;
            while t.fingerprints.get(i).is_some_and(|&f| f != 0) {
                i = (i + 1) & t.mask;
            }
            let mut slot = Slot {
                hash: h,
                len: key.len() as u32,
                tag,
                value,
                key: [0; INLINE],
            };
            if key.len() <= INLINE {
                slot.key[..key.len()].copy_from_slice(key);
            } else {
                let at = t.spill.len() as u32;
                slot.key[..4].copy_from_slice(&at.to_le_bytes());
                t.spill.extend_from_slice(key);
            }
            if let (Some(s), Some(f)) = (t.slots.get_mut(i), t.fingerprints.get_mut(i)) {
                *s = slot;
                *f = fingerprint(h);
            }
        }
        t
    }

    fn key_of<'a>(&'a self, s: &'a Slot) -> &'a [u8] {
        let len = s.len as usize;
        if len <= INLINE {
            return &s.key[..len];
        }
        let mut at = [0u8; 4];
        at.copy_from_slice(&s.key[..4]);
        let at = u32::from_le_bytes(at) as usize;
        self.spill.get(at..at + len).unwrap_or_default()
    }

    /// The value under (tag, key): the full hash is compared first, then the key.
    #[inline]
    pub fn get(&self, tag: u32, key: &[u8]) -> Option<&Words> {
        if self.slots.is_empty() {
            return None;
        }
        let h = hash(tag, key);
        let want = fingerprint(h);
        let mut i = h as usize & self.mask;
        // The first probe's slot is read together with its fingerprint, not after it: a hit
        // waits for one memory access, not two in a row (a miss reads a line more, meanwhile).
        if let Some(s) = self.slots.get(i) {
            std::hint::black_box(s.hash);
        }
        loop {
            let f = *self.fingerprints.get(i)?;
            if f == 0 {
                return None;
            }
            if f == want {
                let s = self.slots.get(i)?;
                if s.hash == h
                    && s.tag == tag
                    && s.len as usize == key.len()
                    && self.key_of(s) == key
                {
                    return Some(&s.value);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Every entry (tag, key, value), in slot order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u8], &Words)> {
        self.slots
            .iter()
            .filter(|s| s.len != EMPTY)
            .map(|s| (s.tag, self.key_of(s), &s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_spilled_keys_tags_and_misses() {
        let keys: Vec<String> = (0..300)
            .map(|i| {
                if i % 3 == 0 {
                    format!("/a/very/long/path/that/does/not/fit/inline/{i}")
                } else {
                    format!("/p{i}")
                }
            })
            .collect();
        let t = SlotTable::build(
            keys.iter()
                .enumerate()
                .map(|(i, k)| ((i % 2) as u32, k.as_bytes(), [i as u32, 7, 9])),
        );
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        for (i, k) in keys.iter().enumerate() {
            let tag = (i % 2) as u32;
            assert_eq!(t.get(tag, k.as_bytes()), Some(&[i as u32, 7, 9]), "{k}");
            assert_eq!(t.get(1 - tag, k.as_bytes()), None, "{k}");
            assert_eq!(t.get(tag, format!("{k}x").as_bytes()), None, "{k}");
        }
        assert_eq!(t.get(0, b""), None);
        assert_eq!(t.iter().count(), keys.len());
        let empty = SlotTable::build(std::iter::empty());
        assert_eq!(empty.get(0, b"/"), None);
    }

    #[test]
    fn a_repeated_key_keeps_its_first_value() {
        let t =
            SlotTable::build([(0, &b"/x"[..], [1, 0, 0]), (0, &b"/x"[..], [2, 0, 0])].into_iter());
        assert_eq!(t.get(0, b"/x"), Some(&[1, 0, 0]));
    }
}
