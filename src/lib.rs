//! `arroyo_metrics_buffer._native`: the module definition only.

mod args;
mod backend;
mod buffer;
mod callback;
mod clock;
pub mod core;
mod emit;
mod errors;
mod exit;
mod failure;
mod shared;

use std::sync::OnceLock;

use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;

static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// Forget pyo3-log's cached Python loggers (after the application replaced its loggers).
#[pyfunction]
fn reset_logging() {
    if let Some(handle) = LOG_RESET.get() {
        handle.reset();
    }
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
    // Everything lazy is made here, at import: a lazy initialisation in progress in another
    // thread when the process forks would never finish in the child.
    clock::init(py)?;
    args::init(py)?;
    emit::init(py)?;
    core::prepare();
    core::register_at_fork()
        .map_err(|e| PyImportError::new_err(format!("pthread_atfork failed: {e}")))?;
    exit::init(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<buffer::MetricsBufferPy>()?;
    m.add_class::<callback::DeliveryCallbackPy>()?;
    m.add_function(wrap_pyfunction!(reset_logging, m)?)?;
    Ok(())
}
