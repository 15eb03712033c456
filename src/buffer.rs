//! The `MetricsBuffer` pyclass: arguments in, the core, and emission out.
//!
//! Nothing here calls Python while the core's lock is held: the core takes and gives back whole
//! windows, and the backend, `time.time` and logging are called between those steps.

use std::sync::Arc;
use std::time::Duration;

use pyo3::PyTraverseError;
use pyo3::exceptions::PyImportError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

use crate::backend::Backend;
use crate::callback::DeliveryCallbackPy;
use crate::convert::{OwnedText, Text, tags_dict, value_object};
use crate::errors::Error;
use crate::floor::FloorPy;
use crate::locked::Core;
use crate::names::Names;
use crate::shared::Shared;
use crate::{clock, convert, exit, ffi, gate};
use metrics_buffer::{Add, DEFAULT_FAILURE_INTERVAL, Kind, Value};

/// Big enough for any one-second window of a busy producer; about 16 MiB at the cap.
const DEFAULT_MAX_SAMPLES: usize = 1_000_000;

/// What tells `incr_counter`, `incr_timing` and `record_timing` apart.
#[derive(Clone, Copy)]
struct Incr {
    function: &'static str,
    /// The name of the amount argument.
    amount: &'static str,
    kind: Kind,
}

const INCR_COUNTER: Incr = Incr {
    function: "incr_counter",
    amount: "delta",
    kind: Kind::Counter,
};
const INCR_TIMING: Incr = Incr {
    function: "incr_timing",
    amount: "duration",
    kind: Kind::Timer,
};
const RECORD_TIMING: Incr = Incr {
    function: "record_timing",
    amount: "value",
    kind: Kind::Sample,
};

/// A thread-safe, drop-in replacement for arroyo's `MetricsBuffer` (see `_native.pyi`).
#[pyclass(
    name = "MetricsBuffer",
    module = "arroyo_metrics_buffer._native",
    frozen,
    weakref
)]
pub struct MetricsBufferPy {
    pub(crate) shared: Arc<Shared>,
    /// Untagged names seen before, by identity.
    names: Names,
}

impl MetricsBufferPy {
    /// The one path of `incr_counter`, `incr_timing` and `record_timing`.
    #[inline(always)]
    fn incr(
        &self,
        py: Python<'_>,
        how: Incr,
        metric: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !gate::admits() {
            return Ok(());
        }
        gate::finish(self.record(py, how, metric, amount, tags))
    }

    #[inline(always)]
    fn record(
        &self,
        py: Python<'_>,
        how: Incr,
        metric: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let tags = tags.filter(|t| !t.is_none());
        if tags.is_none() {
            if let Some(key) = self.names.get(metric, how.kind) {
                let amount = Self::amount(how, amount)?;
                return self.shared.record(py, &[key.add(amount)]);
            }
        }
        let name = convert::name(how.function, "metric", metric)?;
        let amount = Self::amount(how, amount)?;
        // No tags (arroyo's own calls): no call to `convert::tags` and no `Vec` to drop, which
        // costs about 75 instructions a call (callgrind, 3.11).
        let converted;
        let tags: &[(OwnedText, OwnedText)] = match tags {
            None => {
                if let (Text::Utf8(utf8), Ok(metric)) = (&name, metric.cast::<PyString>()) {
                    self.names
                        .missed(&self.shared.core, metric, utf8.as_bytes(), how.kind);
                }
                &[]
            }
            Some(tags) => {
                converted = convert::tags(how.function, "tags", Some(tags))?;
                &converted
            }
        };
        let add = Add::new(how.kind, &name, tags, amount);
        self.shared.record(py, &[add])
    }

    #[inline(always)]
    fn amount(how: Incr, amount: &Bound<'_, PyAny>) -> PyResult<Value> {
        Ok(match how.kind {
            Kind::Counter => convert::delta(how.function, how.amount, amount)?,
            Kind::Timer | Kind::Sample => {
                Value::Float(convert::real(how.function, how.amount, amount)?)
            }
        })
    }
}

/// `importlib.import_module`, looked up at module import.
static IMPORT_MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let import = py.import("importlib")?.getattr("import_module")?;
    let _ = IMPORT_MODULE.set(py, import.unbind());
    Ok(())
}

/// arroyo's `get_metrics()`, for `MetricsBuffer(metrics=None)`.
fn arroyo_metrics(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let import = IMPORT_MODULE
        .get(py)
        .expect("buffer::init runs at module import");
    let name = PyString::new(py, "arroyo.utils.metrics").into_any();
    let module = ffi::call(import.bind(py), [&name]).map_err(|e| {
        PyImportError::new_err(format!(
            "MetricsBuffer(metrics=None) uses arroyo's get_metrics(), but arroyo (the \
             sentry-arroyo package) cannot be imported: {e}"
        ))
    })?;
    ffi::call_method(intern!(py, "get_metrics"), &[module.as_ptr()], None)
}

/// A non-negative number of seconds, or a `ValueError` naming the argument.
fn non_negative(function: &'static str, arg: &'static str, value: f64) -> PyResult<f64> {
    if value.is_nan() || value < 0.0 {
        return Err(Error::Value(format!(
            "{function}() argument '{arg}' must be a non-negative number, not {value}"
        ))
        .into());
    }
    Ok(value)
}

#[pymethods]
impl MetricsBufferPy {
    #[new]
    #[pyo3(signature = (
        metrics=None,
        *,
        frequency_sec=None,
        max_samples=None,
        keyword_args=None,
        failure_log_interval=None,
    ))]
    fn new(
        py: Python<'_>,
        metrics: Option<Bound<'_, PyAny>>,
        frequency_sec: Option<&Bound<'_, PyAny>>,
        max_samples: Option<&Bound<'_, PyAny>>,
        keyword_args: Option<&Bound<'_, PyAny>>,
        failure_log_interval: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        const F: &str = "MetricsBuffer";
        let keyword_args = match keyword_args.filter(|k| !k.is_none()) {
            Some(k) => convert::boolean(F, "keyword_args", k)?,
            None => false,
        };
        let frequency = match frequency_sec {
            Some(f) => non_negative(F, "frequency_sec", convert::real(F, "frequency_sec", f)?)?,
            None => 1.0,
        };
        let failure_interval = match failure_log_interval {
            Some(f) => {
                let seconds = convert::real(F, "failure_log_interval", f)?;
                let seconds = non_negative(F, "failure_log_interval", seconds)?;
                Duration::try_from_secs_f64(seconds).map_err(|_| {
                    Error::Value(format!(
                        "MetricsBuffer() argument 'failure_log_interval' is too large: {seconds}"
                    ))
                })?
            }
            None => DEFAULT_FAILURE_INTERVAL,
        };
        let max_samples = match max_samples {
            Some(m) => {
                let m = convert::int(F, "max_samples", m)?;
                usize::try_from(m).map_err(|_| {
                    Error::Value(format!(
                        "MetricsBuffer() argument 'max_samples' must be >= 0, not {m}"
                    ))
                })?
            }
            None => DEFAULT_MAX_SAMPLES,
        };
        let metrics = match metrics.filter(|m| !m.is_none()) {
            Some(m) => m,
            None => arroyo_metrics(py)?,
        };
        let core = Core::with_lock(frequency, max_samples, clock::now(py, false)?)
            .with_failure_interval(failure_interval);
        let backend = Backend::new(metrics.unbind(), keyword_args);
        let shared = Arc::new(Shared { core, backend });
        exit::register(&shared);
        Ok(MetricsBufferPy {
            shared,
            names: Names::new(),
        })
    }

    /// No-op twins of the recording methods, for `bench`'s floor (see `floor`).
    #[staticmethod]
    fn _floor() -> FloorPy {
        FloorPy
    }

    /// `None` only once the garbage collector cleared it (in a cycle being collected).
    #[getter]
    fn metrics<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.shared.backend.get(py)
    }

    #[getter]
    fn frequency_sec(&self) -> f64 {
        self.shared.core.frequency()
    }

    #[getter]
    fn max_samples(&self) -> usize {
        self.shared.core.max_samples()
    }

    #[getter]
    fn keyword_args(&self) -> bool {
        self.shared.backend.keyword_args
    }

    #[getter]
    fn failure_log_interval(&self) -> f64 {
        self.shared.core.failure_interval().as_secs_f64()
    }

    #[getter]
    fn flushes(&self) -> u64 {
        self.shared.core.stats().flushes
    }

    #[getter]
    fn flush_errors(&self) -> u64 {
        self.shared.core.stats().flush_errors
    }

    #[getter]
    fn dropped_samples(&self) -> u64 {
        self.shared.core.stats().dropped_samples
    }

    #[pyo3(signature = (metric, delta, tags=None))]
    fn incr_counter(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        delta: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.incr(py, INCR_COUNTER, metric, delta, tags)
    }

    #[pyo3(signature = (metric, duration, tags=None))]
    fn incr_timing(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        duration: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.incr(py, INCR_TIMING, metric, duration, tags)
    }

    #[pyo3(signature = (metric, value, tags=None))]
    fn record_timing(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.incr(py, RECORD_TIMING, metric, value, tags)
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        if !gate::admits() {
            return Ok(());
        }
        self.shared.flush(py)
    }

    /// (kind, name, tags or None, value, number of values) per pending key, in emission order.
    fn pending<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut snapshot = self.shared.core.snapshot();
        let rank = |k: Kind| match k {
            Kind::Timer => 0,
            Kind::Counter => 1,
            Kind::Sample => 2,
        };
        snapshot.sort_by_key(|(kind, ..)| rank(*kind));
        snapshot
            .into_iter()
            .map(|(kind, key, value, count)| {
                let kind = match kind {
                    Kind::Timer => "timer",
                    Kind::Counter => "counter",
                    Kind::Sample => "sample",
                };
                let tags = match tags_dict(py, &key)? {
                    Some(tags) => tags.into_any(),
                    None => py.None().into_bound(py),
                };
                PyTuple::new(
                    py,
                    [
                        kind.into_pyobject(py)?.into_any(),
                        ffi::str_from_text(py, &key.name)?.into_any(),
                        tags,
                        value_object(py, value)?,
                        count.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect()
    }

    /// A callable for confluent-kafka delivery reports: see `DeliveryCallback`.
    #[pyo3(signature = (counter, success_tags, error_tags, latency=None, latency_tags=None))]
    fn delivery_callback(
        slf: &Bound<'_, Self>,
        counter: &Bound<'_, PyAny>,
        success_tags: Option<&Bound<'_, PyAny>>,
        error_tags: Option<&Bound<'_, PyAny>>,
        latency: Option<&Bound<'_, PyAny>>,
        latency_tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<DeliveryCallbackPy> {
        DeliveryCallbackPy::new(
            slf,
            counter,
            [success_tags, error_tags],
            latency,
            latency_tags,
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.shared.backend.traverse(&visit)
    }

    fn __clear__(&self) {
        self.shared.backend.clear();
    }

    fn __repr__(&self) -> String {
        let stats = self.shared.core.stats();
        let frequency = self.shared.core.frequency();
        // As Python writes a float: 1e+300, not three hundred digits.
        let frequency = if frequency != 0.0 && !(1e-4..1e16).contains(&frequency) {
            format!("{frequency:e}")
        } else {
            format!("{frequency}")
        };
        format!(
            "<MetricsBuffer pending={} frequency_sec={frequency} flushes={} flush_errors={}>",
            self.shared.core.snapshot().len(),
            stats.flushes,
            stats.flush_errors,
        )
    }
}
