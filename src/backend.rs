//! The metrics backend a buffer emits to, in a cell the garbage collector can clear.

use std::sync::{Mutex, PoisonError};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

/// The backend object and how to call it. The lock is held only to copy or take the reference
/// (no Python code runs under it), and only when emitting: never on the `incr_*` path.
pub(crate) struct Backend {
    metrics: Mutex<Option<Py<PyAny>>>,
    pub(crate) keyword_args: bool,
}

impl Backend {
    pub(crate) fn new(metrics: Py<PyAny>, keyword_args: bool) -> Self {
        Backend {
            metrics: Mutex::new(Some(metrics)),
            keyword_args,
        }
    }

    /// The backend, or `None` once the garbage collector cleared it.
    pub(crate) fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        metrics.as_ref().map(|m| m.bind(py).clone())
    }

    /// For `__traverse__`. A cell locked at this moment (by a thread copying the reference out)
    /// is skipped: not visiting a reference only makes the collector keep the object.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self.metrics.try_lock() {
            Ok(metrics) => visit.call(metrics.as_ref()),
            Err(_) => Ok(()),
        }
    }

    /// For `__clear__`: drops the reference after releasing the lock, since dropping it can run
    /// any Python code (a finalizer that uses the buffer).
    pub(crate) fn clear(&self) {
        let taken = self
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(taken);
    }
}
