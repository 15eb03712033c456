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
    builtin: Option<(Py<PyAny>, usize)>,
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
    use std::os::raw::c_int;
    use std::ptr;
    use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    /// The builtin (kept alive by `Clock`).
    static BUILTIN: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());
    static IN_PLACE: AtomicBool = AtomicBool::new(false);

    // `PyDict_WatchEvent`, a C enum passed as an int, in CPython's order (3.12-3.14).
    const ADDED: c_int = 0;
    const MODIFIED: c_int = 1;
    const DELETED: c_int = 2;

    type Callback = unsafe extern "C" fn(
        c_int,
        *mut ffi::PyObject,
        *mut ffi::PyObject,
        *mut ffi::PyObject,
    ) -> c_int;

    unsafe extern "C" {
        // CPython's public API since 3.12, which pyo3-ffi leaves out.
        fn PyDict_AddWatcher(callback: Callback) -> c_int;
    }

    /// `key` is the str "time". Reads only: a watcher must not change anything.
    unsafe fn is_time(key: *mut ffi::PyObject) -> bool {
        !key.is_null()
            && ffi::PyUnicode_Check(key) != 0
            && ffi::PyUnicode_CompareWithASCIIString(key, c"time".as_ptr()) == 0
    }

    /// Runs inside every change to the namespace: no failure, no call into Python.
    unsafe extern "C" fn changed(
        event: c_int,
        _dict: *mut ffi::PyObject,
        key: *mut ffi::PyObject,
        new_value: *mut ffi::PyObject,
    ) -> c_int {
        let in_place = match event {
            ADDED | MODIFIED if is_time(key) => new_value == BUILTIN.load(Ordering::SeqCst),
            DELETED if is_time(key) => false,
            ADDED | MODIFIED | DELETED => return 0, // another name
            _ => false,                             // cloned, cleared or deallocated
        };
        IN_PLACE.store(in_place, Ordering::SeqCst);
        0
    }

    /// Watches `namespace`, whose `time` is `builtin` now. If CPython has no watcher left,
    /// `in_place()` stays false and `now()` looks `time.time` up on every call.
    pub(super) fn start(namespace: &Bound<'_, PyDict>, builtin: &Bound<'_, PyAny>) {
        BUILTIN.store(builtin.as_ptr(), Ordering::SeqCst);
        // SAFETY: called with the GIL held (module import), on a live dict; an error is cleared
        // here, so none is left pending.
        unsafe {
            let id = PyDict_AddWatcher(changed);
            if id < 0 || ffi::PyDict_Watch(id, namespace.as_ptr()) < 0 {
                ffi::PyErr_Clear();
                return;
            }
        }
        IN_PLACE.store(true, Ordering::SeqCst);
    }

    pub(super) fn in_place() -> bool {
        IN_PLACE.load(Ordering::SeqCst)
    }
}

/// Before 3.12 there are no dict watchers: `now()` looks `time.time` up on every call.
#[cfg(not(Py_3_12))]
mod watch {
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    pub(super) fn start(_namespace: &Bound<'_, PyDict>, _builtin: &Bound<'_, PyAny>) {}

    pub(super) fn in_place() -> bool {
        false
    }
}

/// CLOCK_REALTIME in seconds, read as CPython's `time.time()` reads it (`clock_gettime`) and
/// converted exactly as its `_PyTime_AsSecondsDouble` does.
fn realtime() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // `time_t` and `c_long` are not i64 on every target
    let (secs, nanos) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
    Some(if nanos == 0 {
        secs as f64
    } else {
        (secs * 1_000_000_000 + nanos) as f64 / 1e9
    })
}

/// `time.time()` as it is at call time, so that `mock.patch("time.time")`, freezegun and
/// time-machine set the clock for this buffer as for arroyo's own. While `time.time` is still the
/// builtin with its own C function, the same clock (CLOCK_REALTIME) is read without the Python
/// call (see `realtime`). On 3.12+ the name is looked up only while the dict watcher says it is
/// not the builtin; on 3.11, on every call.
pub(crate) fn now(py: Python<'_>) -> PyResult<f64> {
    let clock = CLOCK.get(py).expect("clock::init runs at module import");
    let looked_up;
    let time = match &clock.builtin {
        // The name is known to be the builtin: only time-machine's swap inside it is left.
        Some((builtin, _)) if watch::in_place() => builtin.bind(py),
        _ => {
            looked_up = match clock.namespace.bind(py).get_item(intern!(py, "time"))? {
                Some(time) => time,
                None => clock.module.bind(py).getattr(intern!(py, "time"))?,
            };
            &looked_up
        }
    };
    if let Some((builtin, function)) = &clock.builtin {
        if time.is(builtin) && c_function(time) == *function {
            if let Some(now) = realtime() {
                return Ok(now);
            }
        }
    }
    // A replacement (mock.patch, freezegun) is Python code: not on another thread once the
    // interpreter exits (see `gate`), where the real clock does.
    let Some(_pass) = gate::enter() else {
        return Ok(realtime().unwrap_or_default());
    };
    let now = ffi::call(time, [])?;
    match now.cast::<PyFloat>() {
        Ok(now) => Ok(now.value()),
        Err(_) => ffi::float_of(&now),
    }
}
