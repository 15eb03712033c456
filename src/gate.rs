//! The gate every call from native code into Python goes through, and how interpreter exit closes
//! it.
//!
//! On CPython < 3.14 a thread that wants the GIL back during interpreter finalization is ended with
//! `pthread_exit`, and the forced unwinding aborts the process if native frames are on its stack,
//! as they are while our code calls the backend, logging or a replaced `time.time`. So from the
//! moment the exit hook starts ([`begin_exit`]), only the exiting thread may go on: on every other
//! thread each of our methods returns at once ([`admits`]), an emit in progress stops before its
//! next backend call ([`stopping`]), and no new call into Python starts ([`enter`]). The exit hook
//! then waits, with a deadline, until the calls into Python already in progress have returned
//! ([`wait_idle`]), so that none is left for finalization to cut short.

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pyo3::PyResult;
use pyo3::exceptions::PyRuntimeError;

use metrics_buffer::ForkLocal;

const OPEN: u8 = 0;
const EXITING: u8 = 1;

/// Whether the interpreter is exiting, and how many calls into Python are in progress. A forked
/// child starts with a new, open one.
#[derive(Default)]
struct Gate {
    state: AtomicU8,
    in_flight: AtomicUsize,
    /// Calls refused on other threads since exit began (each a value not recorded).
    refused: AtomicU64,
}

static GATE: LazyLock<ForkLocal<Gate>> = LazyLock::new(|| ForkLocal::new(Gate::default()));

thread_local! {
    /// Set on the thread that runs the exit hook: the one that finalizes the interpreter, which
    /// finalization never ends, so native frames on its stack are safe.
    static EXIT_THREAD: Cell<bool> = const { Cell::new(false) };
    /// Set when [`python`] refused a call on this thread; read (and cleared) by [`finish`].
    static REFUSED: Cell<bool> = const { Cell::new(false) };
}

fn gate() -> &'static Gate {
    GATE.get(|_| Gate::default())
}

/// Makes the gate now, at module import, not lazily in a thread that a fork could interrupt.
pub(crate) fn init() {
    let _ = gate();
}

/// Whether our methods may do their work on this thread: always before exit; after it began,
/// only on the exiting thread. A refused call is counted (see [`refused`]).
#[inline]
pub(crate) fn admits() -> bool {
    let gate = gate();
    if gate.state.load(SeqCst) == OPEN || EXIT_THREAD.with(Cell::get) {
        return true;
    }
    gate.refused.fetch_add(1, SeqCst);
    false
}

/// Whether an emit on this thread should stop before its next backend call (exit began on
/// another thread).
pub(crate) fn stopping() -> bool {
    gate().state.load(SeqCst) != OPEN && !EXIT_THREAD.with(Cell::get)
}

/// Leave for calls into Python (a window's backend calls and their logging, one replaced
/// `time.time`, one conversion that runs Python code). Held until they are done.
pub(crate) struct Pass(&'static Gate);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

/// A pass if calls into Python may start on this thread (as [`admits`]). Counted in flight first,
/// then checked, so that the exit hook, which closes first and then counts, never misses one.
pub(crate) fn enter() -> Option<Pass> {
    let gate = gate();
    gate.in_flight.fetch_add(1, SeqCst);
    let pass = Pass(gate);
    (gate.state.load(SeqCst) == OPEN || EXIT_THREAD.with(Cell::get)).then_some(pass)
}

/// A pass for the exit hook's helper thread, which is not the exiting thread but works for it
/// until the hook stops it (see `exit`): counted, so that the hook waits for it to be done.
pub(crate) fn enter_for_exit() -> Pass {
    let gate = gate();
    gate.in_flight.fetch_add(1, SeqCst);
    Pass(gate)
}

/// Runs `call`, which calls into Python (a conversion that runs Python code, say), under a
/// [`Pass`]. When the pass is refused, the error returned is only a marker (never raised: it is
/// not even made into a Python object), and [`finish`] makes the whole method a no-op, as if
/// [`admits`] had refused it at its start.
pub(crate) fn python<T>(call: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match enter() {
        Some(_pass) => call(),
        None => {
            REFUSED.with(|refused| refused.set(true));
            gate().refused.fetch_add(1, SeqCst);
            Err(PyRuntimeError::new_err(
                "refused: the interpreter is exiting",
            ))
        }
    }
}

/// A method's result, `Ok(())` if [`python`] refused a call in it. A refusal always ends the
/// method with an error (the marker, or an error made with it), so only an error is checked.
#[inline]
pub(crate) fn finish(result: PyResult<()>) -> PyResult<()> {
    match result {
        Err(_) if REFUSED.with(|refused| refused.replace(false)) => Ok(()),
        other => other,
    }
}

/// Starts the exit on this thread. `false` if it had started already (the hook runs once).
pub(crate) fn begin_exit() -> bool {
    EXIT_THREAD.with(|exiting| exiting.set(true));
    gate()
        .state
        .compare_exchange(OPEN, EXITING, SeqCst, SeqCst)
        .is_ok()
}

/// Waits (without the GIL: the caller detaches) until no call into Python is in progress on
/// another thread, or until `deadline`. Whether it got there.
pub(crate) fn wait_idle(deadline: Instant) -> bool {
    let gate = gate();
    loop {
        if gate.in_flight.load(SeqCst) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// How many calls other threads made after exit began (each refused, its value not recorded).
pub(crate) fn refused() -> u64 {
    gate().refused.load(SeqCst)
}
