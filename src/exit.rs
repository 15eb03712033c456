//! Interpreter exit. On CPython < 3.14 a thread that wants the GIL back during finalization is
//! killed with `pthread_exit`, and the forced unwinding aborts the process if native frames are on
//! its stack, as they are while one of our emits calls the backend. So, from the `atexit` hook
//! (which runs before finalization): (a) no thread but the exiting one starts an emit any more
//! (values recorded meanwhile stay pending); (b) emits in progress on other threads get up to
//! [`WAIT`] to finish, with the GIL released; (c) every live buffer is flushed once from the
//! exiting thread; after that nothing is emitted any more.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::core::ForkLocal;
use crate::shared::Shared;

/// How long the exit hook waits for emits in progress on other threads.
const WAIT: Duration = Duration::from_secs(2);

const OPEN: u8 = 0;
const CLOSING: u8 = 1;
const CLOSED: u8 = 2;

/// Whether emits may start, and how many are in progress. A forked child starts with a new one.
#[derive(Default)]
struct Gate {
    state: AtomicU8,
    in_flight: AtomicUsize,
}

static GATE: LazyLock<ForkLocal<Gate>> = LazyLock::new(|| ForkLocal::new(Gate::default()));

thread_local! {
    /// Set on the thread running the exit hook.
    static EXITING: Cell<bool> = const { Cell::new(false) };
}

fn gate() -> &'static Gate {
    GATE.get(|_| Gate::default())
}

/// Leave to start one emit (and whatever flushes are handed to it): held until the emit is done,
/// logging included.
pub(crate) struct Pass(&'static Gate);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

/// A pass if emits may start on this thread: always before exit; during the exit hook only on
/// the exiting thread; never after it. Counted in flight first, then checked, so that the exit
/// hook, which closes first and then counts, never misses one.
pub(crate) fn enter() -> Option<Pass> {
    let gate = gate();
    gate.in_flight.fetch_add(1, SeqCst);
    let pass = Pass(gate);
    match gate.state.load(SeqCst) {
        OPEN => Some(pass),
        CLOSING if EXITING.with(Cell::get) => Some(pass),
        _ => None,
    }
}

/// Whether an emit on this thread should stop short: the exit hook has started on another thread
/// (a handed-off flush is then left pending, and a failure is not logged, so that no native frame
/// stays on this thread's stack for longer than it must).
pub(crate) fn stopping() -> bool {
    gate().state.load(SeqCst) != OPEN && !EXITING.with(Cell::get)
}

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

/// The exit hook; registered with `atexit` at import, not reachable as a module attribute.
#[pyfunction]
fn close(py: Python<'_>) -> PyResult<()> {
    let gate = gate();
    EXITING.with(|exiting| exiting.set(true));
    if gate
        .state
        .compare_exchange(OPEN, CLOSING, SeqCst, SeqCst)
        .is_err()
    {
        return Ok(()); // run already
    }
    py.detach(|| {
        let deadline = Instant::now() + WAIT;
        while gate.in_flight.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let mut raised = None;
    for buffer in live_buffers() {
        if let Err(e) = buffer.flush(py) {
            raised.get_or_insert(e); // KeyboardInterrupt or SystemExit: still flush the others
        }
    }
    gate.state.store(CLOSED, SeqCst);
    raised.map_or(Ok(()), Err)
}

/// Registers the exit hook (at import). Everything lazy here is made now, not at fork time.
pub(crate) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = (gate(), registry());
    let hook = wrap_pyfunction!(close, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
