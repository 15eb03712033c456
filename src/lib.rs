//! `arroyo_metrics_buffer._native`: the module definition only.

mod backend;
mod buffer;
mod callback;
mod clock;
mod convert;
mod emit;
mod errors;
mod exit;
mod ffi;
mod floor;
mod gate;
mod locked;
mod names;
mod report;
mod shared;

use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;

/// Kept so that code calling it goes on working: logging records are made by looking the
/// `arroyo_metrics_buffer` logger up each time, so nothing is cached to forget.
#[pyfunction]
fn reset_logging() {}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Everything lazy is made here, at import: a lazy initialisation in progress in another
    // thread when the process forks would never finish in the child.
    clock::init(py)?;
    convert::init(py)?;
    buffer::init(py)?;
    emit::init(py)?;
    report::init(py)?;
    metrics_buffer::prepare();
    metrics_buffer::register_at_fork()
        .map_err(|e| PyImportError::new_err(format!("pthread_atfork failed: {e}")))?;
    exit::init(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<buffer::MetricsBufferPy>()?;
    m.add_class::<callback::DeliveryCallbackPy>()?;
    m.add_function(wrap_pyfunction!(reset_logging, m)?)?;
    Ok(())
}
