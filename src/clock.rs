//! `time.time()` as arroyo's own buffer would see it, without the Python call when it can.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict};

/// The `time` module and its own `time.time` builtin, captured when this module is imported.
struct Clock {
    module: Py<PyModule>,
    /// The module's `__dict__`, where `mock.patch` and freezegun put their clocks.
    namespace: Py<PyDict>,
    /// The builtin and its C function; `None` if `time.time` was already replaced at import
    /// (then it is always called).
    builtin: Option<(Py<PyAny>, usize)>,
    /// Whether CPython tells us of every change to `namespace` (3.12+, see `watch`).
    watched: bool,
    /// `watch::CHANGES` when `time.time` was last found to be the builtin (`u64::MAX`: never).
    verified: AtomicU64,
}

static CLOCK: PyOnceLock<Clock> = PyOnceLock::new();

/// The C function behind a builtin function object. time-machine swaps this pointer inside the
/// `time.time` builtin itself instead of replacing the object.
fn c_function(builtin: &Bound<'_, PyAny>) -> usize {
    // SAFETY: only called on objects that are `PyCFunction` instances (checked at import, and by
    // identity with that object afterwards); their method table outlives them.
    unsafe {
        let function = builtin.as_ptr() as *mut pyo3::ffi::PyCFunctionObject;
        (*(*function).m_ml).ml_meth.PyCFunction as usize
    }
}

/// Captures `time.time` (at module import).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let module = py.import("time")?;
    let time = module.getattr("time")?;
    let genuine = time.is_instance_of::<PyCFunction>()
        && time.getattr("__self__").is_ok_and(|m| m.is(&module))
        && time
            .getattr("__name__")
            .is_ok_and(|n| n.eq("time").unwrap_or(false));
    let builtin = genuine.then(|| {
        let function = c_function(&time);
        (time.unbind(), function)
    });
    let namespace = module.dict();
    let _ = CLOCK.set(
        py,
        Clock {
            watched: builtin.is_some() && watch::namespace(&namespace),
            namespace: namespace.unbind(),
            module: module.unbind(),
            builtin,
            verified: AtomicU64::new(u64::MAX),
        },
    );
    Ok(())
}

/// Changes to the `time` module's namespace, counted by a CPython dict watcher (3.12+), so that
/// `now()` looks `time.time` up again only after something replaced or restored it.
#[cfg(Py_3_12)]
mod watch {
    use std::os::raw::c_int;
    use std::sync::atomic::{AtomicU64, Ordering};

    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    pub(super) static CHANGES: AtomicU64 = AtomicU64::new(0);

    type Callback = unsafe extern "C" fn(
        c_int,
        *mut ffi::PyObject,
        *mut ffi::PyObject,
        *mut ffi::PyObject,
    ) -> c_int;

    extern "C" {
        // CPython's public API since 3.12; pyo3-ffi leaves it out (`PyDict_WatchEvent` is a C enum,
        // passed as an int).
        fn PyDict_AddWatcher(callback: Callback) -> c_int;
    }

    /// Runs inside every change to the watched dict: it must not fail or call into Python.
    unsafe extern "C" fn changed(
        _event: c_int,
        _dict: *mut ffi::PyObject,
        _key: *mut ffi::PyObject,
        _new_value: *mut ffi::PyObject,
    ) -> c_int {
        CHANGES.fetch_add(1, Ordering::SeqCst);
        0
    }

    /// Watches `namespace`; false if CPython has no dict watcher left (then `now()` looks
    /// `time.time` up on every call, as before 3.12).
    pub(super) fn namespace(namespace: &Bound<'_, PyDict>) -> bool {
        // SAFETY: called with the GIL held (module import), on a live dict; an error is cleared
        // here, so none is left pending.
        unsafe {
            let id = PyDict_AddWatcher(changed);
            if id < 0 || ffi::PyDict_Watch(id, namespace.as_ptr()) < 0 {
                ffi::PyErr_Clear();
                return false;
            }
        }
        true
    }
}

#[cfg(not(Py_3_12))]
mod watch {
    use std::sync::atomic::AtomicU64;

    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    pub(super) static CHANGES: AtomicU64 = AtomicU64::new(0);

    pub(super) fn namespace(_namespace: &Bound<'_, PyDict>) -> bool {
        false
    }
}

/// CLOCK_REALTIME in seconds, converted exactly as CPython's `_PyTime_AsSecondsDouble` does.
fn realtime() -> Option<f64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let (secs, nanos) = (since.as_secs() as i64, i64::from(since.subsec_nanos()));
    Some(if nanos == 0 {
        secs as f64
    } else {
        (secs * 1_000_000_000 + nanos) as f64 / 1e9
    })
}

/// `time.time()` as it is at call time, so that `mock.patch("time.time")`, freezegun and
/// time-machine set the clock for this buffer as for arroyo's own. While `time.time` is still the
/// builtin with its own C function, the same clock (CLOCK_REALTIME) is read without the Python
/// call (see `realtime`). On 3.12+ the `time` namespace is looked up only after it changed (a dict
/// watcher counts changes); on 3.11, on every call.
pub(crate) fn now(py: Python<'_>) -> PyResult<f64> {
    let clock = CLOCK.get(py).expect("clock::init runs at module import");
    // Read before the lookup: a change after it makes the fast path below miss next time.
    let changes = watch::CHANGES.load(Ordering::SeqCst);
    if let Some((builtin, function)) = &clock.builtin {
        // The namespace has not changed since `time.time` was the builtin: only time-machine's
        // swap of the C function inside it is left to check.
        if clock.watched
            && clock.verified.load(Ordering::SeqCst) == changes
            && c_function(builtin.bind(py)) == *function
        {
            if let Some(now) = realtime() {
                return Ok(now);
            }
        }
    }
    let time = match clock.namespace.bind(py).get_item(intern!(py, "time"))? {
        Some(time) => time,
        None => clock.module.bind(py).getattr(intern!(py, "time"))?,
    };
    if let Some((builtin, function)) = &clock.builtin {
        if time.is(builtin) && c_function(&time) == *function {
            if clock.watched {
                clock.verified.store(changes, Ordering::SeqCst);
            }
            if let Some(now) = realtime() {
                return Ok(now);
            }
        }
    }
    time.call0()?.extract::<f64>()
}
