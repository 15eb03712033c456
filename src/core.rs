//! The pure-Rust metrics buffer: no Python types in here, so `cargo test` exercises it directly.
//!
//! Values accumulate in a [`Window`]. A flush swaps the whole window out under the lock in O(1) and
//! emits it after the lock is released. At most one thread emits at a time (the *emitter*); a flush
//! asked for by another thread meanwhile is handed to the emitter instead of waiting for it, so no
//! caller ever blocks on a metrics backend. What a failed emit did not get out is given back and goes
//! out once, ahead of newer keys, on a later flush.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::thread::{self, ThreadId};

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

/// A tag list, in the order the caller gave it.
pub type Tags = Box<[(Box<str>, Box<str>)]>;

/// A metric name and its tags. Two keys are the same when their names are equal and their tags are
/// equal as mappings (order does not matter); the tags are emitted in their first-seen order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: Box<str>,
    pub tags: Tags,
}

/// An owned copy of borrowed tags, in the same order.
pub fn own_tags<S: AsRef<str>>(tags: &[(S, S)]) -> Tags {
    tags.iter()
        .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
        .collect()
}

impl Key {
    pub fn new<S: AsRef<str>>(name: &str, tags: &[(S, S)]) -> Self {
        Key {
            name: name.into(),
            tags: own_tags(tags),
        }
    }

    fn matches<S: AsRef<str>>(&self, name: &str, tags: &[(S, S)]) -> bool {
        let same_order = || {
            self.tags
                .iter()
                .zip(tags)
                .all(|((sk, sv), (k, v))| **sk == *k.as_ref() && **sv == *v.as_ref())
        };
        *self.name == *name
            && self.tags.len() == tags.len()
            && (same_order()
                || tags.iter().all(|(k, v)| {
                    self.tags
                        .iter()
                        .any(|(sk, sv)| **sk == *k.as_ref() && **sv == *v.as_ref())
                }))
    }
}

/// One change to make to a window: add `amount` under (`kind`, `name`, `tags`).
pub struct Add<'a, S> {
    pub kind: Kind,
    pub name: &'a str,
    pub tags: &'a [(S, S)],
    pub amount: Value,
    /// [`Buffer::prehash`] of the key, for keys used over and over; `None` hashes it here.
    pub hash: Option<u64>,
}

/// A change that was refused; the buffer is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A counter's running sum would leave the i64 range.
    CounterOverflow { name: String, sum: i64, delta: i64 },
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::CounterOverflow { name, sum, delta } => write!(
                f,
                "counter {name:?} would overflow a 64-bit signed integer: {sum} + {delta}"
            ),
        }
    }
}

/// An aggregate entry of a window: the sum and the number of values added under one key.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub key: Key,
    pub sum: Value,
    pub count: u64,
    /// The next entry with the same hash, or `NONE`.
    next: u32,
}

const NONE: u32 = u32::MAX;

/// A seeded folded-multiply hash (the construction of foldhash/ahash's fallback): SipHash was a
/// quarter of the cost of an increment, and metric keys come from code, not from an adversary;
/// the random per-window seed still keeps collisions unpredictable.
#[derive(Clone, Debug)]
struct Seed(u64);

impl Default for Seed {
    fn default() -> Self {
        Seed(RandomState::new().hash_one(0u64) | 1)
    }
}

struct FoldHasher(u64);

const MULTIPLE: u64 = 0x9E37_79B9_7F4A_7C15;

impl FoldHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let full = u128::from(self.0 ^ word) * u128::from(MULTIPLE);
        self.0 = (full as u64) ^ ((full >> 64) as u64);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.mix(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.mix(u64::from_le_bytes(tail) ^ (bytes.len() as u64) << 56);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n)
    }
}

impl Seed {
    /// Order-insensitive in the tags, so that equal mappings find the same entry.
    fn hash_key<S: AsRef<str>>(&self, kind: Kind, name: &str, tags: &[(S, S)]) -> u64 {
        let mut h = self.build_hasher();
        let mut tag_sum = 0u64;
        for (k, v) in tags {
            let mut t = self.build_hasher();
            t.write(k.as_ref().as_bytes());
            t.write(v.as_ref().as_bytes());
            tag_sum = tag_sum.wrapping_add(t.finish());
        }
        h.write_u64(kind as u64 | (tags.len() as u64) << 8);
        h.write(name.as_bytes());
        h.write_u64(tag_sum);
        h.finish()
    }
}

impl BuildHasher for Seed {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(self.0)
    }
}

/// Hashes in the index are already mixed; pass them through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n
    }
}

/// One flush window: aggregate entries in first-appearance order, plus samples in arrival order.
#[derive(Default, Debug)]
pub struct Window {
    hasher: Seed,
    index: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    entries: Vec<Entry>,
    /// (entry index, value) per sample.
    samples: Vec<(u32, f64)>,
    /// Untagged names by the address of their bytes: callers pass the same (interned) string
    /// objects over and over, so this skips hashing. Only a hint: a hit is checked byte by byte.
    /// (Boxed: a window is returned by value from `record`, and should stay small to move.)
    hints: Box<[(usize, u32); HINTS]>,
}

const HINTS: usize = 16;

/// One backend call that a window makes when it is emitted.
#[derive(Debug, PartialEq)]
pub struct Emission<'a> {
    pub kind: Kind,
    pub key: &'a Key,
    pub value: Value,
    /// How many values `value` sums (1 for a sample).
    pub count: u64,
}

impl Window {
    fn new(hasher: Seed) -> Self {
        Window {
            hasher,
            ..Window::default()
        }
    }

    /// Aggregate entries in first-appearance order (a sample entry holds its samples' sum and count).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    fn hash<S: AsRef<str>>(&self, kind: Kind, name: &str, tags: &[(S, S)]) -> u64 {
        self.hasher.hash_key(kind, name, tags)
    }

    fn hint_slot(name: &str, kind: Kind) -> usize {
        ((name.as_ptr() as usize >> 4) ^ kind as usize) % HINTS
    }

    /// The entry for an untagged name whose bytes were seen at this address, if it still matches.
    fn hinted(&self, kind: Kind, name: &str) -> u32 {
        let (address, at) = self.hints[Self::hint_slot(name, kind)];
        match self.entries.get(at as usize) {
            Some(e)
                if address == name.as_ptr() as usize
                    && e.kind == kind
                    && e.key.tags.is_empty()
                    && *e.key.name == *name =>
            {
                at
            }
            _ => NONE,
        }
    }

    fn remember(&mut self, kind: Kind, name: &str, at: u32) {
        self.hints[Self::hint_slot(name, kind)] = (name.as_ptr() as usize, at);
    }

    fn find<S: AsRef<str>>(&self, hash: u64, kind: Kind, name: &str, tags: &[(S, S)]) -> u32 {
        let mut at = self.index.get(&hash).copied().unwrap_or(NONE);
        while at != NONE {
            let entry = &self.entries[at as usize];
            if entry.kind == kind && entry.key.matches(name, tags) {
                return at;
            }
            at = entry.next;
        }
        NONE
    }

    fn insert(&mut self, hash: u64, kind: Kind, key: Key, zero: Value) -> u32 {
        let at = self.entries.len() as u32;
        let next = self.index.insert(hash, at).unwrap_or(NONE);
        self.entries.push(Entry {
            kind,
            key,
            sum: zero,
            count: 0,
            next,
        });
        at
    }

    /// Checks every change, then applies them all, or none. Samples beyond `max_samples` are
    /// dropped and counted in the return value.
    fn apply<S: AsRef<str>>(
        &mut self,
        adds: &[Add<'_, S>],
        max_samples: usize,
    ) -> Result<u64, CoreError> {
        // The first adds are hashed and looked up once (a delivery report is two); any beyond that
        // are looked up again when applied.
        const BATCH: usize = 2;
        let mut found = [(0u64, NONE); BATCH];
        for (i, add) in adds.iter().enumerate() {
            let hinted = if add.tags.is_empty() {
                self.hinted(add.kind, add.name)
            } else {
                NONE
            };
            let (hash, at) = if hinted != NONE {
                (0, hinted) // found: the hash is not needed
            } else {
                let hash = add
                    .hash
                    .unwrap_or_else(|| self.hash(add.kind, add.name, add.tags));
                (hash, self.find(hash, add.kind, add.name, add.tags))
            };
            if let Some(slot) = found.get_mut(i) {
                *slot = (hash, at);
            }
            if let (Some(entry), Value::Int(delta)) = (self.entries.get(at as usize), add.amount) {
                if let Value::Int(sum) = entry.sum {
                    if sum.checked_add(delta).is_none() {
                        return Err(CoreError::CounterOverflow {
                            name: add.name.to_owned(),
                            sum,
                            delta,
                        });
                    }
                }
            }
        }
        let mut dropped = 0;
        for (i, add) in adds.iter().enumerate() {
            let (hash, mut at) = match found.get(i) {
                Some(&known) => known,
                None => (
                    add.hash
                        .unwrap_or_else(|| self.hash(add.kind, add.name, add.tags)),
                    NONE,
                ),
            };
            if add.kind == Kind::Sample && self.samples.len() >= max_samples {
                dropped += 1;
                continue;
            }
            if at == NONE {
                // An earlier add of this batch may have created it.
                at = self.find(hash, add.kind, add.name, add.tags);
            }
            if at == NONE {
                let zero = match add.amount {
                    Value::Int(_) => Value::Int(0),
                    Value::Float(_) => Value::Float(0.0),
                };
                at = self.insert(hash, add.kind, Key::new(add.name, add.tags), zero);
            }
            if add.tags.is_empty() {
                self.remember(add.kind, add.name, at);
            }
            self.accumulate(at, add.amount, 1);
            if let (Kind::Sample, Value::Float(v)) = (add.kind, add.amount) {
                self.samples.push((at, v));
            }
        }
        Ok(dropped)
    }

    /// Adds `amount` (the sum of `count` values) to an entry. Only the give-back merge can add to a
    /// counter without the overflow check in `apply`; it saturates rather than wrap.
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

    fn entry_for(&mut self, kind: Kind, key: &Key, zero: Value) -> u32 {
        let hash = self.hash(kind, &key.name, &key.tags);
        match self.find(hash, kind, &key.name, &key.tags) {
            NONE => self.insert(hash, kind, key.clone(), zero),
            at => at,
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

    /// Everything from the `skip`-th emission on, as a window of its own, in the same order.
    pub fn remainder(&self, skip: usize) -> Window {
        let mut rest = Window::new(self.hasher.clone());
        for e in self.emissions().skip(skip) {
            rest.merge_one(e.kind, e.key, e.value, e.count, usize::MAX);
        }
        rest
    }

    /// Adds one emission's worth of data; returns how many samples were dropped (0 or 1).
    fn merge_one(&mut self, kind: Kind, key: &Key, value: Value, count: u64, cap: usize) -> u64 {
        if kind == Kind::Sample && self.samples.len() >= cap {
            return 1;
        }
        let zero = match value {
            Value::Int(_) => Value::Int(0),
            Value::Float(_) => Value::Float(0.0),
        };
        let at = self.entry_for(kind, key, zero);
        self.accumulate(at, value, count);
        if let (Kind::Sample, Value::Float(v)) = (kind, value) {
            self.samples.push((at, v));
        }
        0
    }

    /// Appends `newer` after this window: sums merge into existing keys, new keys and all samples
    /// go after. Returns how many samples were dropped for `max_samples`.
    fn absorb(&mut self, newer: Window, max_samples: usize) -> u64 {
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

/// What an explicit flush should do.
pub enum Begin {
    /// This thread is now the emitter: emit the window, then call [`Buffer::end_flush`].
    Emit(Window),
    /// Another thread is emitting; it will flush again for us when it is done.
    HandedOff,
    /// This thread is already emitting (a backend called back into the buffer): the current
    /// values stay for the next flush.
    Reentrant,
}

struct State {
    window: Window,
    last_flush: f64,
    emitter: Option<ThreadId>,
    flush_requested: bool,
}

/// The lock and what it guards, for one fork generation of the process.
struct Shared {
    generation: u64,
    state: Mutex<State>,
    /// A copy of `state.last_flush`, written under the lock, readable without it after a fork.
    last_flush: AtomicU64,
}

/// Bumped in a forked child, before any other thread exists there (see [`after_fork_in_child`]).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called in the child right after `fork()`: every buffer then starts over with an empty window and
/// a fresh lock on its next use. The parent's lock may be held by a thread that does not exist in
/// the child, so its state is never touched again (it is leaked, once per buffer per fork).
pub fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Counters for people debugging a consumer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub flushes: u64,
    pub flush_errors: u64,
    pub dropped_samples: u64,
}

/// The thread-safe buffer.
pub struct Buffer {
    shared: AtomicPtr<Shared>,
    /// One hash seed for every window of this buffer, so that keys can be hashed in advance.
    seed: Seed,
    frequency: f64,
    max_samples: usize,
    flushes: AtomicU64,
    flush_errors: AtomicU64,
    dropped_samples: AtomicU64,
}

impl Buffer {
    /// `now` is the time of creation, which counts as the last flush for the throttle.
    pub fn new(frequency: f64, max_samples: usize, now: f64) -> Self {
        let seed = Seed::default();
        Buffer {
            shared: AtomicPtr::new(Self::fresh(now, &seed)),
            seed,
            frequency,
            max_samples,
            flushes: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
        }
    }

    fn fresh(last_flush: f64, seed: &Seed) -> *mut Shared {
        Box::into_raw(Box::new(Shared {
            generation: FORK_GENERATION.load(Ordering::Acquire),
            state: Mutex::new(State {
                window: Window::new(seed.clone()),
                last_flush,
                emitter: None,
                flush_requested: false,
            }),
            last_flush: AtomicU64::new(last_flush.to_bits()),
        }))
    }

    fn shared(&self) -> &Shared {
        let generation = FORK_GENERATION.load(Ordering::Acquire);
        loop {
            let current = self.shared.load(Ordering::Acquire);
            // SAFETY: a `Shared` is freed only by `Drop`, which has `&mut self`; one replaced after a
            // fork is leaked, never freed.
            let shared = unsafe { &*current };
            if shared.generation == generation {
                return shared;
            }
            let last_flush = f64::from_bits(shared.last_flush.load(Ordering::Acquire));
            let replacement = Self::fresh(last_flush, &self.seed);
            if self
                .shared
                .compare_exchange(current, replacement, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread of the child replaced it first; use theirs.
                // SAFETY: `replacement` was never shared.
                drop(unsafe { Box::from_raw(replacement) });
            }
        }
    }

    /// The hash of a key for [`Add::hash`].
    pub fn prehash<S: AsRef<str>>(&self, kind: Kind, name: &str, tags: &[(S, S)]) -> u64 {
        self.seed.hash_key(kind, name, tags)
    }

    pub fn frequency(&self) -> f64 {
        self.frequency
    }

    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// Applies `adds` (all or none). When `now` is given and more than the frequency has passed
    /// since the last flush and nobody is emitting, this caller wins the flush: the window, with
    /// these values in it, is returned for it to emit, and it must then call [`Buffer::end_flush`].
    pub fn record<S: AsRef<str>>(
        &self,
        adds: &[Add<'_, S>],
        now: Option<f64>,
    ) -> Result<Option<Window>, CoreError> {
        let shared = self.shared();
        let mut state = shared.state.lock();
        let dropped = state.window.apply(adds, self.max_samples)?;
        let due = match now {
            Some(now) if state.emitter.is_none() && now - state.last_flush > self.frequency => {
                state.last_flush = now;
                shared.last_flush.store(now.to_bits(), Ordering::Release);
                state.emitter = Some(thread::current().id());
                Some(Self::take(&mut state.window))
            }
            _ => None,
        };
        drop(state);
        if dropped > 0 {
            self.dropped_samples.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(due)
    }

    fn take(window: &mut Window) -> Window {
        let hasher = window.hasher.clone();
        std::mem::replace(window, Window::new(hasher))
    }

    /// An explicit flush.
    pub fn begin_flush(&self) -> Begin {
        let mut state = self.shared().state.lock();
        let me = thread::current().id();
        match state.emitter {
            Some(emitter) if emitter == me => Begin::Reentrant,
            Some(_) => {
                state.flush_requested = true;
                Begin::HandedOff
            }
            None => {
                state.emitter = Some(me);
                Begin::Emit(Self::take(&mut state.window))
            }
        }
    }

    /// Ends an emit. `unsent` is what the emit could not get out: it goes back ahead of what
    /// arrived meanwhile. `now` (when known) becomes the time of the last flush. If another thread
    /// asked for a flush meanwhile and this emit succeeded, the next window is returned to emit
    /// (and `end_flush` is due again); otherwise this thread stops being the emitter.
    pub fn end_flush(&self, unsent: Option<Window>, now: Option<f64>) -> Option<Window> {
        let shared = self.shared();
        let mut state = shared.state.lock();
        if let Some(now) = now {
            state.last_flush = now;
            shared.last_flush.store(now.to_bits(), Ordering::Release);
        }
        let failed = unsent.is_some();
        let mut dropped = 0;
        if let Some(unsent) = unsent {
            let newer = std::mem::replace(&mut state.window, unsent);
            dropped = state.window.absorb(newer, self.max_samples);
        }
        let next = if state.flush_requested && !failed {
            state.flush_requested = false;
            Some(Self::take(&mut state.window))
        } else {
            state.flush_requested = false;
            state.emitter = None;
            None
        };
        drop(state);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.flush_errors.fetch_add(1, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.dropped_samples.fetch_add(dropped, Ordering::Relaxed);
        }
        next
    }

    /// What is pending, without flushing: (kind, key, sum, number of values) per entry.
    pub fn snapshot(&self) -> Vec<(Kind, Key, Value, u64)> {
        let state = self.shared().state.lock();
        state
            .window
            .entries()
            .iter()
            .map(|e| (e.kind, e.key.clone(), e.sum, e.count))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_errors: self.flush_errors.load(Ordering::Relaxed),
            dropped_samples: self.dropped_samples.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the current `Shared` and nobody else can reach it any more.
        drop(unsafe { Box::from_raw(*self.shared.get_mut()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, RwLock};

    /// The fork test bumps the process-wide generation; the others must not run meanwhile.
    static FORK: RwLock<()> = RwLock::new(());

    const NO_TAGS: &[(&str, &str)] = &[];

    fn add<'a>(
        kind: Kind,
        name: &'a str,
        tags: &'a [(&'a str, &'a str)],
        amount: Value,
    ) -> Add<'a, &'a str> {
        Add {
            kind,
            name,
            tags,
            amount,
            hash: None,
        }
    }

    fn counter(name: &str, delta: i64) -> Add<'_, &str> {
        add(Kind::Counter, name, NO_TAGS, Value::Int(delta))
    }

    fn emitted(w: &Window) -> Vec<(Kind, String, Value)> {
        w.emissions()
            .map(|e| (e.kind, e.key.name.to_string(), e.value))
            .collect()
    }

    fn take(b: &Buffer) -> Window {
        match b.begin_flush() {
            Begin::Emit(w) => w,
            _ => panic!("expected to become the emitter"),
        }
    }

    #[test]
    fn threads_adding_while_another_takes_lose_and_double_nothing() {
        let _serial = FORK.read().unwrap();
        const THREADS: usize = 8;
        const PER_THREAD: i64 = 1_000_000;
        const KEYS: [&str; 4] = ["a", "b", "c", "d"];
        let buffer = Arc::new(Buffer::new(0.0, usize::MAX, 0.0));
        let done = Arc::new(AtomicBool::new(false));
        type Totals = parking_lot::Mutex<HashMap<(Kind, String), (f64, u64)>>;
        let totals = Arc::new(Totals::default());
        let tally = |w: Window, totals: &Totals| {
            let mut t = totals.lock();
            for e in w.emissions() {
                let slot = t.entry((e.kind, e.key.name.to_string())).or_default();
                slot.0 += match e.value {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                };
                slot.1 += e.count;
            }
        };
        let taker = {
            let (buffer, done, totals) = (buffer.clone(), done.clone(), totals.clone());
            std::thread::spawn(move || {
                let mut takes = 0u64;
                while !done.load(Ordering::Acquire) {
                    if let Begin::Emit(w) = buffer.begin_flush() {
                        tally(w, &totals);
                        let mut next = buffer.end_flush(None, None);
                        while let Some(w) = next {
                            tally(w, &totals);
                            next = buffer.end_flush(None, None);
                        }
                        takes += 1;
                    }
                }
                takes
            })
        };
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (buffer, totals) = (buffer.clone(), totals.clone());
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let key = KEYS[(i as usize + t) % KEYS.len()];
                        let adds = [
                            counter(key, 1),
                            add(Kind::Timer, key, NO_TAGS, Value::Float(0.5)),
                            add(Kind::Sample, key, NO_TAGS, Value::Float(0.25)),
                        ];
                        // Every 1000th add also asks for a throttled flush (frequency 0).
                        let now = (i % 1000 == 0).then_some(i as f64 + 1.0);
                        if let Some(w) = buffer.record(&adds, now).unwrap() {
                            tally(w, &totals);
                            let mut next = buffer.end_flush(None, None);
                            while let Some(w) = next {
                                tally(w, &totals);
                                next = buffer.end_flush(None, None);
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        assert!(taker.join().unwrap() > 0, "the taker never took a window");
        tally(take(&buffer), &totals);
        buffer.end_flush(None, None);
        let totals = totals.lock();
        let per_key = (THREADS as i64 * PER_THREAD) / KEYS.len() as i64;
        for key in KEYS {
            let c = totals[&(Kind::Counter, key.to_string())];
            assert_eq!(
                (c.0 as i64, c.1),
                (per_key, per_key as u64),
                "counter {key}"
            );
            let t = totals[&(Kind::Timer, key.to_string())];
            assert_eq!(
                (t.0, t.1),
                (per_key as f64 * 0.5, per_key as u64),
                "timer {key}"
            );
            let s = totals[&(Kind::Sample, key.to_string())];
            assert_eq!(
                (s.0, s.1),
                (per_key as f64 * 0.25, per_key as u64),
                "samples {key}"
            );
        }
        assert_eq!(totals.len(), 3 * KEYS.len());
    }

    #[test]
    fn emission_order_is_timers_then_counters_then_samples_each_first_seen() {
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 100, 0.0);
        let adds = [
            counter("c2", 1),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(3.0)),
            add(Kind::Timer, "t2", NO_TAGS, Value::Float(1.0)),
            counter("c1", 2),
            add(Kind::Timer, "t1", NO_TAGS, Value::Float(2.0)),
            counter("c2", 5),
            add(Kind::Sample, "s", NO_TAGS, Value::Float(4.0)),
            add(Kind::Timer, "t2", NO_TAGS, Value::Float(0.5)),
        ];
        b.record(&adds, None).unwrap();
        let w = take(&b);
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
    fn given_back_values_go_out_once_ahead_of_newer_ones() {
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(
            &[
                add(Kind::Timer, "t", NO_TAGS, Value::Float(1.0)),
                counter("a", 1),
                counter("b", 2),
                add(Kind::Sample, "s", NO_TAGS, Value::Float(1.0)),
                add(Kind::Sample, "s", NO_TAGS, Value::Float(2.0)),
            ],
            None,
        )
        .unwrap();
        let w = take(&b);
        // The backend took "t", then failed on "a": "a" onwards comes back.
        let unsent = w.remainder(1);
        // Meanwhile other threads added more.
        b.record(
            &[
                counter("c", 5),
                counter("a", 10),
                add(Kind::Sample, "s", NO_TAGS, Value::Float(3.0)),
            ],
            None,
        )
        .unwrap();
        assert!(b.end_flush(Some(unsent), Some(2.0)).is_none());
        assert_eq!(b.stats().flush_errors, 1);
        let w = take(&b);
        assert_eq!(
            emitted(&w),
            vec![
                (Kind::Counter, "a".into(), Value::Int(11)),
                (Kind::Counter, "b".into(), Value::Int(2)),
                (Kind::Counter, "c".into(), Value::Int(5)),
                (Kind::Sample, "s".into(), Value::Float(1.0)),
                (Kind::Sample, "s".into(), Value::Float(2.0)),
                (Kind::Sample, "s".into(), Value::Float(3.0)),
            ]
        );
        assert_eq!(w.entries()[0].count, 2, "a was added twice");
        b.end_flush(None, None);
        assert!(b.snapshot().is_empty());
    }

    #[test]
    fn counter_overflow_is_refused_and_changes_nothing() {
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("c", i64::MAX - 1)], None).unwrap();
        let before = b.snapshot();
        let err = b
            .record(
                &[
                    add(Kind::Sample, "s", NO_TAGS, Value::Float(1.0)),
                    counter("c", 2),
                ],
                None,
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
            b.snapshot(),
            before,
            "neither the sample nor the counter went in"
        );
        b.record(&[counter("c", 1)], None).unwrap();
        assert_eq!(b.snapshot()[0].2, Value::Int(i64::MAX));
        b.record(&[counter("d", i64::MIN)], None).unwrap();
        assert!(b.record(&[counter("d", -1)], None).is_err());
    }

    #[test]
    fn tags_are_compared_as_mappings_and_emitted_in_first_seen_order() {
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 100, 0.0);
        let ab = [("a", "1"), ("b", "2")];
        let ba = [("b", "2"), ("a", "1")];
        let a2 = [("a", "2"), ("b", "2")];
        b.record(
            &[
                add(Kind::Counter, "m", &ab, Value::Int(1)),
                add(Kind::Counter, "m", &ba, Value::Int(1)),
                add(Kind::Counter, "m", &a2, Value::Int(1)),
                add(Kind::Counter, "m", NO_TAGS, Value::Int(1)),
                add(Kind::Timer, "m", &ab, Value::Float(1.0)),
            ],
            None,
        )
        .unwrap();
        let snap = b.snapshot();
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
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 100, 0.0);
        let mut reused = String::from("aaaa");
        b.record(&[counter(&reused, 1)], None).unwrap();
        // The same bytes' address now holds another name.
        reused.replace_range(.., "bbbb");
        b.record(&[counter(&reused, 1)], None).unwrap();
        // The first name again, at another address; and as a timer at the same address.
        let copy = String::from("aaaa");
        b.record(&[counter(&copy, 1)], None).unwrap();
        b.record(&[add(Kind::Timer, &copy, NO_TAGS, Value::Float(1.0))], None)
            .unwrap();
        let snap: Vec<_> = b
            .snapshot()
            .into_iter()
            .map(|(kind, key, value, _)| (kind, key.name.to_string(), value))
            .collect();
        assert_eq!(
            snap,
            vec![
                (Kind::Counter, "aaaa".into(), Value::Int(2)),
                (Kind::Counter, "bbbb".into(), Value::Int(1)),
                (Kind::Timer, "aaaa".into(), Value::Float(1.0)),
            ]
        );
    }

    #[test]
    fn samples_beyond_the_cap_are_dropped_and_counted() {
        let _serial = FORK.read().unwrap();
        let b = Buffer::new(1.0, 3, 0.0);
        for v in 0..5 {
            b.record(
                &[add(Kind::Sample, "s", NO_TAGS, Value::Float(v as f64))],
                None,
            )
            .unwrap();
        }
        assert_eq!(b.stats().dropped_samples, 2);
        let w = take(&b);
        assert_eq!(w.sample_count(), 3);
        // Two new samples arrive while the emit fails on the first: 3 given back + 2 > cap.
        b.record(&[add(Kind::Sample, "s", NO_TAGS, Value::Float(9.0))], None)
            .unwrap();
        b.record(&[add(Kind::Sample, "s", NO_TAGS, Value::Float(8.0))], None)
            .unwrap();
        b.end_flush(Some(w.remainder(0)), None);
        assert_eq!(b.stats().dropped_samples, 4);
        let values: Vec<_> = take(&b).emissions().map(|e| e.value).collect();
        assert_eq!(
            values,
            vec![Value::Float(0.0), Value::Float(1.0), Value::Float(2.0)]
        );
    }

    #[test]
    fn exactly_one_caller_wins_each_throttled_flush() {
        let _serial = FORK.read().unwrap();
        let b = Arc::new(Buffer::new(1.0, 100, 100.0));
        assert!(b.record(&[counter("c", 1)], Some(100.5)).unwrap().is_none());
        assert!(
            b.record(&[counter("c", 1)], Some(101.0)).unwrap().is_none(),
            "1.0 is not more than 1.0"
        );
        let wins: usize = (0..16)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.record(&[counter("c", 1)], Some(102.0)).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .map(|w| {
                assert_eq!(w.entries()[0].sum, Value::Int(w.entries()[0].count as i64));
                1
            })
            .sum();
        assert_eq!(wins, 1);
        // Until the winner ends its flush nobody else can win, however late it is.
        assert!(b.record(&[counter("c", 1)], Some(500.0)).unwrap().is_none());
        assert!(b.end_flush(None, Some(102.5)).is_none());
        assert!(b.record(&[counter("c", 1)], Some(103.0)).unwrap().is_none());
        assert!(b.record(&[counter("c", 1)], Some(103.6)).unwrap().is_some());
    }

    #[test]
    fn a_flush_asked_for_during_an_emit_is_handed_to_the_emitter() {
        let _serial = FORK.read().unwrap();
        let b = Arc::new(Buffer::new(1.0, 100, 0.0));
        b.record(&[counter("first", 1)], None).unwrap();
        let first = take(&b);
        assert!(matches!(b.begin_flush(), Begin::Reentrant));
        b.record(&[counter("second", 1)], None).unwrap();
        let other = {
            let b = b.clone();
            std::thread::spawn(move || matches!(b.begin_flush(), Begin::HandedOff))
        };
        assert!(other.join().unwrap());
        assert_eq!(
            emitted(&first),
            vec![(Kind::Counter, "first".into(), Value::Int(1))]
        );
        let next = b.end_flush(None, Some(1.0)).expect("the handed-off flush");
        assert_eq!(
            emitted(&next),
            vec![(Kind::Counter, "second".into(), Value::Int(1))]
        );
        assert!(b.end_flush(None, Some(1.0)).is_none());
        // A failed emit does not run the handed-off flush straight away: it retries later.
        let w = take(&b);
        let other = {
            let b = b.clone();
            std::thread::spawn(move || matches!(b.begin_flush(), Begin::HandedOff))
        };
        assert!(other.join().unwrap());
        assert!(b.end_flush(Some(w.remainder(0)), None).is_none());
        assert!(matches!(b.begin_flush(), Begin::Emit(_)));
        assert_eq!(
            b.stats(),
            Stats {
                flushes: 3,
                flush_errors: 1,
                dropped_samples: 0
            }
        );
    }

    #[test]
    fn after_a_fork_a_buffer_starts_empty_even_if_its_lock_was_held() {
        let _serial = FORK.write().unwrap();
        let b = Buffer::new(1.0, 100, 7.0);
        b.record(&[counter("parent", 1)], None).unwrap();
        let held = b.shared().state.lock();
        // What fork() leaves in the child: the lock held by a thread that does not exist there.
        after_fork_in_child();
        b.record(&[counter("child", 1)], None).unwrap();
        let snap = b.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].1.name.as_ref(), "child");
        assert!(
            b.record(&[counter("child", 1)], Some(7.5))
                .unwrap()
                .is_none(),
            "last flush carried over"
        );
        assert!(b
            .record(&[counter("child", 1)], Some(8.5))
            .unwrap()
            .is_some());
        drop(held);
    }
}
