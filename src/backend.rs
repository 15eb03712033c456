//! The metrics backend a buffer emits to, in a cell the garbage collector can clear.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;

/// The backend object and how to call it. The cell is lock-free (so no fork can leave it locked
/// in a child), and read only when emitting: never on the `incr_*` path.
pub(crate) struct Backend {
    metrics: ArcSwapOption<Py<PyAny>>,
    pub(crate) keyword_args: bool,
}

impl Backend {
    pub(crate) fn new(metrics: Py<PyAny>, keyword_args: bool) -> Self {
        Backend {
            metrics: ArcSwapOption::new(Some(Arc::new(metrics))),
            keyword_args,
        }
    }

    /// The backend, or `None` once the garbage collector cleared it.
    pub(crate) fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        let metrics = self.metrics.load();
        metrics.as_ref().map(|m| m.bind(py).clone())
    }

    /// For `__traverse__`.
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let metrics = self.metrics.load();
        visit.call(metrics.as_deref())
    }

    /// For `__clear__`. The reference is dropped here, or by an emit still using it when that
    /// ends; either way with the GIL held, as both run in Python calls.
    pub(crate) fn clear(&self) {
        drop(self.metrics.swap(None));
    }
}
