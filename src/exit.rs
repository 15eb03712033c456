//! Interpreter exit: the registry of live buffers, and the `atexit` hook that emits what they hold
//! within a fixed budget, whatever the backend does (fast, slow, blocked for good, deadlocked
//! against the exiting thread, raising).
//!
//! The hook (registered at import, so the application's own `atexit` handlers, registered later,
//! run before it):
//! 1. closes the [`gate`]: from now on only this thread works; other threads' calls return at once
//!    and their emits stop before their next backend call;
//! 2. waits, for at most half the budget, until no call into Python is in progress on another
//!    thread (normally microseconds: an emit stops after the backend call it is in);
//! 3. takes every live buffer's pending values out, and has them emitted by
//!    `arroyo_metrics_buffer._exit.emit` on a daemon thread of pure Python frames, which makes
//!    them into Python calls a chunk at a time ([`ExitCalls`]) and which the hook waits for until
//!    the deadline, then abandons;
//! 4. waits, until the deadline, for calls into Python still in progress on other threads;
//! 5. logs one line saying what was emitted and what was dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

use crate::emit::Described;
use crate::shared::Shared;
use crate::{gate, report};
use metrics_buffer::{Emission, ForkLocal, Key, Kind, Value};

/// The environment variable that sets the budget, in seconds.
pub(crate) const BUDGET_VARIABLE: &str = "ARROYO_METRICS_BUFFER_EXIT_TIMEOUT";
const DEFAULT_BUDGET: Duration = Duration::from_secs(2);
/// The longest budget taken from the environment: an hour. A larger number is refused like any
/// other unusable value (a deadline beyond the clock's range would end the process).
const MAX_BUDGET_SECONDS: f64 = 3600.0;

type Registry = Mutex<Vec<Weak<Shared>>>;

/// Every live buffer, weakly. A forked child keeps the parent's list unless a parent thread held
/// its lock at the fork, then starts empty.
static REGISTRY: LazyLock<ForkLocal<Registry>> =
    LazyLock::new(|| ForkLocal::new(Registry::default()));

fn registry() -> &'static Registry {
    REGISTRY.get(|parent| {
        let copy = parent.try_lock().map(|live| live.clone());
        Mutex::new(copy.unwrap_or_default())
    })
}

/// Makes the buffer known to the exit hook.
pub(crate) fn register(shared: &Arc<Shared>) {
    let mut live = registry().lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|weak| weak.strong_count() > 0);
    live.push(Arc::downgrade(shared));
}

/// The buffers alive now (the registry's lock is released before they are used).
fn live_buffers() -> Vec<Arc<Shared>> {
    let live = registry().lock().unwrap_or_else(PoisonError::into_inner);
    live.iter().filter_map(Weak::upgrade).collect()
}

/// `arroyo_metrics_buffer._exit`, imported at import.
static EXIT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The budget, from the environment (at exit, so that it can be set at any time before), and the
/// value given if it was not a number of seconds.
fn budget() -> (Duration, Option<String>) {
    let Ok(given) = std::env::var(BUDGET_VARIABLE) else {
        return (DEFAULT_BUDGET, None);
    };
    match given.trim().parse::<f64>() {
        Ok(s) if (0.0..=MAX_BUDGET_SECONDS).contains(&s) => (Duration::from_secs_f64(s), None),
        _ => (DEFAULT_BUDGET, Some(given)),
    }
}

/// What became of the values pending at exit.
#[derive(Default)]
struct Outcome {
    pending: usize,
    /// Calls started; of those, the ones that returned, and the ones that raised.
    started: usize,
    emitted: usize,
    raised: usize,
    first_error: Option<String>,
    /// Buffers that another thread was still emitting when they were drained.
    busy: usize,
    /// Whether every call into Python on other threads had returned by the deadline.
    idle: bool,
    /// What a signal handler raised (KeyboardInterrupt for Ctrl-C) that cut the hook's waits
    /// short, if one did.
    interrupted: Option<String>,
}

/// The backend calls pending at exit, made into Python objects a chunk at a time, and only as far
/// as the exit hook's helper thread gets before the deadline. Not reachable from the module.
#[pyclass(frozen, module = "arroyo_metrics_buffer._native")]
struct ExitCalls {
    /// Each drained buffer's backend, and whether it is called with keywords.
    backends: Vec<(Py<PyAny>, bool)>,
    /// Each call: the index of its backend, then what it emits.
    calls: Vec<(usize, Kind, Arc<Key>, Value)>,
    next: AtomicUsize,
    stopped: AtomicBool,
}

/// Calls per chunk: a fraction of a millisecond's work, so that stopping is prompt.
const CHUNK: usize = 256;

#[pymethods]
impl ExitCalls {
    fn __len__(&self) -> usize {
        self.calls.len()
    }

    /// The next calls, as `(backend, method name, args, kwargs or None)`; empty at the end, and
    /// once stopped. Counted as a call into Python in progress (it makes objects, which may run
    /// the garbage collector), so that the hook waits for it to return.
    fn next_chunk<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let chunk = PyList::empty(py);
        let _pass = gate::enter_for_exit();
        if self.stopped.load(SeqCst) {
            return Ok(chunk);
        }
        let start = self.next.fetch_add(CHUNK, SeqCst).min(self.calls.len());
        let end = (start + CHUNK).min(self.calls.len());
        let mut described: Option<(usize, Described<'py>)> = None;
        for (at, kind, key, value) in &self.calls[start..end] {
            let (metrics, keyword_args) = &self.backends[*at];
            let (_, shapes) = match &mut described {
                Some((was, shapes)) if was == at => (was, shapes),
                _ => {
                    let made = described.insert((*at, Described::new(py, *keyword_args)));
                    (&mut made.0, &mut made.1)
                }
            };
            let e = Emission {
                kind: *kind,
                key,
                value: *value,
                count: 1,
            };
            chunk.append(shapes.call(metrics.bind(py), &e)?)?;
        }
        Ok(chunk)
    }

    /// No more calls from now on.
    fn stop(&self) {
        self.stopped.store(true, SeqCst);
    }
}

/// Every live buffer's pending values, taken out; and how many buffers another thread was still
/// emitting (what that thread holds is not in them).
fn drain(py: Python<'_>) -> (ExitCalls, usize) {
    let mut backends = Vec::new();
    let mut calls = Vec::new();
    let mut busy = 0;
    for buffer in live_buffers() {
        let (window, emitting) = buffer.core.drain();
        busy += usize::from(emitting);
        let Some(metrics) = buffer.backend.get(py) else {
            continue;
        };
        let at = backends.len();
        backends.push((metrics.unbind(), buffer.backend.keyword_args));
        for e in window.emissions() {
            calls.push((at, e.kind, Arc::clone(e.key), e.value));
        }
    }
    let calls = ExitCalls {
        backends,
        calls,
        next: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
    };
    (calls, busy)
}

/// The exit hook; registered with `atexit` at import, not reachable as a module attribute.
#[pyfunction]
fn close(py: Python<'_>) {
    if !gate::begin_exit() {
        return; // ran already
    }
    let (budget, invalid) = budget();
    let start = Instant::now();
    let deadline = start + budget;
    let exit = EXIT
        .get(py)
        .expect("exit::init runs at module import")
        .bind(py);
    // Short GIL turns while the hook runs (see `_exit.quicken`); nothing it raises escapes.
    let previous = exit.call_method0(intern!(py, "quicken")).ok();
    let mut interrupted = None;
    let settled = wait_idle(py, start + budget / 2, &mut interrupted);
    let (calls, busy) = drain(py);
    let mut outcome = Outcome {
        pending: calls.calls.len(),
        busy,
        ..Outcome::default()
    };
    // The helper's last chunk, and the hook's last steps (its one log line, the switch interval
    // put back), must be done by the deadline: it stops a little before. Interrupted: no time.
    let stop_at = deadline - (budget / 10).min(Duration::from_millis(200));
    let left = match interrupted {
        None => stop_at.saturating_duration_since(Instant::now()),
        Some(_) => Duration::ZERO,
    };
    let emitted = Py::new(py, calls).and_then(|calls| {
        let result = exit.call_method1(intern!(py, "emit"), (&calls, left.as_secs_f64()));
        calls.get().stop();
        result?.extract::<(usize, usize, usize, Option<String>, Option<String>)>()
    });
    match emitted {
        Ok((started, emitted, raised, first_error, interrupted_now)) => {
            (outcome.started, outcome.emitted) = (started, emitted);
            (outcome.raised, outcome.first_error) = (raised, first_error);
            interrupted = interrupted.or(interrupted_now);
        }
        Err(e) => outcome.first_error = Some(report::describe(py, &e)),
    }
    // Interrupted: only a look at whether the other threads' calls have returned, no wait.
    let until = if interrupted.is_some() {
        Instant::now()
    } else {
        deadline
    };
    outcome.idle = settled && wait_idle(py, until, &mut interrupted);
    outcome.interrupted = interrupted;
    report(py, &outcome, budget, invalid.as_deref());
    if let Some(previous) = previous {
        let _ = exit.call_method1(intern!(py, "restore"), (previous,));
    }
}

/// Waits, in short steps without the GIL, until no call into Python is in progress on another
/// thread (see [`gate::wait_idle`]), or until `deadline`; whether it got there. Between the steps,
/// the signal handlers run: one that raises (Ctrl-C) ends the wait, and `interrupted` says what
/// it raised.
fn wait_idle(py: Python<'_>, deadline: Instant, interrupted: &mut Option<String>) -> bool {
    loop {
        let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
        if py.detach(|| gate::wait_idle(step)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if let Err(e) = py.check_signals() {
            *interrupted = Some(report::type_name(py, &e));
            return false;
        }
    }
}

/// The one line about the exit, if there is anything to say: a warning if a pending value was
/// lost, else information. Logged from this thread through
/// the application's logging, like any record; nothing that logging raises escapes (the process
/// is exiting: there is nothing left to keep safe).
fn report(py: Python<'_>, o: &Outcome, budget: Duration, invalid: Option<&str>) {
    let refused = gate::refused();
    let dropped = o.pending - o.started;
    let in_progress = o.started - o.emitted - o.raised;
    let mut parts = vec![format!(
        "at exit: {} of {} pending metric call(s) emitted",
        o.emitted, o.pending
    )];
    if o.raised > 0 {
        let error = o.first_error.as_deref().unwrap_or("?");
        parts.push(format!("{} raised (the first: {error})", o.raised));
    }
    // A signal whose handler raised (Ctrl-C: KeyboardInterrupt) ends the waits at once.
    let signal = o
        .interrupted
        .as_ref()
        .map(|raised| format!("a signal ended the wait (its handler raised {raised})"));
    if let (true, Some(signal)) = (in_progress > 0, &signal) {
        parts.push(format!("{in_progress} still in progress when {signal}"));
    } else if in_progress > 0 {
        parts.push(format!("{in_progress} still in progress at the deadline"));
    }
    if let (true, Some(signal)) = (dropped > 0, &signal) {
        parts.push(format!("{dropped} dropped: {signal}"));
    } else if dropped > 0 {
        parts.push(format!(
            "{dropped} dropped: not emitted within the {} s exit budget ({BUDGET_VARIABLE})",
            budget.as_secs_f64()
        ));
    }
    if o.busy > 0 {
        parts.push(format!(
            "{} buffer(s) were being emitted by another thread, and what it had not sent was \
             dropped",
            o.busy
        ));
    }
    if !o.idle {
        let when = match &signal {
            Some(signal) => format!("when {signal}"),
            None => "by the deadline".to_owned(),
        };
        parts.push(format!(
            "a call into Python from another thread (a metrics backend call, most likely) had \
             not returned {when}"
        ));
    }
    if refused > 0 {
        parts.push(format!(
            "{refused} call(s) from other threads after exit began were ignored"
        ));
    }
    if let Some(given) = invalid {
        parts.push(format!(
            "{BUDGET_VARIABLE}={given:?} is not a number of seconds, so the default {} s was used",
            DEFAULT_BUDGET.as_secs_f64()
        ));
    }
    let lost = o.raised > 0 || o.started < o.pending || in_progress > 0;
    let lost = lost || o.busy > 0 || !o.idle || invalid.is_some();
    let level = match (lost, o.emitted > 0 || refused > 0) {
        (true, _) => intern!(py, "warning"),
        (false, true) => intern!(py, "info"),
        (false, false) => return,
    };
    let _ = report::log(py, level, &parts.join("; "));
}

/// Registers the exit hook (at import). Everything lazy here is made now, not at fork time.
pub(crate) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let _ = registry();
    gate::init();
    let _ = EXIT.set(py, py.import("arroyo_metrics_buffer._exit")?.unbind());
    let hook = wrap_pyfunction!(close, m)?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
