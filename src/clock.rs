//! `time.time()` as arroyo's own buffer would see it, without the Python call when it can.

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
    let _ = CLOCK.set(
        py,
        Clock {
            namespace: module.dict().unbind(),
            module: module.unbind(),
            builtin,
        },
    );
    Ok(())
}

/// `time.time()`, looked up at call time so that `mock.patch("time.time")`, freezegun and
/// time-machine see the same clock as arroyo's own buffer. While `time.time` is still the builtin
/// with its own C function, the same clock (CLOCK_REALTIME) is read without the Python call,
/// converted to seconds exactly as CPython's `_PyTime_AsSecondsDouble` does, so the values are
/// identical.
pub(crate) fn now(py: Python<'_>) -> PyResult<f64> {
    let clock = CLOCK.get(py).expect("clock::init runs at module import");
    let time = match clock.namespace.bind(py).get_item(intern!(py, "time"))? {
        Some(time) => time,
        None => clock.module.bind(py).getattr(intern!(py, "time"))?,
    };
    if clock
        .builtin
        .as_ref()
        .is_some_and(|(builtin, function)| time.is(builtin) && c_function(&time) == *function)
    {
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            let (secs, nanos) = (since.as_secs() as i64, i64::from(since.subsec_nanos()));
            return Ok(if nanos == 0 {
                secs as f64
            } else {
                (secs * 1_000_000_000 + nanos) as f64 / 1e9
            });
        }
    }
    time.call0()?.extract::<f64>()
}
