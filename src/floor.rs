//! What the bench measures each recording call against: methods with the same signatures as
//! `MetricsBuffer.incr_counter` / `incr_timing` and `DeliveryCallback.report`, that do nothing; and
//! `report` with the one clock read a latency sample needs.
//! Reached as `MetricsBuffer._floor()`, for `bench` only.

use pyo3::prelude::*;
use pyo3::types::PyFloat;

use crate::clock;

/// No-op twins of the recording methods.
#[pyclass(name = "Floor", module = "arroyo_metrics_buffer._native", frozen)]
pub struct FloorPy;

#[pymethods]
impl FloorPy {
    #[pyo3(signature = (metric, delta, tags=None))]
    fn incr_counter(
        &self,
        metric: &Bound<'_, PyAny>,
        delta: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (metric, delta, tags);
        Ok(())
    }

    #[pyo3(signature = (metric, duration, tags=None))]
    fn incr_timing(
        &self,
        metric: &Bound<'_, PyAny>,
        duration: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (metric, duration, tags);
        Ok(())
    }

    #[pyo3(signature = (error, _message, time_of_produce=None))]
    fn report(
        &self,
        error: &Bound<'_, PyAny>,
        _message: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = (error, time_of_produce);
        Ok(())
    }

    /// `report`, and the one thing any callback that records arroyo's latency sample must do:
    /// read the clock `time.time()` reads (CLOCK_REALTIME, converted as the callback converts it)
    /// and subtract `time_of_produce`.
    #[pyo3(signature = (error, _message, time_of_produce=None))]
    fn report_with_clock(
        &self,
        error: &Bound<'_, PyAny>,
        _message: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let _ = error;
        let produced = time_of_produce.and_then(|t| t.cast::<PyFloat>().ok().map(|t| t.value()));
        if let (Some(now), Some(produced)) = (clock::realtime(false), produced) {
            std::hint::black_box(now - produced);
        }
        Ok(())
    }
}
