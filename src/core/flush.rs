//! The emitter protocol. At most one thread emits at a time (the *emitter*); a flush asked for by
//! another thread meanwhile is handed to the emitter instead of waiting for it, so no caller ever
//! blocks on a metrics backend. What a failed emit did not get out is given back and goes out
//! once, ahead of newer keys, on a later flush.

use std::sync::atomic::Ordering;
use std::thread::{self, ThreadId};

use super::{Buffer, Window};

/// What the buffer's lock guards.
pub(super) struct State {
    pub(super) window: Window,
    pub(super) last_flush: f64,
    emitter: Option<ThreadId>,
    flush_requested: bool,
}

impl State {
    pub(super) fn new(window: Window, last_flush: f64) -> Self {
        State {
            window,
            last_flush,
            emitter: None,
            flush_requested: false,
        }
    }

    /// Whether a throttled flush at `now` is due: more than `frequency` since the last flush, and
    /// nobody emitting.
    pub(super) fn throttle_due(&self, now: f64, frequency: f64) -> bool {
        self.emitter.is_none() && now - self.last_flush > frequency
    }

    /// Makes this thread the emitter and hands it the window.
    pub(super) fn become_emitter(&mut self) -> Window {
        self.emitter = Some(thread::current().id());
        self.window.take()
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

impl Buffer {
    /// An explicit flush.
    pub fn begin_flush(&self) -> Begin {
        let mut state = self.shared().state.lock();
        match state.emitter {
            Some(emitter) if emitter == thread::current().id() => Begin::Reentrant,
            Some(_) => {
                state.flush_requested = true;
                Begin::HandedOff
            }
            None => Begin::Emit(state.become_emitter()),
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
            shared.set_last_flush(&mut state, now);
        }
        let failed = unsent.is_some();
        let mut dropped = 0;
        if let Some(unsent) = unsent {
            let newer = std::mem::replace(&mut state.window, unsent);
            dropped = state.window.absorb(newer, self.max_samples);
        }
        let next = if state.flush_requested && !failed {
            Some(state.window.take())
        } else {
            state.emitter = None;
            None
        };
        state.flush_requested = false;
        drop(state);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.flush_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.count_dropped(dropped);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Kind, Stats, Value};
    use super::*;
    use std::sync::Arc;

    #[test]
    fn given_back_values_go_out_once_ahead_of_newer_ones() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("a", 1), counter("b", 2)], None).unwrap();
        let w = take(&b);
        // The backend took "a", then failed on "b": "b" comes back.
        let unsent = w.remainder(1);
        // Meanwhile another thread added more.
        b.record(&[counter("c", 5), counter("b", 10)], None)
            .unwrap();
        assert!(b.end_flush(Some(unsent), Some(2.0)).is_none());
        assert_eq!(b.stats().flush_errors, 1);
        let w = take(&b);
        assert_eq!(
            emitted(&w),
            vec![
                (Kind::Counter, "b".into(), Value::Int(12)),
                (Kind::Counter, "c".into(), Value::Int(5)),
            ]
        );
        b.end_flush(None, None);
        assert!(b.snapshot().is_empty());
    }

    #[test]
    fn samples_beyond_the_cap_are_dropped_and_counted() {
        let _serial = serial();
        let b = Buffer::new(1.0, 3, 0.0);
        let sample = |v: f64| add(Kind::Sample, "s", NO_TAGS, Value::Float(v));
        for v in 0..5 {
            b.record(&[sample(v as f64)], None).unwrap();
        }
        assert_eq!(b.stats().dropped_samples, 2);
        let w = take(&b);
        assert_eq!(w.sample_count(), 3);
        // Two new samples arrive while the emit fails on the first: 3 given back + 2 > cap.
        b.record(&[sample(9.0)], None).unwrap();
        b.record(&[sample(8.0)], None).unwrap();
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
        let _serial = serial();
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
        let _serial = serial();
        let b = Arc::new(Buffer::new(1.0, 100, 0.0));
        b.record(&[counter("first", 1)], None).unwrap();
        let first = take(&b);
        assert!(matches!(b.begin_flush(), Begin::Reentrant));
        b.record(&[counter("second", 1)], None).unwrap();
        let handed_off = |b: &Arc<Buffer>| {
            let b = b.clone();
            std::thread::spawn(move || matches!(b.begin_flush(), Begin::HandedOff))
                .join()
                .unwrap()
        };
        assert!(handed_off(&b));
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
        assert!(handed_off(&b));
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
}
