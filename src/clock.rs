//! `time.time()` as arroyo's own buffer would see it, without the Python call when it can.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict, PyFloat};

use crate::{ffi, gate};

/// The `time` module and its own `time.time` builtin, captured when this module is imported.
struct Clock {
    module: Py<PyModule>,
    /// The module's `__dict__`, where `mock.patch` and freezegun put their clocks.
    namespace: Py<PyDict>,
    /// The builtin and its C function; `None` if `time.time` was already replaced at import
    /// (then it is always called).
    builtin: Option<(Py<PyCFunction>, usize)>,
}

static CLOCK: PyOnceLock<Clock> = PyOnceLock::new();

/// Captures `time.time` (at module import).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let module = py.import("time")?;
    let time = module.getattr("time")?;
    let genuine = time.getattr("__self__").is_ok_and(|m| m.is(&module))
        && time
            .getattr("__name__")
            .is_ok_and(|n| n.eq("time").unwrap_or(false));
    let builtin = match time.cast_into::<PyCFunction>() {
        Ok(time) if genuine => {
            let function = ffi::c_function(&time);
            Some((time.unbind(), function))
        }
        _ => None,
    };
    let namespace = module.dict();
    if let Some((builtin, _)) = &builtin {
        watch::start(&namespace, builtin.bind(py));
    }
    let _ = CLOCK.set(
        py,
        Clock {
            namespace: namespace.unbind(),
            module: module.unbind(),
            builtin,
        },
    );
    Ok(())
}

/// Whether the `time` module's `time` is still its builtin, as CPython's dict watcher (3.12+)
/// tells on every change to that namespace, so that `now()` need not look it up.
///
/// CPython calls a watcher *before* the change takes place, so the answer is decided from the
/// change itself (the name and the new value), never by looking the name up: a lookup made
/// between the call and the change would see the old value.
#[cfg(Py_3_12)]
mod watch {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use pyo3::prelude::*;
    use pyo3::types::{PyCFunction, PyDict};

    use crate::ffi::dict_watch::{self, Change};

    /// The builtin's address (kept alive by `Clock`).
    static BUILTIN: AtomicUsize = AtomicUsize::new(0);
    static IN_PLACE: AtomicBool = AtomicBool::new(false);

    fn changed(change: Change<'_>) {
        let in_place = match change {
            Change::Set { key, value } if key.is(c"time") => {
                value == BUILTIN.load(Ordering::SeqCst)
            }
            Change::Deleted { key } if key.is(c"time") => false,
            Change::Set { .. } | Change::Deleted { .. } => return, // another name
            Change::Whole => false,
        };
        IN_PLACE.store(in_place, Ordering::SeqCst);
    }

    /// Watches `namespace`, whose `time` is `builtin` now. If it cannot, `in_place()` stays false
    /// and `now()` looks `time.time` up on every call.
    pub(super) fn start(namespace: &Bound<'_, PyDict>, builtin: &Bound<'_, PyCFunction>) {
        BUILTIN.store(builtin.as_ptr() as usize, Ordering::SeqCst);
        if dict_watch::watch(namespace, changed) {
            IN_PLACE.store(true, Ordering::SeqCst);
        }
    }

    pub(super) fn in_place(_namespace: &Bound<'_, PyDict>) -> bool {
        IN_PLACE.load(Ordering::SeqCst)
    }

    /// The watcher knows already.
    pub(super) fn seen_in_place(_namespace: &Bound<'_, PyDict>) {}
}

/// Before 3.12 there are no dict watchers, but every dict has a version tag that every change
/// to it changes: `time.time` is looked up again only when the namespace's tag moved since it was
/// last seen to be the builtin.
#[cfg(not(Py_3_12))]
mod watch {
    use std::sync::atomic::{AtomicU64, Ordering};

    use pyo3::prelude::*;
    use pyo3::types::{PyCFunction, PyDict};

    use crate::ffi;

    /// The namespace's tag when `time` was last seen to be the builtin (0: never; tags start at 1).
    static SEEN: AtomicU64 = AtomicU64::new(0);

    pub(super) fn start(namespace: &Bound<'_, PyDict>, _builtin: &Bound<'_, PyCFunction>) {
        seen_in_place(namespace);
    }

    pub(super) fn in_place(namespace: &Bound<'_, PyDict>) -> bool {
        ffi::dict_version(namespace) == SEEN.load(Ordering::Relaxed)
    }

    /// `time` was just looked up and found to be the builtin.
    pub(super) fn seen_in_place(namespace: &Bound<'_, PyDict>) {
        SEEN.store(ffi::dict_version(namespace), Ordering::Relaxed);
    }
}

/// CLOCK_REALTIME in seconds, converted exactly as CPython's `_PyTime_AsSecondsDouble` does; or,
/// with `coarse`, its coarse variant (see [`ffi::realtime`]), for a throttle only, where a
/// multiplication does instead of the division's exact rounding.
#[inline]
pub(crate) fn realtime(coarse: bool) -> Option<f64> {
    let (secs, nanos) = ffi::realtime(coarse)?;
    Some(if coarse {
        secs as f64 + nanos as f64 * 1e-9
    } else if nanos == 0 {
        secs as f64
    } else {
        (secs * 1_000_000_000 + nanos) as f64 / 1e9
    })
}

/// The throttles that may read the coarse clock: those of at least this many seconds, for which
/// a flush a timer tick (a few milliseconds) late is the same flush.
pub(crate) const COARSE_FROM: f64 = 0.25;

/// `time.time()` as it is at call time, so that `mock.patch("time.time")`, freezegun and
/// time-machine set the clock for this buffer as for arroyo's own. While `time.time` is still the
/// builtin with its own C function, the same clock (CLOCK_REALTIME) is read without the Python
/// call (see `realtime`); with `coarse`, for a reading that only feeds a throttle of at least
/// [`COARSE_FROM`], its coarse variant. The name is looked up only when the `time` namespace
/// changed since it was last seen to be the builtin (a dict watcher on 3.12+, the dict's version
/// tag on 3.11).
#[inline(always)]
pub(crate) fn now(py: Python<'_>, coarse: bool) -> PyResult<f64> {
    let clock = CLOCK.get(py).expect("clock::init runs at module import");
    // The name is known to be the builtin: only time-machine's swap inside it is left. (Inlined,
    // with the rest out of line: the usual reading stays in registers.)
    if let Some((builtin, function)) = &clock.builtin {
        if watch::in_place(clock.namespace.bind(py))
            && ffi::c_function(builtin.bind(py)) == *function
        {
            if let Some(now) = realtime(coarse) {
                return Ok(now);
            }
        }
    }
    looked_up(py, clock, coarse)
}

/// [`now`] when `time.time` must be looked up, and called if it is not the builtin.
#[cold]
#[inline(never)]
fn looked_up(py: Python<'_>, clock: &Clock, coarse: bool) -> PyResult<f64> {
    let namespace = clock.namespace.bind(py);
    let time = match namespace.get_item(intern!(py, "time"))? {
        Some(time) => time,
        None => clock.module.bind(py).getattr(intern!(py, "time"))?,
    };
    if let Some((builtin, function)) = &clock.builtin {
        let builtin = builtin.bind(py);
        if time.is(builtin) {
            watch::seen_in_place(namespace);
            if ffi::c_function(builtin) == *function {
                if let Some(now) = realtime(coarse) {
                    return Ok(now);
                }
            }
        }
    }
    // A replacement (mock.patch, freezegun) is Python code: not on another thread once the
    // interpreter exits (see `gate`), where the real clock does.
    let Some(_pass) = gate::enter() else {
        return Ok(realtime(false).unwrap_or_default());
    };
    let now = ffi::call(&time, [])?;
    match now.cast::<PyFloat>() {
        Ok(now) => Ok(now.value()),
        Err(_) => ffi::float_of(&now),
    }
}
