//! A thread-safe metrics buffer: counters, timers and timing samples aggregated per key (a name and
//! its tags) for one flush window, swapped out whole under a lock in O(1) by a flush, and emitted
//! by one thread at a time after the lock is released. No Python in here: the
//! `arroyo-metrics-buffer` extension binds it, and a Rust program (rust-arroyo, say) can use it as
//! it is.
//!
//! - [`Buffer::record`] adds values (all of a call's or none) and says whether this caller won the
//!   throttled flush; [`Buffer::begin_flush`] asks for one explicitly.
//! - The winner holds an [`Emit`]: [`Emit::send`] gives it the window's backend calls
//!   ([`Emission`]s: timers, then counters, each in first-appearance order, then samples in arrival
//!   order); [`Emit::end`] ends it. What a failing backend did not take goes back and is sent once,
//!   later; a flush asked for meanwhile by another thread is handed to the emitter, never waited for.
//! - [`FailureLog`] decides when to tell about a failing backend, so that one that is down cannot
//!   flood a log.
//! - After `fork()`, a child's buffers start empty and never touch the parent's locks
//!   ([`register_at_fork`], [`ForkLocal`]).
//!
//! Names and tags are bytes ([`Text`]): a `&str` is passed as its bytes.
//!
//! ```
//! use metrics_buffer::{Add, Begin, Buffer, Kind, Value};
//!
//! // Flush at most once a second; keep at most 1,000 samples a window; created at t = 0 s.
//! let buffer = Buffer::new(1.0, 1_000, 0.0);
//! let tags = [("status", "success")];
//! let delivered = Add::new(Kind::Counter, "produce_status", &tags, Value::Int(1));
//! // At t = 0.5 s the throttled flush is not due: the value just waits.
//! assert!(buffer.record(&[delivered], Some(0.5)).unwrap().is_none());
//! let latency = Add::new(Kind::Sample, "callback_latency", &tags, Value::Float(0.02));
//! // At t = 1.5 s it is: this caller gets the window to emit (values recorded by other threads
//! // meanwhile go into the next one).
//! let mut emit = buffer.record(&[latency], Some(1.5)).unwrap().expect("due");
//! let mut sent = Vec::new();
//! emit.send(|e| {
//!     sent.push((e.kind, String::from_utf8_lossy(&e.key.name).into_owned(), e.value));
//!     Ok::<(), ()>(()) // a backend error would be returned here, and the rest kept
//! })
//! .unwrap();
//! assert!(emit.end(Some(1.5)).is_none(), "no other thread asked for a flush meanwhile");
//! assert_eq!(
//!     sent,
//!     [
//!         (Kind::Counter, "produce_status".to_owned(), Value::Int(1)),
//!         (Kind::Sample, "callback_latency".to_owned(), Value::Float(0.02)),
//!     ]
//! );
//! assert!(matches!(buffer.begin_flush(), Begin::Emit(_)), "an explicit flush, of nothing");
//! ```

#![deny(unsafe_code)]

mod failures;
mod flush;
// The one module with `unsafe`: a value a forked child renews (raw pointers swapped atomically,
// and `pthread_atfork`), each block with its SAFETY comment.
#[allow(unsafe_code)]
mod fork;
mod key;
mod lock;
mod window;

pub use failures::{FailureLog, Report};
pub use flush::{Begin, Emit, State};
pub use fork::{FillOnce, ForkLocal, after_fork_in_child, generation, register_at_fork};
pub use key::{Key, Kind, Text, Value, slot_pair};
pub use lock::Lock;
pub use window::{Add, Emission, Entry, Prepared, Window};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use key::KeyHasher;

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

/// Makes process-wide lazy state ready (foldhash's global seed), so that no thread is ever
/// making it when the process forks.
pub fn prepare() {
    let _ = KeyHasher::default();
}

/// Counters for people debugging a consumer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub flushes: u64,
    pub flush_errors: u64,
    pub dropped_samples: u64,
}

/// How long a failing backend's failures are summarised for, by default (see [`FailureLog`]).
pub const DEFAULT_FAILURE_INTERVAL: Duration = Duration::from_secs(60);

/// What to tell about the backend after a flush: a [`Report`], with what the buffer holds then.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureReport {
    pub report: Report,
    /// Backend calls the buffer's pending values make now.
    pub waiting: usize,
    /// Samples dropped (beyond `max_samples`) since the last report.
    pub dropped: u64,
}

/// The lock and what it guards, for one fork generation of the process.
struct Generation<L> {
    state: L,
    /// A copy of `state.last_flush`, written under the lock, readable without it after a fork.
    last_flush: AtomicU64,
}

impl<L: Lock<State>> Generation<L> {
    fn new(last_flush: f64, hasher: &KeyHasher, failure_interval: Duration) -> Self {
        let window = Window::new(hasher.clone());
        let failures = FailureLog::new(failure_interval);
        Generation {
            state: L::new(State::new(window, last_flush, failures)),
            last_flush: AtomicU64::new(last_flush.to_bits()),
        }
    }

    fn lock(&self) -> L::Guard<'_> {
        self.state.lock()
    }

    fn set_last_flush(&self, state: &mut State, now: f64) {
        state.last_flush = now;
        self.last_flush.store(now.to_bits(), Ordering::Release);
    }
}

/// The thread-safe buffer. `L` keeps its state to one thread at a time (see [`Lock`]).
pub struct Buffer<L: Lock<State> = Mutex<State>> {
    /// In a forked child: an empty window, a fresh lock, and the parent's time of last flush.
    generation: ForkLocal<Generation<L>>,
    /// One hash seed for every window of this buffer, so that keys can be hashed in advance.
    hasher: KeyHasher,
    frequency: f64,
    max_samples: usize,
    failure_interval: Duration,
    /// Whether the last flush failed (so that a flush that works need not lock to tell).
    failing: AtomicBool,
    flushes: AtomicU64,
    flush_errors: AtomicU64,
    dropped_samples: AtomicU64,
}

impl Buffer {
    /// A buffer whose state a `std::sync::Mutex` guards: flushes at most every `frequency`
    /// seconds, holds at most `max_samples` samples a window; `now` is the time of creation,
    /// which counts as the last flush for the throttle.
    pub fn new(frequency: f64, max_samples: usize, now: f64) -> Self {
        Self::with_lock(frequency, max_samples, now)
    }
}

impl<L: Lock<State>> Buffer<L> {
    /// [`Buffer::new`], with the state guarded by an `L` (see [`Lock`]).
    pub fn with_lock(frequency: f64, max_samples: usize, now: f64) -> Self {
        let hasher = KeyHasher::default();
        Buffer {
            generation: ForkLocal::new(Generation::new(now, &hasher, DEFAULT_FAILURE_INTERVAL)),
            hasher,
            frequency,
            max_samples,
            failure_interval: DEFAULT_FAILURE_INTERVAL,
            failing: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            flush_errors: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
        }
    }

    /// At most one summary of a failing backend's failures per `interval` (see [`FailureLog`]).
    pub fn with_failure_interval(mut self, interval: Duration) -> Self {
        self.failure_interval = interval;
        self.generation().lock().failures = FailureLog::new(interval);
        self
    }

    #[inline]
    fn generation(&self) -> &Generation<L> {
        self.generation.get(|parent| {
            let last_flush = f64::from_bits(parent.last_flush.load(Ordering::Acquire));
            Generation::new(last_flush, &self.hasher, self.failure_interval)
        })
    }

    pub fn failure_interval(&self) -> Duration {
        self.failure_interval
    }

    /// After a flush ended (`failed`: the backend raised), at `now`: what to tell about the
    /// backend, if anything. A flush that works while nothing failed before does not lock.
    pub fn failure_report(&self, failed: bool, now: Instant) -> Option<FailureReport> {
        if !failed && !self.failing.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.generation().lock();
        let report = if failed {
            state.failures.failed(now)
        } else {
            state.failures.succeeded()
        };
        self.failing
            .store(state.failures.failing(), Ordering::Release);
        let report = report?;
        let dropped_total = self.dropped_samples.load(Ordering::Relaxed);
        let dropped = dropped_total.saturating_sub(state.dropped_reported);
        state.dropped_reported = dropped_total;
        Some(FailureReport {
            report,
            waiting: state.window.emission_count(),
            dropped,
        })
    }

    /// A key to add to over and over ([`Prepared::add`]).
    pub fn prepare<S: AsRef<[u8]>>(&self, kind: Kind, name: &[u8], tags: &[(S, S)]) -> Prepared {
        Prepared::new(&self.hasher, kind, name, tags)
    }

    pub fn frequency(&self) -> f64 {
        self.frequency
    }

    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// Applies `adds` (all or none). When `now` is given and more than the frequency has passed
    /// since the last flush and nobody is emitting, this caller wins the flush: the window, with
    /// these values in it, is returned for it to emit.
    pub fn record<S: AsRef<[u8]>>(
        &self,
        adds: &[Add<'_, S>],
        now: Option<f64>,
    ) -> Result<Option<Emit<'_, L>>, CoreError> {
        let won = self.record_gated(adds, now, || Some(()))?;
        Ok(won.map(|(emit, ())| emit))
    }

    /// [`Buffer::record`], where winning the flush also takes a pass from `permit`. It is asked
    /// under the lock, only when the flush is due, so it must be quick and call no Python; when it
    /// refuses, the values stay for a later flush.
    pub fn record_gated<S: AsRef<[u8]>, P>(
        &self,
        adds: &[Add<'_, S>],
        now: Option<f64>,
        permit: impl FnOnce() -> Option<P>,
    ) -> Result<Option<(Emit<'_, L>, P)>, CoreError> {
        let generation = self.generation();
        let mut state = generation.lock();
        let dropped = state.window.apply(adds, self.max_samples)?;
        let won = match now {
            Some(now) if state.throttle_due(now, self.frequency) => permit().map(|pass| {
                generation.set_last_flush(&mut state, now);
                (Emit::new(self, state.become_emitter()), pass)
            }),
            _ => None,
        };
        self.count_dropped(&mut state, dropped);
        drop(state);
        Ok(won)
    }

    /// Counts dropped samples. Every writer holds the state's lock (`_locked` says so), so a load
    /// and a store do, without the atomic read-modify-write that each recording call would pay
    /// once a window is full.
    fn count_dropped(&self, _locked: &mut State, dropped: u64) {
        if dropped > 0 {
            let total = self.dropped_samples.load(Ordering::Relaxed);
            self.dropped_samples
                .store(total.saturating_add(dropped), Ordering::Relaxed);
        }
    }

    /// What is pending, without flushing: (kind, key, sum, number of values) per entry.
    pub fn snapshot(&self) -> Vec<(Kind, Key, Value, u64)> {
        let state = self.generation().lock();
        state
            .window
            .entries()
            .iter()
            .map(|e| (e.kind, Key::clone(&e.key), e.sum, e.count))
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

/// Shorthands for the core's tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub use super::fork::testing::{exclusive, serial};

    pub const NO_TAGS: &[(&str, &str)] = &[];

    /// A name or tag as a `String` (the tests' names are UTF-8).
    pub fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).expect("the tests' names are UTF-8")
    }

    pub fn add<'a>(
        kind: Kind,
        name: &'a str,
        tags: &'a [(&'a str, &'a str)],
        amount: Value,
    ) -> Add<'a, &'a str> {
        Add::new(kind, name, tags, amount)
    }

    pub fn counter(name: &str, delta: i64) -> Add<'_, &str> {
        add(Kind::Counter, name, NO_TAGS, Value::Int(delta))
    }

    pub fn emitted(w: &Window) -> Vec<(Kind, String, Value)> {
        w.emissions()
            .map(|e| (e.kind, text(&e.key.name), e.value))
            .collect()
    }

    /// Becomes the emitter of `b`.
    pub fn take(b: &Buffer) -> Emit<'_> {
        match b.begin_flush() {
            Begin::Emit(emit) => emit,
            _ => panic!("expected to become the emitter"),
        }
    }

    /// Sends everything; returns what went out.
    pub fn send_all(emit: &mut Emit<'_>) -> Vec<(Kind, String, Value)> {
        let mut sent = Vec::new();
        let result = emit.send(|e| {
            sent.push((e.kind, text(&e.key.name), e.value));
            Ok::<(), ()>(())
        });
        assert!(result.is_ok());
        sent
    }

    /// Sends the first `n` emissions, then fails; returns how many are left.
    pub fn fail_after(emit: &mut Emit<'_>, n: usize) -> usize {
        let mut calls = 0;
        assert!(
            emit.send(|_| {
                calls += 1;
                if calls > n { Err(()) } else { Ok(()) }
            })
            .is_err()
        );
        emit.unsent()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    type Totals = Mutex<HashMap<(Kind, String), (f64, u64)>>;

    /// Adds an emit's emissions to the totals, and those of any flush handed over meanwhile.
    fn tally_all(emit: Emit<'_>, totals: &Totals) {
        let mut next = Some(emit);
        while let Some(mut emit) = next {
            let mut t = totals.lock().unwrap();
            let sent = emit.send(|e| {
                let slot = t.entry((e.kind, text(&e.key.name))).or_default();
                slot.0 += match e.value {
                    Value::Int(i) => i as f64,
                    Value::Float(f) => f,
                };
                slot.1 += e.count;
                Ok::<(), ()>(())
            });
            assert!(sent.is_ok());
            drop(t);
            next = emit.end(None);
        }
    }

    #[test]
    fn threads_adding_while_another_takes_lose_and_double_nothing() {
        let _serial = serial();
        const THREADS: usize = 8;
        const PER_THREAD: i64 = 1_000_000;
        const KEYS: [&str; 4] = ["a", "b", "c", "d"];
        let buffer = Arc::new(Buffer::new(0.0, usize::MAX, 0.0));
        let done = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Totals::default());
        let taker = {
            let (buffer, done, totals) = (buffer.clone(), done.clone(), totals.clone());
            std::thread::spawn(move || {
                let mut takes = 0u64;
                while !done.load(Ordering::Acquire) {
                    if let Begin::Emit(w) = buffer.begin_flush() {
                        tally_all(w, &totals);
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
                            tally_all(w, &totals);
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
        tally_all(take(&buffer), &totals);
        let totals = totals.lock().unwrap();
        let per_key = (THREADS as i64 * PER_THREAD) / KEYS.len() as i64;
        for key in KEYS {
            let total = |kind: Kind| totals[&(kind, key.to_string())];
            let c = total(Kind::Counter);
            assert_eq!(
                (c.0 as i64, c.1),
                (per_key, per_key as u64),
                "counter {key}"
            );
            let t = total(Kind::Timer);
            assert_eq!(
                (t.0, t.1),
                (per_key as f64 * 0.5, per_key as u64),
                "timer {key}"
            );
            let s = total(Kind::Sample);
            assert_eq!(
                (s.0, s.1),
                (per_key as f64 * 0.25, per_key as u64),
                "samples {key}"
            );
        }
        assert_eq!(totals.len(), 3 * KEYS.len());
    }

    #[test]
    fn a_refused_change_leaves_the_buffer_as_it_was() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("c", i64::MAX - 1)], None).unwrap();
        let before = b.snapshot();
        let sample = add(Kind::Sample, "s", NO_TAGS, Value::Float(1.0));
        assert!(b.record(&[sample, counter("c", 2)], Some(5.0)).is_err());
        assert_eq!(b.snapshot(), before);
        assert!(
            b.record(&[counter("c", 1)], Some(1.5)).unwrap().is_some(),
            "the refused call did not count as a flush"
        );
    }

    #[test]
    fn after_a_fork_a_buffer_starts_empty_even_if_its_lock_was_held() {
        let _alone = exclusive();
        let b = Buffer::new(1.0, 100, 7.0);
        b.record(&[counter("parent", 1)], None).unwrap();
        let held = b.generation().lock();
        // What fork() leaves in the child: the lock held by a thread that does not exist there.
        after_fork_in_child();
        b.record(&[counter("child", 1)], None).unwrap();
        let snap = b.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(&*snap[0].1.name, b"child");
        assert!(
            b.record(&[counter("child", 1)], Some(7.5))
                .unwrap()
                .is_none(),
            "last flush carried over"
        );
        assert!(
            b.record(&[counter("child", 1)], Some(8.5))
                .unwrap()
                .is_some()
        );
        drop(held);
    }
}
