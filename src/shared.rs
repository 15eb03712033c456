//! What a `MetricsBuffer` is, shared by its Python object, its delivery callbacks and the exit
//! hook's registry of live buffers: the core and the backend, and the two ways an emit starts.

use pyo3::prelude::*;

use crate::backend::Backend;
use crate::errors::Error;
use crate::locked::Core;
use crate::{clock, emit, gate};
use metrics_buffer::{Add, Begin};

pub(crate) struct Shared {
    pub(crate) core: Core,
    pub(crate) backend: Backend,
}

impl Shared {
    /// Whether a reading that only feeds the throttle may come from the coarse clock (see
    /// [`clock::now`]): when the throttle is long enough for a timer tick not to matter.
    #[inline]
    fn coarse_clock(&self) -> bool {
        self.core.frequency() >= clock::COARSE_FROM
    }
}

impl Shared {
    /// Applies `adds` with the throttle at the clock's reading now (see [`Shared::coarse_clock`]),
    /// and emits if this call won the flush. A clock that raises (a test's replacement of
    /// `time.time`): the values are kept and the error raised, as arroyo, which adds a value
    /// before it reads the clock, does.
    #[inline(always)]
    pub(crate) fn record<S: AsRef<[u8]>>(
        &self,
        py: Python<'_>,
        adds: &[Add<'_, S>],
    ) -> PyResult<()> {
        let now = clock::now(py, self.coarse_clock());
        self.record_at(py, adds, now.as_ref().ok().copied())?;
        now.map(drop)
    }

    /// Applies `adds` with the throttle at clock reading `now` (none: no throttle), and emits if
    /// this call won the flush (and calls into Python may start: see [`gate::enter`]).
    pub(crate) fn record_at<S: AsRef<[u8]>>(
        &self,
        py: Python<'_>,
        adds: &[Add<'_, S>],
        now: Option<f64>,
    ) -> PyResult<()> {
        let won = self.core.record_gated(adds, now, gate::enter);
        match won.map_err(Error::from)? {
            Some((emit, _pass)) => emit::emit_all(py, emit, &self.core, &self.backend),
            None => Ok(()),
        }
    }

    /// An explicit flush (when calls into Python may start).
    pub(crate) fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let Some(_pass) = gate::enter() else {
            return Ok(());
        };
        match self.core.begin_flush() {
            Begin::Emit(emit) => emit::emit_all(py, emit, &self.core, &self.backend),
            Begin::HandedOff | Begin::Reentrant => Ok(()),
        }
    }
}
