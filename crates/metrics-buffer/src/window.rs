//! One flush window: values aggregated per key in first-appearance order, samples in arrival order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashTable;

use super::CoreError;
use super::key::{Key, KeyHasher, Kind, Value, same_bytes, same_tags, slot_pair};

/// One change to make to a window: add `amount` under (`kind`, `name`, `tags`).
pub struct Add<'a, S> {
    pub kind: Kind,
    pub name: &'a [u8],
    pub tags: &'a [(S, S)],
    pub amount: Value,
    /// The same key made in advance (`name` and `tags` are its own), for keys used over and over;
    /// `None` hashes and compares `name` and `tags` here.
    pub prepared: Option<&'a Prepared>,
    /// A counter add that would take its key's sum out of the i64 range is refused (false), or
    /// added to a new entry of the key, emitted after the full one (true: a count that is not the
    /// caller's input to check, a delivery report's).
    pub apart_at_overflow: bool,
}

impl<'a, S: AsRef<[u8]>> Add<'a, S> {
    /// An add of `amount` under `kind`, `name` and `tags` (a name or tag as `str` or bytes).
    pub fn new(
        kind: Kind,
        name: &'a (impl AsRef<[u8]> + ?Sized),
        tags: &'a [(S, S)],
        amount: Value,
    ) -> Self {
        Add {
            kind,
            name: name.as_ref(),
            tags,
            amount,
            prepared: None,
            apart_at_overflow: false,
        }
    }

    /// The same add, kept apart rather than refused at overflow (see `apart_at_overflow`).
    pub fn apart_at_overflow(self) -> Self {
        Add {
            apart_at_overflow: true,
            ..self
        }
    }
}

/// A key used over and over (a delivery callback's), made once by [`crate::Buffer::prepare`]:
/// hashed in advance, and found again by identity. An entry made from it shares its `Arc`, so an
/// entry that holds this very `Arc` (and is not sealed) is this key's, found without comparing its
/// name and tags. The key remembers the index of its entry in the last window it was added to
/// (`last`): a window's entries never move, so in that window the index finds it at once, and in
/// any other the identity check fails and the key is looked up as any other.
#[derive(Debug)]
pub struct Prepared {
    pub kind: Kind,
    pub key: Arc<Key>,
    pub(super) hash: u64,
    /// Only a hint, written and read by any thread: every use checks it (see above).
    last: AtomicU32,
}

impl Prepared {
    pub(super) fn new<S: AsRef<[u8]>>(
        hasher: &KeyHasher,
        kind: Kind,
        name: &[u8],
        tags: &[(S, S)],
    ) -> Self {
        Prepared {
            kind,
            key: Arc::new(Key::new(name, tags)),
            hash: hasher.hash(kind, name, tags),
            last: AtomicU32::new(u32::MAX),
        }
    }

    pub fn add(&self, amount: Value) -> Add<'_, Box<[u8]>> {
        Add {
            kind: self.kind,
            name: &self.key.name,
            tags: &self.key.tags,
            amount,
            prepared: Some(self),
            apart_at_overflow: false,
        }
    }
}

/// An aggregate entry of a window: the sum and the number of values added under one key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Shared with the [`Prepared`] key it was made from, if any, and with the entries carried
    /// into another window.
    pub key: Arc<Key>,
    pub sum: Value,
    pub count: u64,
    hash: u64,
    /// Taken out of the lookups (see `Window::seal`): a later value of its key goes elsewhere.
    sealed: bool,
}

/// One backend call that a window makes when it is emitted.
#[derive(Debug, PartialEq)]
pub struct Emission<'a> {
    pub kind: Kind,
    pub key: &'a Arc<Key>,
    pub value: Value,
    /// How many values `value` sums (1 for a sample).
    pub count: u64,
}

/// Aggregate entries in first-appearance order, plus samples in arrival order.
#[derive(Default, Debug)]
pub struct Window {
    hasher: KeyHasher,
    /// Indices into `entries`, by key hash.
    table: HashTable<u32>,
    entries: Vec<Entry>,
    /// (entry index, value) per sample.
    samples: Vec<(u32, f64)>,
    /// Untagged names by the address of their bytes: callers pass the same (interned) string
    /// objects over and over, so this skips hashing. Only a hint: a hit is checked byte by byte.
    /// (Prepared keys remember their entry themselves, see [`Prepared`].)
    /// (What the hints save is measured in the project's docs/performance.md.)
    /// (Boxed: a window is returned by value, and should stay small to move.)
    hints: Box<[(usize, u32); HINTS]>,
}

/// A power of two: a StreamProcessor's buffer has about a dozen untagged names.
const HINTS: usize = 32;

impl Window {
    pub(super) fn new(hasher: KeyHasher) -> Self {
        Window {
            hasher,
            ..Window::default()
        }
    }

    /// Everything in this window, leaving an empty one with the same hash seed.
    pub(super) fn take(&mut self) -> Window {
        let fresh = Window::new(self.hasher.clone());
        std::mem::replace(self, fresh)
    }

    /// Aggregate entries in first-appearance order (a sample entry holds its samples' sum and count).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// The entry an untagged name or a prepared key was last found at, if it still matches.
    #[inline(always)]
    fn hinted<S: AsRef<[u8]>>(&self, add: &Add<'_, S>) -> Option<u32> {
        if let Some(p) = add.prepared {
            let at = p.last.load(Ordering::Relaxed);
            let e = self.entries.get(at as usize)?;
            return (Arc::ptr_eq(&e.key, &p.key) && e.kind == p.kind && !e.sealed).then_some(at);
        }
        let address = Self::name_address(add)?;
        slot_pair::<HINTS>(address, add.kind)
            .into_iter()
            .find_map(|slot| {
                let (hinted, at) = self.hints[slot];
                let e = self.entries.get(at as usize)?;
                let same = e.key.tags.is_empty() && same_bytes(&e.key.name, add.name);
                (hinted == address && e.kind == add.kind && same).then_some(at)
            })
    }

    /// What an untagged name's hint is kept by: the address of its bytes. Tagged keys made on
    /// each call have none.
    fn name_address<S: AsRef<[u8]>>(add: &Add<'_, S>) -> Option<usize> {
        add.tags.is_empty().then_some(add.name.as_ptr() as usize)
    }

    fn remember<S: AsRef<[u8]>>(&mut self, add: &Add<'_, S>, at: u32) {
        if let Some(p) = add.prepared {
            p.last.store(at, Ordering::Relaxed);
            // An entry made before the key was prepared (by an add of the same name and tags)
            // takes the key's `Arc`, so that the key finds it by identity from now on.
            let entry = &mut self.entries[at as usize];
            if !Arc::ptr_eq(&entry.key, &p.key) {
                entry.key = Arc::clone(&p.key);
            }
        } else if let Some(address) = Self::name_address(add) {
            let [first, second] = slot_pair::<HINTS>(address, add.kind);
            // The first slot unless the second already holds this name or is free.
            let free = |slot: usize| matches!(self.hints[slot], (a, _) if a == address || a == 0);
            let slot = if !free(first) && free(second) {
                second
            } else {
                first
            };
            self.hints[slot] = (address, at);
        }
    }

    fn find<S: AsRef<[u8]>>(
        &self,
        hash: u64,
        kind: Kind,
        name: &[u8],
        tags: &[(S, S)],
    ) -> Option<u32> {
        let entries = &self.entries;
        self.table
            .find(hash, |&at| {
                let e = &entries[at as usize];
                e.kind == kind && e.key.matches(name, tags)
            })
            .copied()
    }

    fn insert(&mut self, hash: u64, kind: Kind, key: Arc<Key>, zero: Value) -> u32 {
        let at = self.entries.len() as u32;
        let entries = &self.entries;
        self.table
            .insert_unique(hash, at, |&i| entries[i as usize].hash);
        self.entries.push(Entry {
            kind,
            key,
            sum: zero,
            count: 0,
            hash,
            sealed: false,
        });
        at
    }

    #[inline(always)]
    fn hash_of<S: AsRef<[u8]>>(&self, add: &Add<'_, S>) -> u64 {
        match add.prepared {
            Some(p) => p.hash,
            None => self.hasher.hash(add.kind, add.name, add.tags),
        }
    }

    /// The hash of an add's key (0 when a hint found it) and its entry, if there is one. (Inlined:
    /// a pair returned through memory is stored in parts and read back whole, which stalls.)
    #[inline(always)]
    fn locate<S: AsRef<[u8]>>(&self, add: &Add<'_, S>) -> (u64, Option<u32>) {
        if let Some(at) = self.hinted(add) {
            return (0, Some(at));
        }
        let hash = self.hash_of(add);
        (hash, self.find(hash, add.kind, add.name, add.tags))
    }

    /// Checks every change, then applies them all, or none. Samples beyond `max_samples` are
    /// dropped and counted in the return value.
    pub(super) fn apply<S: AsRef<[u8]>>(
        &mut self,
        adds: &[Add<'_, S>],
        max_samples: usize,
    ) -> Result<u64, CoreError> {
        if let [add] = adds {
            return self.apply_one(add, max_samples);
        }
        // The first adds are hashed and looked up once (a delivery report is two); any beyond that
        // are looked up again when applied.
        const BATCH: usize = 2;
        let mut found = [(0u64, None); BATCH];
        for (i, add) in adds.iter().enumerate() {
            let (hash, at) = self.locate(add);
            if let Some(slot) = found.get_mut(i) {
                *slot = (hash, at);
            }
            if let (Value::Int(delta), false) = (add.amount, add.apart_at_overflow) {
                self.check_counter(at, &adds[..i], add, delta)?;
            }
        }
        let mut dropped = 0;
        for (i, add) in adds.iter().enumerate() {
            if add.kind == Kind::Sample && self.samples.len() >= max_samples {
                dropped += 1;
                continue;
            }
            let (hash, at) = match found.get(i) {
                Some(&known) => known,
                None => (self.hash_of(add), None),
            };
            // An earlier add of this batch may have created it.
            let at = at.or_else(|| self.find(hash, add.kind, add.name, add.tags));
            self.add_located(add, hash, at);
        }
        Ok(dropped)
    }

    /// [`Window::apply`] of one add (the common call): looked up once, nothing to batch.
    fn apply_one<S: AsRef<[u8]>>(
        &mut self,
        add: &Add<'_, S>,
        max_samples: usize,
    ) -> Result<u64, CoreError> {
        let (hash, at) = self.locate(add);
        if let (Value::Int(delta), false) = (add.amount, add.apart_at_overflow) {
            self.check_counter(at, &[], add, delta)?;
        }
        if add.kind == Kind::Sample && self.samples.len() >= max_samples {
            return Ok(1);
        }
        self.add_located(add, hash, at);
        Ok(0)
    }

    /// Adds `add` at its entry `at` (made now if `None`), as [`Window::locate`] found it: `hash`
    /// is 0 when its hint found it, and the hint then stands (a real hash of 0 only costs a hint).
    #[inline(always)]
    fn add_located<S: AsRef<[u8]>>(&mut self, add: &Add<'_, S>, hash: u64, at: Option<u32>) {
        let at = match at {
            Some(at) if add.apart_at_overflow && self.would_overflow(at, add.amount) => {
                self.start_anew(at)
            }
            Some(at) => at,
            None => {
                let key = match add.prepared {
                    Some(p) => Arc::clone(&p.key),
                    None => Arc::new(Key::new(add.name, add.tags)),
                };
                self.insert(hash, add.kind, key, add.amount.zero())
            }
        };
        if hash != 0 {
            self.remember(add, at);
        }
        self.accumulate(at, add.amount, 1);
        if let (Kind::Sample, Value::Float(v)) = (add.kind, add.amount) {
            self.samples.push((at, v));
        }
    }

    /// Refuses a counter add whose sum would leave the i64 range, counting the `earlier` adds of
    /// the same batch to the same key. `at` is the key's entry, if it has one.
    fn check_counter<S: AsRef<[u8]>>(
        &self,
        at: Option<u32>,
        earlier: &[Add<'_, S>],
        add: &Add<'_, S>,
        delta: i64,
    ) -> Result<(), CoreError> {
        let mut sum = match at.map(|at| self.entries[at as usize].sum) {
            Some(Value::Int(sum)) => sum,
            Some(Value::Float(_)) => return Ok(()),
            None => 0,
        };
        let same_key = |e: &&Add<'_, S>| {
            e.kind == add.kind && e.name == add.name && same_tags(e.tags, add.tags)
        };
        for e in earlier.iter().filter(same_key) {
            if let Value::Int(d) = e.amount {
                sum = sum.saturating_add(d); // checked when it was `add`
            }
        }
        match sum.checked_add(delta) {
            Some(_) => Ok(()),
            None => Err(CoreError::CounterOverflow {
                name: String::from_utf8_lossy(add.name).into_owned(),
                sum,
                delta,
            }),
        }
    }

    /// Adds `amount` (the sum of `count` values) to an entry. Counters were checked not to
    /// overflow (by `apply`, or kept apart by `merge_one`); saturating is only a backstop.
    fn accumulate(&mut self, at: u32, amount: Value, count: u64) {
        let entry = &mut self.entries[at as usize];
        entry.sum = match (entry.sum, amount) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.saturating_add(b)),
            (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
            (Value::Float(a), Value::Int(b)) => Value::Float(a + b as f64),
            (Value::Int(a), Value::Float(b)) => Value::Float(a as f64 + b),
        };
        entry.count += count;
    }

    /// Kept apart rather than saturated: entry `at` goes out as it is, and its key's later values
    /// go to a new entry (sharing its key's `Arc`), emitted after it. Returns the new entry.
    fn start_anew(&mut self, at: u32) -> u32 {
        let hash = self.seal(at);
        let full = &self.entries[at as usize];
        let (kind, key, zero) = (full.kind, Arc::clone(&full.key), full.sum.zero());
        self.insert(hash, kind, key, zero)
    }

    /// Whether adding `amount` to entry `at` would take an integer sum out of the i64 range.
    fn would_overflow(&self, at: u32, amount: Value) -> bool {
        match (self.entries[at as usize].sum, amount) {
            (Value::Int(sum), Value::Int(more)) => sum.checked_add(more).is_none(),
            _ => false,
        }
    }

    fn entry_for(&mut self, kind: Kind, key: &Arc<Key>, zero: Value) -> u32 {
        let hash = self.hasher.hash(kind, &key.name, &key.tags);
        match self.find(hash, kind, &key.name, &key.tags) {
            Some(at) => at,
            None => self.insert(hash, kind, key.clone(), zero),
        }
    }

    /// The backend calls this window makes, in order: timers, then counters (each in
    /// first-appearance order), then samples (in arrival order).
    pub fn emissions(&self) -> impl Iterator<Item = Emission<'_>> {
        let aggregate = |kind: Kind| {
            self.entries
                .iter()
                .filter(move |e| e.kind == kind)
                .map(|e| Emission {
                    kind: e.kind,
                    key: &e.key,
                    value: e.sum,
                    count: e.count,
                })
        };
        aggregate(Kind::Timer)
            .chain(aggregate(Kind::Counter))
            .chain(self.samples.iter().map(|&(at, v)| Emission {
                kind: Kind::Sample,
                key: &self.entries[at as usize].key,
                value: Value::Float(v),
                count: 1,
            }))
    }

    /// How many items [`Window::emissions`] yields.
    pub fn emission_count(&self) -> usize {
        let aggregates = self.entries.iter().filter(|e| e.kind != Kind::Sample);
        aggregates.count() + self.samples.len()
    }

    /// Everything from the `skip`-th emission on, as a window of its own, in the same order.
    pub fn remainder(&self, skip: usize) -> Window {
        let mut rest = Window::new(self.hasher.clone());
        for e in self.emissions().skip(skip) {
            rest.merge_one(e.kind, e.key, e.value, e.count, usize::MAX);
        }
        rest
    }

    /// Adds one emission's worth of data; returns how many samples were dropped (0 or 1).
    fn merge_one(
        &mut self,
        kind: Kind,
        key: &Arc<Key>,
        value: Value,
        count: u64,
        cap: usize,
    ) -> u64 {
        if kind == Kind::Sample && self.samples.len() >= cap {
            return 1;
        }
        let mut at = self.entry_for(kind, key, value.zero());
        if self.would_overflow(at, value) {
            at = self.start_anew(at);
        }
        self.accumulate(at, value, count);
        if let (Kind::Sample, Value::Float(v)) = (kind, value) {
            self.samples.push((at, v));
        }
        0
    }

    /// Takes an entry out of the lookups (table and hints); it stays in the emissions. Returns its
    /// hash.
    fn seal(&mut self, at: u32) -> u64 {
        let hash = self.entries[at as usize].hash;
        if let Ok(found) = self.table.find_entry(hash, |&i| i == at) {
            found.remove();
        }
        for hint in self.hints.iter_mut().filter(|(_, i)| *i == at) {
            *hint = (0, 0); // no name lives at address 0
        }
        self.entries[at as usize].sealed = true;
        hash
    }

    /// Appends `newer` after this window: sums merge into existing keys, new keys and all samples
    /// go after. Returns how many samples were dropped for `max_samples`.
    pub(super) fn absorb(&mut self, newer: Window, max_samples: usize) -> u64 {
        let mut dropped = 0;
        for e in newer.entries.iter().filter(|e| e.kind != Kind::Sample) {
            dropped += self.merge_one(e.kind, &e.key, e.sum, e.count, max_samples);
        }
        for &(at, v) in &newer.samples {
            let key = &newer.entries[at as usize].key;
            dropped += self.merge_one(Kind::Sample, key, Value::Float(v), 1, max_samples);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NO_TAGS, add, counter, emitted};

    fn window(adds: &[Add<'_, &str>]) -> Window {
        let mut w = Window::default();
        w.apply(adds, usize::MAX).unwrap();
        w
    }

    fn sums(w: &Window) -> Vec<(Kind, Key, Value, u64)> {
        w.entries()
            .iter()
            .map(|e| (e.kind, Key::clone(&e.key), e.sum, e.count))
            .collect()
    }

    #[test]
    fn emission_order_is_timers_then_counters_then_samples_each_first_seen() {
        let w = window(&[
            counter("c2", 1),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(3.0)),
            add(Kind::Timer, "t2", NO_TAGS, Value::Float(1.0)),
            counter("c1", 2),
            add(Kind::Timer, "t1", NO_TAGS, Value::Float(2.0)),
            counter("c2", 5),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(4.0)),
            add(Kind::Timer, "t2", NO_TAGS, Value::Float(0.5)),
        ]);
        assert_eq!(
            emitted(&w),
            vec![
                (Kind::Timer, "t2".into(), Value::Float(1.5)),
                (Kind::Timer, "t1".into(), Value::Float(2.0)),
                (Kind::Counter, "c2".into(), Value::Int(6)),
                (Kind::Counter, "c1".into(), Value::Int(2)),
                (Kind::Sample, "s".into(), Value::Float(3.0)),
                (Kind::Sample, "s".into(), Value::Float(4.0)),
            ]
        );
    }

    #[test]
    fn counter_overflow_is_refused_and_changes_nothing() {
        let mut w = window(&[counter("c", i64::MAX - 1)]);
        let before = sums(&w);
        let err = w
            .apply(
                &[
                    add(Kind::Sample, "s", NO_TAGS, Value::Float(1.0)),
                    counter("c", 2),
                ],
                usize::MAX,
            )
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::CounterOverflow {
                name: "c".into(),
                sum: i64::MAX - 1,
                delta: 2
            }
        );
        assert_eq!(
            sums(&w),
            before,
            "neither the sample nor the counter went in"
        );
        assert_eq!(w.sample_count(), 0);
        w.apply(&[counter("c", 1)], usize::MAX).unwrap();
        assert_eq!(w.entries()[0].sum, Value::Int(i64::MAX));
        w.apply(&[counter("d", i64::MIN)], usize::MAX).unwrap();
        assert!(w.apply(&[counter("d", -1)], usize::MAX).is_err());
    }

    #[test]
    fn an_add_kept_apart_at_overflow_starts_a_new_entry_after_the_full_one() {
        let hasher = KeyHasher::default();
        let tags = [("status", "ok")];
        let p = Prepared::new(&hasher, Kind::Counter, b"c", &tags);
        let mut w = Window::new(hasher.clone());
        let full = add(Kind::Counter, "c", &tags, Value::Int(i64::MAX));
        w.apply(&[full], usize::MAX).unwrap();
        let report = |w: &mut Window| {
            let sample = add(Kind::Sample, "l", NO_TAGS, Value::Float(0.5));
            let counter = add(Kind::Counter, "c", &tags, Value::Int(1)).apart_at_overflow();
            w.apply(&[counter, sample], usize::MAX).unwrap();
            w.apply(&[p.add(Value::Int(1)).apart_at_overflow()], usize::MAX)
                .unwrap();
        };
        report(&mut w);
        report(&mut w);
        // A plain add is still refused, and changes nothing.
        w.apply(&[counter("d", i64::MAX)], usize::MAX).unwrap();
        assert!(w.apply(&[counter("d", 1)], usize::MAX).is_err());
        assert_eq!(
            sums(&w),
            vec![
                (Kind::Counter, Key::new("c", &tags), Value::Int(i64::MAX), 1),
                (Kind::Counter, Key::new("c", &tags), Value::Int(4), 4),
                (Kind::Sample, Key::new("l", NO_TAGS), Value::Float(1.0), 2),
                (
                    Kind::Counter,
                    Key::new("d", NO_TAGS),
                    Value::Int(i64::MAX),
                    1
                ),
            ]
        );
        assert!(Arc::ptr_eq(&w.entries()[1].key, &p.key));
        assert_eq!(
            emitted(&w)
                .into_iter()
                .filter(|(kind, ..)| *kind == Kind::Counter)
                .map(|(_, name, value)| (name, value))
                .collect::<Vec<_>>(),
            vec![
                ("c".to_owned(), Value::Int(i64::MAX)),
                ("c".to_owned(), Value::Int(4)),
                ("d".to_owned(), Value::Int(i64::MAX)),
            ]
        );
    }

    #[test]
    fn the_overflow_check_counts_a_key_repeated_within_one_batch() {
        let ab = [("a", "1"), ("b", "2")];
        let ba = [("b", "2"), ("a", "1")];
        let mut w = window(&[counter("c", 1)]);
        let before = sums(&w);
        let err = w
            .apply(&[counter("c", i64::MAX - 1), counter("c", 1)], usize::MAX)
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::CounterOverflow {
                name: "c".into(),
                sum: i64::MAX,
                delta: 1
            }
        );
        // A key new to the window, the second time with its tags in another order.
        let twice = [
            add(Kind::Counter, "d", &ab, Value::Int(i64::MIN)),
            add(Kind::Counter, "d", &ba, Value::Int(-1)),
        ];
        assert!(w.apply(&twice, usize::MAX).is_err());
        assert_eq!(sums(&w), before);
        w.apply(&[counter("c", i64::MAX - 2), counter("c", 1)], usize::MAX)
            .unwrap();
        assert_eq!(w.entries()[0].sum, Value::Int(i64::MAX));
    }

    #[test]
    fn a_give_back_that_would_overflow_keeps_the_values_apart() {
        let w = window(&[counter("c", i64::MAX - 1), counter("d", 1)]);
        let mut given_back = w.remainder(0);
        let newer = window(&[counter("c", 5), counter("e", 1)]);
        given_back.absorb(newer, usize::MAX);
        assert_eq!(
            emitted(&given_back),
            vec![
                (Kind::Counter, "c".into(), Value::Int(i64::MAX - 1)),
                (Kind::Counter, "d".into(), Value::Int(1)),
                (Kind::Counter, "c".into(), Value::Int(5)),
                (Kind::Counter, "e".into(), Value::Int(1)),
            ]
        );
        // Later values of "c" add to the newer part, by a hint or by the table.
        given_back.apply(&[counter("c", 2)], usize::MAX).unwrap();
        let tagged = [("t", "1")];
        given_back
            .apply(
                &[add(Kind::Counter, "c", &tagged, Value::Int(1))],
                usize::MAX,
            )
            .unwrap();
        let c: Vec<_> = given_back
            .entries()
            .iter()
            .filter(|e| &*e.key.name == b"c" && e.key.tags.is_empty())
            .map(|e| (e.sum, e.count))
            .collect();
        assert_eq!(c, vec![(Value::Int(i64::MAX - 1), 1), (Value::Int(7), 2)]);
        // Even a remainder of it does not merge them.
        let rest = given_back.remainder(0);
        assert_eq!(
            emitted(&rest)[0],
            (Kind::Counter, "c".into(), Value::Int(i64::MAX - 1))
        );
        assert_eq!(
            emitted(&rest)[2],
            (Kind::Counter, "c".into(), Value::Int(7))
        );
    }

    #[test]
    fn tags_are_compared_as_mappings_and_emitted_in_first_seen_order() {
        let ab = [("a", "1"), ("b", "2")];
        let ba = [("b", "2"), ("a", "1")];
        let a2 = [("a", "2"), ("b", "2")];
        let w = window(&[
            add(Kind::Counter, "m", &ab, Value::Int(1)),
            add(Kind::Counter, "m", &ba, Value::Int(1)),
            add(Kind::Counter, "m", &a2, Value::Int(1)),
            add(Kind::Counter, "m", NO_TAGS, Value::Int(1)),
            add(Kind::Timer, "m", &ab, Value::Float(1.0)),
        ]);
        let snap = sums(&w);
        assert_eq!(snap.len(), 4);
        assert_eq!(snap[0].1, Key::new("m", &ab));
        assert_eq!((snap[0].2, snap[0].3), (Value::Int(2), 2));
        assert_eq!(snap[1].1, Key::new("m", &a2));
        assert_eq!(snap[2].1, Key::new("m", NO_TAGS));
        assert_eq!(
            (snap[3].0, snap[3].1.clone()),
            (Kind::Timer, Key::new("m", &ab))
        );
    }

    #[test]
    fn name_hints_never_confuse_keys() {
        let mut w = Window::default();
        let mut reused = String::from("aaaa");
        w.apply(&[counter(&reused, 1)], usize::MAX).unwrap();
        // The same bytes' address now holds another name.
        reused.replace_range(.., "bbbb");
        w.apply(&[counter(&reused, 1)], usize::MAX).unwrap();
        // The first name again, at another address; and as a timer at the same address.
        let copy = String::from("aaaa");
        w.apply(&[counter(&copy, 1)], usize::MAX).unwrap();
        w.apply(
            &[add(Kind::Timer, &copy, NO_TAGS, Value::Float(1.0))],
            usize::MAX,
        )
        .unwrap();
        assert_eq!(
            emitted(&w),
            vec![
                (Kind::Timer, "aaaa".into(), Value::Float(1.0)),
                (Kind::Counter, "aaaa".into(), Value::Int(2)),
                (Kind::Counter, "bbbb".into(), Value::Int(1)),
            ]
        );
    }

    #[test]
    fn many_keys_and_a_prehashed_one_are_each_found_again() {
        let hasher = KeyHasher::default();
        let mut w = Window::new(hasher.clone());
        let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
        for _ in 0..2 {
            for name in &names {
                let tags = [("k", name.as_str())];
                w.apply(
                    &[add(Kind::Counter, name, &tags, Value::Int(1))],
                    usize::MAX,
                )
                .unwrap();
            }
        }
        let tags = [("k", "m7")];
        let prepared = Prepared::new(&hasher, Kind::Counter, b"m7", &tags);
        w.apply(&[prepared.add(Value::Int(1))], usize::MAX).unwrap();
        assert_eq!(w.entries().len(), 1000);
        assert!(
            w.entries()
                .iter()
                .all(|e| e.count == 2 || &*e.key.name == b"m7")
        );
        assert_eq!(w.entries()[7].sum, Value::Int(3));
    }

    #[test]
    fn a_prepared_key_is_the_key_of_its_name_and_tags_however_it_is_found() {
        let hasher = KeyHasher::default();
        let tags = [("status", "ok"), ("p", "x")];
        let p = Prepared::new(&hasher, Kind::Counter, b"c", &tags);
        let twin = Prepared::new(
            &hasher,
            Kind::Counter,
            b"c",
            &[("p", "x"), ("status", "ok")],
        );
        let s = Prepared::new(&hasher, Kind::Sample, b"c", &tags);
        let apply =
            |w: &mut Window, adds: &[Add<'_, Box<[u8]>>]| w.apply(adds, usize::MAX).unwrap();
        let plain = |w: &mut Window, n: i64| {
            w.apply(&[add(Kind::Counter, "c", &tags, Value::Int(n))], usize::MAX)
                .unwrap()
        };
        let expected = vec![
            (Kind::Counter, Key::new("c", &tags), Value::Int(31), 5),
            (Kind::Sample, Key::new("c", &tags), Value::Float(0.75), 2),
        ];

        // Entries made from prepared keys: they share the Arc, so later adds hit by hint.
        let mut w = Window::new(hasher.clone());
        apply(&mut w, &[p.add(Value::Int(1)), s.add(Value::Float(0.5))]);
        assert!(Arc::ptr_eq(&w.entries()[0].key, &p.key));
        assert!(Arc::ptr_eq(&w.entries()[1].key, &s.key));
        apply(&mut w, &[s.add(Value::Float(0.25)), p.add(Value::Int(2))]); // both by hint
        apply(&mut w, &[twin.add(Value::Int(4))]); // another Arc of the same key: by hash
        plain(&mut w, 8); // the key made on the call: by hash and compare
        apply(&mut w, &[p.add(Value::Int(16))]);
        assert_eq!(sums(&w), expected);

        // An entry made by a plain add: a prepared key that finds it by hash gives it its own
        // Arc, and finds it by hint from then on (until another Arc of the same key does so).
        let mut w = Window::new(hasher.clone());
        plain(&mut w, 1);
        let made = Arc::clone(&w.entries()[0].key);
        apply(&mut w, &[p.add(Value::Int(2)), s.add(Value::Float(0.5))]);
        assert!(Arc::ptr_eq(&w.entries()[0].key, &p.key));
        assert!(w.hinted(&p.add(Value::Int(0))) == Some(0));
        apply(&mut w, &[p.add(Value::Int(4)), twin.add(Value::Int(8))]);
        assert!(Arc::ptr_eq(&w.entries()[0].key, &twin.key));
        assert!(w.hinted(&p.add(Value::Int(0))).is_none());
        apply(&mut w, &[s.add(Value::Float(0.25)), p.add(Value::Int(16))]);
        assert!(Arc::ptr_eq(&w.entries()[0].key, &p.key));
        assert_eq!(*made, *p.key);
        assert_eq!(sums(&w), expected);
        assert_eq!(w.sample_count(), 2);
    }

    #[test]
    fn a_prepared_key_that_found_an_entry_by_hash_is_kept_by_it() {
        // The entry takes the key's Arc, so a key dropped afterwards leaves its allocation to the
        // entry: no later key can have its address and be taken for it.
        let hasher = KeyHasher::default();
        let mut w = Window::new(hasher.clone());
        let tags = [("t", "1")];
        w.apply(&[add(Kind::Counter, "a", &tags, Value::Int(1))], usize::MAX)
            .unwrap();
        let first = Prepared::new(&hasher, Kind::Counter, b"a", &tags);
        w.apply(&[first.add(Value::Int(2))], usize::MAX).unwrap(); // found by hash
        assert!(Arc::ptr_eq(&w.entries()[0].key, &first.key));
        drop(first);
        assert_eq!(Arc::strong_count(&w.entries()[0].key), 1);
        let others: Vec<Prepared> = (0..64)
            .map(|_| Prepared::new(&hasher, Kind::Counter, b"b", &tags))
            .collect();
        assert!(
            others
                .iter()
                .all(|p| !Arc::ptr_eq(&p.key, &w.entries()[0].key))
        );
        w.apply(&[others[0].add(Value::Int(4))], usize::MAX)
            .unwrap();
        assert_eq!(
            sums(&w),
            vec![
                (Kind::Counter, Key::new("a", &tags), Value::Int(3), 2),
                (Kind::Counter, Key::new("b", &tags), Value::Int(4), 1),
            ]
        );
    }

    #[test]
    fn a_prepared_key_carried_over_and_kept_apart_at_overflow_adds_to_its_newest_entry() {
        let hasher = KeyHasher::default();
        let p = Prepared::new(&hasher, Kind::Counter, b"c", &[("t", "1")]);
        let mut old = Window::new(hasher.clone());
        old.apply(&[p.add(Value::Int(i64::MAX))], usize::MAX)
            .unwrap();
        let mut rest = old.remainder(0);
        rest.apply(&[p.add(Value::Int(0))], usize::MAX).unwrap(); // hinted in `rest`
        let mut newer = Window::new(hasher.clone());
        newer.apply(&[p.add(Value::Int(1))], usize::MAX).unwrap();
        rest.absorb(newer, usize::MAX); // would overflow: a second entry
        rest.apply(&[p.add(Value::Int(2))], usize::MAX).unwrap();
        let key = Key::new("c", &[("t", "1")]);
        assert_eq!(
            sums(&rest),
            vec![
                (Kind::Counter, key.clone(), Value::Int(i64::MAX), 2),
                (Kind::Counter, key, Value::Int(3), 2),
            ]
        );
    }

    #[test]
    fn a_remainder_absorbs_newer_values_after_its_own() {
        let w = window(&[
            add(Kind::Timer, "t", NO_TAGS, Value::Float(1.0)),
            counter("a", 1),
            counter("b", 2),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(1.0)),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(2.0)),
        ]);
        let mut rest = w.remainder(1);
        let newer = window(&[
            counter("c", 5),
            counter("a", 10),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(3.0)),
        ]);
        assert_eq!(rest.absorb(newer, 3), 0);
        assert_eq!(
            emitted(&rest),
            vec![
                (Kind::Counter, "a".into(), Value::Int(11)),
                (Kind::Counter, "b".into(), Value::Int(2)),
                (Kind::Counter, "c".into(), Value::Int(5)),
                (Kind::Sample, "s".into(), Value::Float(1.0)),
                (Kind::Sample, "s".into(), Value::Float(2.0)),
                (Kind::Sample, "s".into(), Value::Float(3.0)),
            ]
        );
        assert_eq!(rest.entries()[0].count, 2, "a was added twice");
    }
}
