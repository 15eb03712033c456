//! What a value is recorded under: a kind, a metric name and its tags; and how keys are hashed.
//!
//! Names and tags are bytes, not `str`: the bindings hand over any Python `str`, lone surrogates
//! included (encoded as UTF-8 with `surrogatepass`, which Rust's `str` cannot hold), and give back
//! the same text. From Rust, a `&str` is passed as its bytes.

use std::hash::{BuildHasher, Hash, Hasher};

/// How values under one key combine within a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// f64 values summed per key, emitted once per window as a timing.
    Timer,
    /// i64 values summed per key, emitted once per window as an increment.
    Counter,
    /// f64 values kept one by one and emitted one by one as timings.
    Sample,
}

/// An amount added to a key, or the sum held for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl Value {
    /// The zero of the same type.
    pub fn zero(self) -> Value {
        match self {
            Value::Int(_) => Value::Int(0),
            Value::Float(_) => Value::Float(0.0),
        }
    }
}

/// The pair of slots, of `SLOTS` (a power of two), that something found by its `address` (a
/// name's bytes, a `str` object) may be kept in under `kind`: two, so that two addresses that share
/// the first slot can both be kept.
#[inline(always)]
pub fn slot_pair<const SLOTS: usize>(address: usize, kind: Kind) -> [usize; 2] {
    const { assert!(SLOTS.is_power_of_two() && SLOTS >= 2) };
    // Fibonacci hashing: the top bits of the product depend on every bit of the address.
    let mixed = (address as u64 ^ kind as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let first = (mixed >> (64 - SLOTS.trailing_zeros())) as usize;
    [first, first ^ 1]
}

/// A name, a tag key or a tag value: the text's UTF-8 bytes.
pub type Text = Box<[u8]>;

/// A tag list, in the order the caller gave it.
pub type Tags = Box<[(Text, Text)]>;

/// A metric name and its tags. Two keys are the same when their names are equal and their tags are
/// equal as mappings (order does not matter); the tags are emitted in their first-seen order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: Text,
    pub tags: Tags,
}

/// An owned copy of borrowed tags, in the same order.
pub fn own_tags<S: AsRef<[u8]>>(tags: &[(S, S)]) -> Tags {
    tags.iter()
        .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
        .collect()
}

impl Key {
    pub fn new<S: AsRef<[u8]>>(name: impl AsRef<[u8]>, tags: &[(S, S)]) -> Self {
        Key {
            name: name.as_ref().into(),
            tags: own_tags(tags),
        }
    }

    /// Whether this is the key of `name` and `tags` (tags in any order).
    pub(super) fn matches<S: AsRef<[u8]>>(&self, name: &[u8], tags: &[(S, S)]) -> bool {
        same_bytes(&self.name, name) && same_tags(&self.tags, tags)
    }
}

/// `a == b`, inlined for the short strings of metric names and tags: eight bytes at a time, where
/// the slices' `==` calls the C library's `memcmp`, which costs more than it saves at this length.
#[inline(always)]
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let words = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("a chunk of 8"));
    (&mut x).zip(&mut y).all(|(c, d)| words(c) == words(d))
        && x.remainder().iter().zip(y.remainder()).all(|(c, d)| c == d)
}

/// Whether two tag lists are the same mapping (each has distinct tag names, as a mapping's do).
pub(super) fn same_tags<A: AsRef<[u8]>, B: AsRef<[u8]>>(a: &[(A, A)], b: &[(B, B)]) -> bool {
    let same = |(ak, av): &(A, A), (bk, bv): &(B, B)| {
        same_bytes(ak.as_ref(), bk.as_ref()) && same_bytes(av.as_ref(), bv.as_ref())
    };
    let same_order = || a.iter().zip(b).all(|(x, y)| same(x, y));
    a.len() == b.len() && (same_order() || b.iter().all(|y| a.iter().any(|x| same(x, y))))
}

/// Seeded foldhash for keys. The seed is random per buffer, and shared by all its windows so that a
/// key can be hashed once in advance ([`crate::Buffer::prepare`]).
#[derive(Clone, Debug, Default)]
pub struct KeyHasher(foldhash::fast::RandomState);

impl KeyHasher {
    /// Order-insensitive in the tags, so that equal mappings find the same entry.
    pub fn hash<S: AsRef<[u8]>>(&self, kind: Kind, name: &[u8], tags: &[(S, S)]) -> u64 {
        let mut tag_sum = 0u64;
        for (k, v) in tags {
            let mut t = self.0.build_hasher();
            k.as_ref().hash(&mut t);
            v.as_ref().hash(&mut t);
            tag_sum = tag_sum.wrapping_add(t.finish());
        }
        let mut h = self.0.build_hasher();
        h.write_u64(kind as u64 | (tags.len() as u64) << 8);
        h.write(name);
        h.write_u64(tag_sum);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality_at_every_length_and_position() {
        let base: Vec<u8> = (0..40).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(same_bytes(a, &base[..len]));
            assert!(!same_bytes(a, &base[..len + 1]));
            for at in 0..len {
                let mut b = a.to_vec();
                b[at] ^= 0x80;
                assert!(!same_bytes(a, &b), "length {len}, byte {at} differs");
            }
        }
    }

    #[test]
    fn tags_match_and_hash_alike_in_any_order() {
        let hasher = KeyHasher::default();
        let key = Key::new("m", &[("a", "1"), ("b", "2")]);
        let swapped = [("b", "2"), ("a", "1")];
        assert!(key.matches(b"m", &swapped));
        assert_eq!(
            hasher.hash(Kind::Counter, b"m", &swapped),
            hasher.hash(Kind::Counter, b"m", &key.tags)
        );
        assert!(!key.matches(b"m", &[("a", "1"), ("b", "1")]));
        assert!(!key.matches(b"m", &[("a", "1")]));
        assert!(!key.matches(b"n", &swapped));
        assert_ne!(
            hasher.hash(Kind::Timer, b"m", &swapped),
            hasher.hash(Kind::Counter, b"m", &swapped)
        );
    }

    #[test]
    fn slot_pairs_are_two_neighbours_and_spread_over_every_pair() {
        // Addresses as an allocator hands them out: aligned, close together.
        for kind in [Kind::Timer, Kind::Counter, Kind::Sample] {
            let mut used = [0u32; 16];
            for address in (0x7f00_0000_1000usize..).step_by(16).take(1024) {
                let [first, second] = slot_pair::<32>(address, kind);
                assert!(first < 32 && second < 32);
                assert_eq!(first ^ second, 1, "the two slots of one pair");
                used[first / 2] += 1;
            }
            // Every pair is used, none by more than twice its share.
            assert!(
                used.iter().all(|&n| n > 0 && n <= 2 * 1024 / 16),
                "{kind:?}: {used:?}"
            );
        }
        let moves = (0..256usize)
            .map(|i| 0x5555_0000 + 64 * i)
            .filter(|&a| slot_pair::<32>(a, Kind::Timer) != slot_pair::<32>(a, Kind::Counter))
            .count();
        assert!(
            moves > 128,
            "the kind moves most names to another pair ({moves} of 256)"
        );
    }
}
