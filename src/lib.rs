//! `arroyo_metrics_buffer._native`: the module definition only.

mod args;
mod buffer;
mod callback;
mod clock;
pub mod core;
mod emit;
mod errors;

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyDict;

static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// Forget pyo3-log's cached Python loggers (after the application replaced its loggers).
#[pyfunction]
fn reset_logging() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
}

/// Registered with `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
fn _after_fork_in_child() {
    core::after_fork_in_child();
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Cache the logger objects but not their levels, so that logging configured after this import
    // (the usual order at start-up) is honoured.
    let logger =
        pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?.filter(log::LevelFilter::Info);
    if let Ok(handle) = logger.install() {
        let _ = LOG_RESET.set(handle);
    }
    clock::init(py)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<buffer::MetricsBufferPy>()?;
    m.add_class::<callback::DeliveryCallbackPy>()?;
    m.add_function(wrap_pyfunction!(reset_logging, m)?)?;
    let after_fork = wrap_pyfunction!(_after_fork_in_child, m)?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", &after_fork)?;
    py.import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    m.add_function(after_fork)?;
    Ok(())
}
