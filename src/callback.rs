//! The `DeliveryCallback` pyclass: confluent-kafka delivery reports into a buffer.

use pyo3::PyTraverseError;
use pyo3::exceptions::PyTypeError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use std::cell::Cell;

use crate::buffer::MetricsBufferPy;
use crate::{clock, convert, gate};
use metrics_buffer::{Kind, Prepared, Value};

thread_local! {
    /// Delivery reports counted on this thread, by any callback (see `reports_on_this_thread`).
    static REPORTS: Cell<u64> = const { Cell::new(0) };
}

/// On each call it counts `counter` under `success_tags` or `error_tags` (by whether `error` is
/// None) and, when `latency` is given, records one `latency` sample of `time.time() -
/// time_of_produce` under `latency_tags`; both atomically, then the throttled flush, so a flush it
/// triggers has both of its values.
///
/// It takes part in garbage collection (`__traverse__`) but has no `__clear__`: its one reference,
/// to its buffer, never changes, and every cycle through it goes on through the buffer's
/// reference to its backend, which the buffer's `__clear__` drops (the rule pyo3's guide gives).
/// So the hot path reads the buffer without a lock.
#[pyclass(
    name = "DeliveryCallback",
    module = "arroyo_metrics_buffer._native",
    frozen,
    weakref
)]
pub struct DeliveryCallbackPy {
    buffer: Py<MetricsBufferPy>,
    /// The counter under the success tags and under the error tags, and the latency sample.
    success: Prepared,
    error: Prepared,
    latency: Option<Prepared>,
}

impl DeliveryCallbackPy {
    /// `MetricsBuffer.delivery_callback`.
    pub(crate) fn new(
        buffer: &Bound<'_, MetricsBufferPy>,
        counter: &Bound<'_, PyAny>,
        [success_tags, error_tags]: [Option<&Bound<'_, PyAny>>; 2],
        latency: Option<&Bound<'_, PyAny>>,
        latency_tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        const F: &str = "delivery_callback";
        let core = &buffer.get().shared.core;
        let latency = match latency.filter(|l| !l.is_none()) {
            Some(l) => Some(core.prepare(
                Kind::Sample,
                convert::name(F, "latency", l)?.as_ref(),
                &convert::tags(F, "latency_tags", latency_tags)?,
            )),
            None => None,
        };
        let counter = convert::name(F, "counter", counter)?;
        let success_tags = convert::tags(F, "success_tags", success_tags)?;
        let error_tags = convert::tags(F, "error_tags", error_tags)?;
        Ok(DeliveryCallbackPy {
            buffer: buffer.clone().unbind(),
            success: core.prepare(Kind::Counter, counter.as_ref(), &success_tags),
            error: core.prepare(Kind::Counter, counter.as_ref(), &error_tags),
            latency,
        })
    }
}

#[pymethods]
impl DeliveryCallbackPy {
    #[getter]
    fn buffer(&self, py: Python<'_>) -> Py<MetricsBufferPy> {
        self.buffer.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.buffer)
    }

    /// Same as calling it; a bound method is a faster callable (vectorcall) than the object.
    #[pyo3(signature = (error, _message, time_of_produce=None))]
    fn report(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        _message: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !gate::admits() {
            return Ok(());
        }
        REPORTS.with(|reports| reports.set(reports.get().wrapping_add(1)));
        gate::finish(self.record(py, error, time_of_produce))
    }

    /// The same as `report` (which is the faster callable to hand out).
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        slf: &Bound<'_, Self>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        if !gate::admits() {
            return Ok(());
        }
        slf.call_method(intern!(slf.py(), "report"), args, kwargs)?;
        Ok(())
    }

    /// How many delivery reports any `DeliveryCallback` has counted on the calling thread. A
    /// producer's `flush()` compares it before and after confluent-kafka's flush, which serves
    /// delivery reports on the calling thread, to know whether that flush delivered anything.
    #[staticmethod]
    fn reports_on_this_thread() -> u64 {
        REPORTS.with(Cell::get)
    }
}

impl DeliveryCallbackPy {
    fn record(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let status = if error.is_none() {
            &self.success
        } else {
            &self.error
        };
        let buffer = &self.buffer.get().shared;
        // A report is never refused: a count that the user's own calls took to the i64 limit
        // goes on in an entry of its own (two increments whose sum is stock's).
        let counter = status.add(Value::Int(1)).apart_at_overflow();
        let Some(latency) = &self.latency else {
            return buffer.record(py, &[counter]);
        };
        let Some(produced) = time_of_produce else {
            return Err(PyTypeError::new_err(
                "delivery callback missing required argument 'time_of_produce'",
            ));
        };
        let produced = convert::seconds("DeliveryCallback.report", "time_of_produce", produced)?;
        // The latency sample needs the clock `time.time()` reads, not a coarse one. A clock that
        // raises (a test's mock): the count is kept and the error raised, as arroyo, which counts
        // the delivery before it reads the clock, does.
        match clock::now(py, false) {
            Ok(now) => {
                let sample = latency.add(Value::Float(now - produced));
                buffer.record_at(py, &[counter, sample], Some(now))
            }
            Err(error) => {
                buffer.record_at(py, &[counter], None)?;
                Err(error)
            }
        }
    }
}
