//! The emitter protocol. At most one thread emits at a time (the *emitter*); a flush asked for by
//! another thread meanwhile is handed to the emitter instead of waiting for it, so no caller ever
//! blocks on a metrics backend. What a failed emit did not get out is given back and goes out
//! once, ahead of newer keys, on a later flush.

use std::sync::atomic::Ordering;
use std::thread::{self, ThreadId};

use super::failures::FailureLog;
use super::fork;
use super::{Buffer, Emission, Lock, Window};

/// What a buffer's [`Lock`] guards (opaque: only the buffer looks inside).
pub struct State {
    pub(super) window: Window,
    pub(super) last_flush: f64,
    emitter: Option<ThreadId>,
    flush_requested: bool,
    pub(super) failures: FailureLog,
    /// `dropped_samples` as of the last failure report.
    pub(super) dropped_reported: u64,
}

impl State {
    pub(super) fn new(window: Window, last_flush: f64, failures: FailureLog) -> Self {
        State {
            window,
            last_flush,
            emitter: None,
            flush_requested: false,
            failures,
            dropped_reported: 0,
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
pub enum Begin<'a, L: Lock<State> = std::sync::Mutex<State>> {
    /// This thread is now the emitter: send the window, then [`Emit::end`].
    Emit(Emit<'a, L>),
    /// Another thread is emitting; it will flush again for us when it is done.
    HandedOff,
    /// This thread is already emitting (a backend called back into the buffer): the current
    /// values stay for the next flush.
    Reentrant,
}

/// The emitter role and the window it is emitting. The role ends with [`Emit::end`], or when the
/// guard is dropped on any other path (a panic, an early return): then whatever was not sent is
/// given back, as after a failed emit.
///
/// It belongs to the process that began it. In a child forked while it was in progress (from a
/// backend call, say), it sends nothing more and gives nothing back: what it holds is the
/// parent's, which the parent sends.
#[must_use = "dropping it ends the emit at once; send the window, then call end()"]
pub struct Emit<'a, L: Lock<State> = std::sync::Mutex<State>> {
    buffer: &'a Buffer<L>,
    /// `None` once ended.
    window: Option<Window>,
    /// How many of the window's emissions went out.
    sent: usize,
    /// The fork generation it began in (see [`crate::generation`]).
    generation: u64,
}

impl<'a, L: Lock<State>> Emit<'a, L> {
    pub(super) fn new(buffer: &'a Buffer<L>, window: Window) -> Self {
        Emit {
            buffer,
            window: Some(window),
            sent: 0,
            generation: fork::generation(),
        }
    }

    /// Whether this process is a child forked while the emit was in progress.
    fn in_a_child(&self) -> bool {
        fork::generation() != self.generation
    }

    pub fn window(&self) -> &Window {
        self.window
            .as_ref()
            .expect("an Emit holds its window until it ends")
    }

    /// Calls `send` for each emission in order, until one fails (that error is returned), or until
    /// this process turns out to be a child forked meanwhile (by `send` itself, say).
    pub fn send<E>(
        &mut self,
        mut send: impl FnMut(Emission<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let window = self
            .window
            .as_ref()
            .expect("an Emit holds its window until it ends");
        for e in window.emissions().skip(self.sent) {
            if self.in_a_child() {
                return Ok(());
            }
            send(e)?;
            self.sent += 1;
        }
        Ok(())
    }

    /// How many emissions have not gone out.
    pub fn unsent(&self) -> usize {
        self.window().emission_count() - self.sent
    }

    /// Ends the emit. What did not go out goes back ahead of what arrived meanwhile. `now` (when
    /// known) becomes the time of the last flush. If another thread asked for a flush meanwhile
    /// and everything went out, the role goes on with the next window; otherwise it ends here.
    pub fn end(mut self, now: Option<f64>) -> Option<Emit<'a, L>> {
        let next = self.finish(now)?;
        Some(Emit::new(self.buffer, next))
    }

    /// Ends the emit early without counting a failure (the interpreter is exiting): what did not
    /// go out goes back, ahead of what arrived meanwhile, and the role ends here.
    pub fn give_back(mut self) {
        if let Some(window) = self.window.take().filter(|_| !self.in_a_child()) {
            let unsent = window.remainder(self.sent);
            self.buffer.end_flush(Some(unsent), None, false);
        }
    }

    fn finish(&mut self, now: Option<f64>) -> Option<Window> {
        let window = self.window.take().filter(|_| !self.in_a_child())?;
        let all_sent = self.sent == window.emission_count();
        let unsent = (!all_sent).then(|| window.remainder(self.sent));
        drop(window);
        let failed = unsent.is_some();
        self.buffer.end_flush(unsent, now, failed)
    }
}

impl<L: Lock<State>> Drop for Emit<'_, L> {
    fn drop(&mut self) {
        if let Some(window) = self.window.take().filter(|_| !self.in_a_child()) {
            // Not ended: give back what did not go out, failed or not, and end the role.
            self.buffer
                .end_flush(Some(window.remainder(self.sent)), None, true);
        }
    }
}

impl<L: Lock<State>> Buffer<L> {
    /// An explicit flush.
    pub fn begin_flush(&self) -> Begin<'_, L> {
        let mut state = self.generation().lock();
        match state.emitter {
            Some(emitter) if emitter == thread::current().id() => Begin::Reentrant,
            Some(_) => {
                state.flush_requested = true;
                Begin::HandedOff
            }
            None => Begin::Emit(Emit::new(self, state.become_emitter())),
        }
    }

    /// Everything pending now, taken out whatever emit is in progress (at interpreter exit, for
    /// the last emission); and whether another emit was in progress (its window is not in it).
    pub fn drain(&self) -> (Window, bool) {
        let mut state = self.generation().lock();
        (state.window.take(), state.emitter.is_some())
    }

    /// Ends an emit: see [`Emit::end`]. `unsent` is what did not go out (`None`: all of it did);
    /// `failed`, whether to count a failure. Returns the next window to emit, if the role goes on.
    fn end_flush(&self, unsent: Option<Window>, now: Option<f64>, failed: bool) -> Option<Window> {
        let generation = self.generation();
        let mut state = generation.lock();
        if let Some(now) = now {
            generation.set_last_flush(&mut state, now);
        }
        let gave_back = unsent.is_some();
        let mut dropped = 0;
        if let Some(unsent) = unsent {
            let newer = std::mem::replace(&mut state.window, unsent);
            dropped = state.window.absorb(newer, self.max_samples);
        }
        let next = if state.flush_requested && !gave_back {
            Some(state.window.take())
        } else {
            state.emitter = None;
            None
        };
        state.flush_requested = false;
        self.count_dropped(&mut state, dropped);
        drop(state);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.flush_errors.fetch_add(1, Ordering::Relaxed);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Kind, Stats, Value};
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn given_back_values_go_out_once_ahead_of_newer_ones() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("a", 1), counter("b", 2)], None).unwrap();
        let mut emit = take(&b);
        // The backend takes "a", then fails on "b": "b" comes back.
        assert_eq!(fail_after(&mut emit, 1), 1);
        // Meanwhile another thread adds more.
        b.record(&[counter("c", 5), counter("b", 10)], None)
            .unwrap();
        assert!(emit.end(Some(2.0)).is_none());
        assert_eq!(b.stats().flush_errors, 1);
        let mut emit = take(&b);
        assert_eq!(
            send_all(&mut emit),
            vec![
                (Kind::Counter, "b".into(), Value::Int(12)),
                (Kind::Counter, "c".into(), Value::Int(5)),
            ]
        );
        assert!(emit.end(None).is_none());
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
        let mut emit = take(&b);
        assert_eq!(emit.window().sample_count(), 3);
        // Two new samples arrive while the emit fails on the first: 3 given back + 2 > cap.
        b.record(&[sample(9.0)], None).unwrap();
        b.record(&[sample(8.0)], None).unwrap();
        fail_after(&mut emit, 0);
        assert!(emit.end(None).is_none());
        assert_eq!(b.stats().dropped_samples, 4);
        let values: Vec<_> = take(&b).window().emissions().map(|e| e.value).collect();
        assert_eq!(
            values,
            vec![Value::Float(0.0), Value::Float(1.0), Value::Float(2.0)]
        );
    }

    #[test]
    fn exactly_one_caller_wins_each_throttled_flush() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 100.0);
        assert!(b.record(&[counter("c", 1)], Some(100.5)).unwrap().is_none());
        assert!(
            b.record(&[counter("c", 1)], Some(101.0)).unwrap().is_none(),
            "1.0 is not more than 1.0"
        );
        let mut winners: Vec<Emit<'_>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..16)
                .map(|_| s.spawn(|| b.record(&[counter("c", 1)], Some(102.0)).unwrap()))
                .collect();
            threads
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1);
        let winner = winners.pop().unwrap();
        let entry = &winner.window().entries()[0];
        assert_eq!(entry.sum, Value::Int(entry.count as i64));
        // Until the winner ends its flush nobody else can win, however late it is.
        assert!(b.record(&[counter("c", 1)], Some(500.0)).unwrap().is_none());
        assert!(winner.end(Some(102.5)).is_none());
        assert!(b.record(&[counter("c", 1)], Some(103.0)).unwrap().is_none());
        assert!(b.record(&[counter("c", 1)], Some(103.6)).unwrap().is_some());
    }

    #[test]
    fn a_refused_permit_leaves_the_flush_for_later() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        let refused = b.record_gated(&[counter("c", 1)], Some(5.0), || None::<()>);
        assert!(refused.unwrap().is_none());
        assert_eq!(b.snapshot().len(), 1, "the value went in");
        let mut asked = false;
        let won = b.record_gated(&[counter("c", 1)], Some(1.0), || {
            asked = true;
            Some(())
        });
        assert!(won.unwrap().is_none());
        assert!(!asked, "not asked when the flush is not due");
        let (mut emit, ()) = b
            .record_gated(&[counter("c", 1)], Some(5.0), || Some(()))
            .unwrap()
            .expect("due all along: the refusal did not count as a flush");
        assert_eq!(
            send_all(&mut emit),
            vec![(Kind::Counter, "c".into(), Value::Int(3))]
        );
        assert!(emit.end(Some(5.0)).is_none());
    }

    #[test]
    fn a_flush_asked_for_during_an_emit_is_handed_to_the_emitter() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("first", 1)], None).unwrap();
        let mut first = take(&b);
        assert!(matches!(b.begin_flush(), Begin::Reentrant));
        b.record(&[counter("second", 1)], None).unwrap();
        let handed_off = || {
            std::thread::scope(|s| {
                s.spawn(|| matches!(b.begin_flush(), Begin::HandedOff))
                    .join()
                    .unwrap()
            })
        };
        assert!(handed_off());
        assert_eq!(
            send_all(&mut first),
            vec![(Kind::Counter, "first".into(), Value::Int(1))]
        );
        let mut next = first.end(Some(1.0)).expect("the handed-off flush");
        assert_eq!(
            send_all(&mut next),
            vec![(Kind::Counter, "second".into(), Value::Int(1))]
        );
        assert!(next.end(Some(1.0)).is_none());
        // A failed emit does not run the handed-off flush straight away: it retries later.
        b.record(&[counter("third", 1)], None).unwrap();
        let mut emit = take(&b);
        assert!(handed_off());
        fail_after(&mut emit, 0);
        assert!(emit.end(None).is_none());
        assert!(matches!(b.begin_flush(), Begin::Emit(_)));
        assert_eq!(
            b.stats(),
            Stats {
                flushes: 4,
                flush_errors: 2,
                dropped_samples: 0
            }
        );
    }

    #[test]
    fn an_emit_that_a_fork_interrupts_sends_and_gives_back_nothing_in_the_child() {
        let _alone = crate::fork::testing::exclusive();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("a", 1), counter("b", 2), counter("c", 3)], None)
            .unwrap();
        let mut emit = take(&b);
        let mut sent = Vec::new();
        // The backend forks during its first call (as a backend that starts a helper process on
        // first use does); from then on this is the child.
        let result = emit.send(|e| {
            sent.push(text(&e.key.name));
            if sent.len() == 1 {
                crate::after_fork_in_child();
            }
            Ok::<(), ()>(())
        });
        assert_eq!((result, sent), (Ok(()), vec!["a".to_owned()]));
        assert!(emit.end(Some(2.0)).is_none());
        // The child's buffer is empty, and usable: b and c are the parent's to send.
        assert!(b.snapshot().is_empty());
        b.record(&[counter("d", 4)], None).unwrap();
        let mut emit = take(&b);
        assert_eq!(
            send_all(&mut emit),
            vec![(Kind::Counter, "d".into(), Value::Int(4))]
        );
        assert!(emit.end(None).is_none());
        // Given back or dropped in the child, an interrupted emit leaves nothing behind either.
        b.record(&[counter("e", 5)], None).unwrap();
        let emit = take(&b);
        crate::after_fork_in_child();
        emit.give_back();
        let emit = take(&b);
        crate::after_fork_in_child();
        drop(emit);
        assert!(b.snapshot().is_empty());
    }

    #[test]
    fn a_panic_mid_emit_gives_back_what_was_not_sent_and_ends_the_role() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("a", 1), counter("b", 2)], None).unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let mut emit = take(&b);
            let mut calls = 0;
            let _ = emit.send(|_| {
                calls += 1;
                if calls == 2 {
                    panic!("the backend call panics");
                }
                Ok::<(), ()>(())
            });
            let _ = emit.end(None);
        }));
        assert!(panicked.is_err());
        assert_eq!(b.stats().flush_errors, 1);
        // The role is free again: a flush works, and emits what was not sent.
        let mut emit = take(&b);
        assert_eq!(
            send_all(&mut emit),
            vec![(Kind::Counter, "b".into(), Value::Int(2))]
        );
        assert!(emit.end(None).is_none());
        assert!(b.snapshot().is_empty());
    }

    #[test]
    fn an_emit_dropped_unsent_gives_everything_back() {
        let _serial = serial();
        let b = Buffer::new(1.0, 100, 0.0);
        b.record(&[counter("a", 1)], None).unwrap();
        drop(take(&b));
        assert_eq!(b.snapshot().len(), 1);
        assert!(matches!(b.begin_flush(), Begin::Emit(_)));
    }
}
