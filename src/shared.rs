//! What a `MetricsBuffer` is, shared by its Python object and the exit hook's registry of live
//! buffers: the core and the backend, and the two ways an emit starts.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::backend::Backend;
use crate::core::{Add, Begin, Buffer};
use crate::errors::Error;
use crate::{emit, exit};

pub(crate) struct Shared {
    pub(crate) core: Buffer,
    pub(crate) backend: Backend,
}

impl Shared {
    /// A new buffer, known to the exit hook (which holds only a weak reference).
    pub(crate) fn new(core: Buffer, backend: Backend) -> Arc<Self> {
        let shared = Arc::new(Shared { core, backend });
        exit::register(&shared);
        shared
    }

    /// Applies `adds` with the throttle at clock reading `now`, and emits if this call won the
    /// flush (and emits may start: see [`exit::enter`]).
    pub(crate) fn record_at<S: AsRef<str>>(
        &self,
        py: Python<'_>,
        adds: &[Add<'_, S>],
        now: f64,
    ) -> PyResult<()> {
        let won = self.core.record_gated(adds, Some(now), exit::enter);
        match won.map_err(Error::from)? {
            Some((emit, _pass)) => emit::emit_all(py, emit, &self.backend),
            None => Ok(()),
        }
    }

    /// An explicit flush (when emits may start).
    pub(crate) fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let Some(_pass) = exit::enter() else {
            return Ok(());
        };
        match self.core.begin_flush() {
            Begin::Emit(emit) => emit::emit_all(py, emit, &self.backend),
            Begin::HandedOff | Begin::Reentrant => Ok(()),
        }
    }
}
