//! The `#[pyclass]` wrappers: convert arguments, call the core, emit to the Python backend.
//!
//! Nothing here calls Python while the core's lock is held: the core takes and gives back whole
//! windows, and the backend, `time.time` and logging are called between those steps.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyMapping, PyString, PyTuple};

use crate::core::{own_tags, Add, Begin, Buffer, Key, Kind, Tags, Value, Window};
use crate::errors::Error;

/// Big enough for any one-second window of a busy producer; about 16 MiB at the cap.
const DEFAULT_MAX_SAMPLES: usize = 1_000_000;

static NUMBERS_REAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `time` module and its own `time.time` builtin, captured when this module is imported.
struct Clock {
    module: Py<PyModule>,
    /// The module's `__dict__`, where `mock.patch` and freezegun put their clocks.
    namespace: Py<PyDict>,
    /// The builtin and its C function; `None` if `time.time` was already replaced at import
    /// (then it is always called).
    builtin: Option<(Py<PyAny>, usize)>,
}

/// The C function behind a builtin function object. time-machine swaps this pointer inside the
/// `time.time` builtin itself instead of replacing the object.
fn c_function(builtin: &Bound<'_, PyAny>) -> usize {
    // SAFETY: only called on objects that are `PyCFunction` instances (checked at import, and by
    // identity with that object afterwards); their method table outlives them.
    unsafe {
        let function = builtin.as_ptr() as *mut pyo3::ffi::PyCFunctionObject;
        (*(*function).m_ml).ml_meth.PyCFunction as usize
    }
}

static CLOCK: PyOnceLock<Clock> = PyOnceLock::new();

pub(crate) fn init_clock(py: Python<'_>) -> PyResult<()> {
    let module = py.import("time")?;
    let time = module.getattr("time")?;
    let genuine = time.is_instance_of::<pyo3::types::PyCFunction>()
        && time.getattr("__self__").is_ok_and(|m| m.is(&module))
        && time
            .getattr("__name__")
            .is_ok_and(|n| n.eq("time").unwrap_or(false));
    let builtin = genuine.then(|| {
        let function = c_function(&time);
        (time.unbind(), function)
    });
    let _ = CLOCK.set(
        py,
        Clock {
            namespace: module.dict().unbind(),
            module: module.unbind(),
            builtin,
        },
    );
    Ok(())
}

/// `time.time()`, looked up at call time so that `mock.patch("time.time")`, freezegun and
/// time-machine see the same clock as arroyo's own buffer. While `time.time` is still the builtin
/// with its own C function, the same clock (CLOCK_REALTIME) is read without the Python call,
/// converted to seconds exactly as CPython's `_PyTime_AsSecondsDouble` does, so the values are
/// identical.
fn now(py: Python<'_>) -> PyResult<f64> {
    let clock = CLOCK.get(py).expect("init_clock runs at module import");
    let time = match clock.namespace.bind(py).get_item(intern!(py, "time"))? {
        Some(time) => time,
        None => clock.module.bind(py).getattr(intern!(py, "time"))?,
    };
    if clock
        .builtin
        .as_ref()
        .is_some_and(|(builtin, function)| time.is(builtin) && c_function(&time) == *function)
    {
        if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            let (secs, nanos) = (since.as_secs() as i64, i64::from(since.subsec_nanos()));
            return Ok(if nanos == 0 {
                secs as f64
            } else {
                (secs * 1_000_000_000 + nanos) as f64 / 1e9
            });
        }
    }
    time.call0()?.extract::<f64>()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn type_error(
    function: &'static str,
    arg: &'static str,
    expected: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyErr {
    Error::Type {
        function,
        arg,
        expected,
        got: type_name(obj),
    }
    .into()
}

fn name_arg<'a>(
    function: &'static str,
    arg: &'static str,
    obj: &'a Bound<'_, PyAny>,
) -> PyResult<&'a str> {
    match obj.cast::<PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(type_error(function, arg, "str", obj)),
    }
}

fn int_arg(function: &'static str, arg: &'static str, obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    if !obj.is_instance_of::<PyInt>() {
        return Err(type_error(function, arg, "int", obj));
    }
    obj.extract::<i64>().map_err(|_| {
        Error::Overflow(format!(
            "{function}() argument '{arg}' does not fit a 64-bit signed integer: {obj}"
        ))
        .into()
    })
}

/// A float, an int, or any other `numbers.Real`.
fn real_arg(function: &'static str, arg: &'static str, obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(f.value());
    }
    let py = obj.py();
    let real = NUMBERS_REAL.get_or_try_init(py, || {
        py.import("numbers")?.getattr("Real").map(Bound::unbind)
    })?;
    if obj.is_instance_of::<PyInt>() || obj.is_instance(real.bind(py))? {
        return obj
            .extract::<f64>()
            .map_err(|e| Error::Overflow(format!("{function}() argument '{arg}': {e}")).into());
    }
    Err(type_error(function, arg, "a real number", obj))
}

/// `None`, or a mapping of `str` to `str`, as owned pairs in the mapping's order.
fn tags_arg(
    function: &'static str,
    arg: &'static str,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<(PyBackedStr, PyBackedStr)>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    let pair = |k: Bound<'_, PyAny>, v: Bound<'_, PyAny>| -> PyResult<(PyBackedStr, PyBackedStr)> {
        match (k.cast::<PyString>(), v.cast::<PyString>()) {
            (Ok(ks), Ok(vs)) => Ok((ks.clone().try_into()?, vs.clone().try_into()?)),
            _ => Err(PyTypeError::new_err(format!(
                "{function}() argument '{arg}' must map str to str, got {}: {} ({} to {})",
                k.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                v.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                type_name(&k),
                type_name(&v),
            ))),
        }
    };
    if let Ok(dict) = obj.cast::<PyDict>() {
        return dict.iter().map(|(k, v)| pair(k, v)).collect();
    }
    match obj.cast::<PyMapping>() {
        Ok(mapping) => mapping
            .items()?
            .iter()
            .map(|item| {
                let (k, v) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
                pair(k, v)
            })
            .collect(),
        Err(_) => Err(type_error(
            function,
            arg,
            "None or a mapping of str to str",
            obj,
        )),
    }
}

/// A key's tags as a new dict, or None when it has none.
fn tags_dict<'py>(py: Python<'py>, key: &Key) -> PyResult<Option<Bound<'py, PyDict>>> {
    if key.tags.is_empty() {
        return Ok(None);
    }
    let tags = PyDict::new(py);
    for (k, v) in key.tags.iter() {
        tags.set_item(&**k, &**v)?;
    }
    Ok(Some(tags))
}

fn value_object(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
    })
}

/// A thread-safe, drop-in replacement for arroyo's `MetricsBuffer` (see `_native.pyi`).
#[pyclass(
    name = "MetricsBuffer",
    module = "arroyo_metrics_buffer._native",
    frozen
)]
pub struct MetricsBufferPy {
    core: Buffer,
    metrics: Py<PyAny>,
    keyword_args: bool,
}

impl MetricsBufferPy {
    fn record<S: AsRef<str>>(&self, py: Python<'_>, adds: &[Add<'_, S>]) -> PyResult<()> {
        self.record_at(py, adds, now(py)?)
    }

    /// Applies `adds` with the throttle at clock reading `now`, and emits if this call won the flush.
    fn record_at<S: AsRef<str>>(
        &self,
        py: Python<'_>,
        adds: &[Add<'_, S>],
        now: f64,
    ) -> PyResult<()> {
        match self.core.record(adds, Some(now)).map_err(Error::from)? {
            Some(window) => self.emit_all(py, window),
            None => Ok(()),
        }
    }

    /// Emits `window`, then every window asked for by other threads meanwhile. A backend error
    /// gives back what was not sent, is logged once, and goes no further; anything that is not an
    /// `Exception` (KeyboardInterrupt, SystemExit) is re-raised once the data is safe.
    fn emit_all(&self, py: Python<'_>, mut window: Window) -> PyResult<()> {
        loop {
            let failure = self.emit(py, &window);
            let unsent = failure.as_ref().map(|(sent, _)| window.remainder(*sent));
            let pending = unsent.as_ref().map_or(0, |w| w.emissions().count());
            drop(window);
            let clock = now(py);
            let next = self.core.end_flush(unsent, clock.as_ref().ok().copied());
            if let Some((_, err)) = failure {
                log_failure(py, &err, pending);
                if !err.is_instance_of::<PyException>(py) {
                    return Err(err);
                }
            }
            if let Err(e) = clock {
                if let Some(w) = next {
                    self.core.end_flush(Some(w), None);
                }
                return Err(e);
            }
            match next {
                Some(w) => window = w,
                None => return Ok(()),
            }
        }
    }

    /// Calls the backend for each emission; on an error, returns how many went out and the error.
    fn emit(&self, py: Python<'_>, window: &Window) -> Option<(usize, PyErr)> {
        let mut emitter = Emitter::new(self.metrics.bind(py).clone(), self.keyword_args);
        for (sent, e) in window.emissions().enumerate() {
            if let Err(err) = emitter.call(e.kind, e.key, e.value) {
                return Some((sent, err));
            }
        }
        None
    }

    /// The rest of `incr_counter` / `incr_timing` / `record_timing` once name and amount are known.
    fn record_one(
        &self,
        py: Python<'_>,
        function: &'static str,
        kind: Kind,
        name: &str,
        amount: Value,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let tags = tags_arg(function, "tags", tags)?;
        let add = Add {
            kind,
            name,
            tags: &tags,
            amount,
            hash: None,
        };
        self.record(py, &[add])
    }
}

static KWNAMES: PyOnceLock<[Py<PyTuple>; 3]> = PyOnceLock::new();

/// Calls a metrics backend the way arroyo's own code does: `timing(name, value)` /
/// `increment(name, value)`, `tags=` only when there are tags, or all three as keywords. It uses
/// vectorcall with keyword names (as a Python call site does, no kwargs dict), and reuses the last
/// key's name string and tags, since a window's samples of one key come one after another. Each
/// call gets its own copy of the tags dict, so a backend that changes it changes nothing else.
struct Emitter<'py> {
    metrics: Bound<'py, PyAny>,
    keyword_args: bool,
    last: Option<LastKey<'py>>,
}

/// A key (by address, within the window being emitted), its name and its tags as Python objects.
type LastKey<'py> = (*const Key, Bound<'py, PyString>, Option<Bound<'py, PyDict>>);

impl<'py> Emitter<'py> {
    fn new(metrics: Bound<'py, PyAny>, keyword_args: bool) -> Self {
        Emitter {
            metrics,
            keyword_args,
            last: None,
        }
    }

    fn call(&mut self, kind: Kind, key: &Key, value: Value) -> PyResult<()> {
        let py = self.metrics.py();
        let [all, name_value, tags_only] = KWNAMES.get_or_init(py, || {
            [
                PyTuple::new(py, ["name", "value", "tags"])
                    .expect("a tuple")
                    .unbind(),
                PyTuple::new(py, ["name", "value"])
                    .expect("a tuple")
                    .unbind(),
                PyTuple::new(py, ["tags"]).expect("a tuple").unbind(),
            ]
        });
        if self
            .last
            .as_ref()
            .is_none_or(|(k, ..)| !std::ptr::eq(*k, key))
        {
            self.last = Some((key, PyString::new(py, &key.name), tags_dict(py, key)?));
        }
        let (_, name, template) = self.last.as_ref().expect("set above");
        let tags = template.as_ref().map(|t| t.copy()).transpose()?;
        let value = value_object(py, value)?;
        let method = match kind {
            Kind::Counter => intern!(py, "increment"),
            Kind::Timer | Kind::Sample => intern!(py, "timing"),
        };
        let mut args = [
            self.metrics.as_ptr(),
            name.as_ptr(),
            value.as_ptr(),
            std::ptr::null_mut(),
        ];
        if let Some(tags) = &tags {
            args[3] = tags.as_ptr();
        }
        // args[0] is the object whose method is called, then the positionals, then the values of
        // the keywords named in `kwnames`.
        let (positional, kwnames) = match (self.keyword_args, tags.is_some()) {
            (true, true) => (1, all.as_ptr()),
            (true, false) => (1, name_value.as_ptr()),
            (false, true) => (3, tags_only.as_ptr()),
            (false, false) => (3, std::ptr::null_mut()),
        };
        // SAFETY: every pointer used from `args` and `kwnames` is a live object borrowed for the
        // duration of the call; PY_VECTORCALL_ARGUMENTS_OFFSET is not set, so `args` is not written.
        unsafe {
            let result = pyo3::ffi::PyObject_VectorcallMethod(
                method.as_ptr(),
                args.as_ptr(),
                positional,
                kwnames,
            );
            Bound::from_owned_ptr_or_err(py, result)?;
        }
        Ok(())
    }
}

fn log_failure(py: Python<'_>, err: &PyErr, pending: usize) {
    let traceback = py
        .import("traceback")
        .and_then(|tb| tb.call_method1("format_exception", (err.value(py),)))
        .and_then(|lines| lines.cast_into::<PyList>().map_err(PyErr::from))
        .map(|lines| {
            lines
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .concat()
        })
        .unwrap_or_else(|_| format!("{err}\n"));
    log::warn!(
        target: "arroyo_metrics_buffer",
        "metrics backend raised during a flush; {pending} metric call(s) kept for the next flush\n{}",
        traceback.trim_end()
    );
}

#[pymethods]
impl MetricsBufferPy {
    #[new]
    #[pyo3(signature = (metrics=None, *, frequency_sec=None, max_samples=None, keyword_args=false))]
    fn new(
        py: Python<'_>,
        metrics: Option<Bound<'_, PyAny>>,
        frequency_sec: Option<&Bound<'_, PyAny>>,
        max_samples: Option<&Bound<'_, PyAny>>,
        keyword_args: bool,
    ) -> PyResult<Self> {
        const F: &str = "MetricsBuffer";
        let frequency = match frequency_sec {
            Some(f) => real_arg(F, "frequency_sec", f)?,
            None => 1.0,
        };
        if frequency.is_nan() || frequency < 0.0 {
            return Err(Error::Value(format!(
                "MetricsBuffer() argument 'frequency_sec' must be a non-negative number, not {frequency}"
            ))
            .into());
        }
        let max_samples = match max_samples {
            Some(m) => {
                let m = int_arg(F, "max_samples", m)?;
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
            None => py
                .import("arroyo.utils.metrics")
                .map_err(|e| {
                    pyo3::exceptions::PyImportError::new_err(format!(
                        "MetricsBuffer(metrics=None) uses arroyo's get_metrics(), but arroyo \
                         (the sentry-arroyo package) cannot be imported: {e}"
                    ))
                })?
                .call_method0("get_metrics")?,
        };
        Ok(MetricsBufferPy {
            core: Buffer::new(frequency, max_samples, now(py)?),
            metrics: metrics.unbind(),
            keyword_args,
        })
    }

    #[getter]
    fn metrics(&self, py: Python<'_>) -> Py<PyAny> {
        self.metrics.clone_ref(py)
    }

    #[getter]
    fn frequency_sec(&self) -> f64 {
        self.core.frequency()
    }

    #[getter]
    fn max_samples(&self) -> usize {
        self.core.max_samples()
    }

    #[getter]
    fn keyword_args(&self) -> bool {
        self.keyword_args
    }

    #[getter]
    fn flushes(&self) -> u64 {
        self.core.stats().flushes
    }

    #[getter]
    fn flush_errors(&self) -> u64 {
        self.core.stats().flush_errors
    }

    #[getter]
    fn dropped_samples(&self) -> u64 {
        self.core.stats().dropped_samples
    }

    #[pyo3(signature = (metric, delta, tags=None))]
    fn incr_counter(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        delta: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        const F: &str = "incr_counter";
        let name = name_arg(F, "metric", metric)?;
        let delta = int_arg(F, "delta", delta)?;
        self.record_one(py, F, Kind::Counter, name, Value::Int(delta), tags)
    }

    #[pyo3(signature = (metric, duration, tags=None))]
    fn incr_timing(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        duration: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        const F: &str = "incr_timing";
        let name = name_arg(F, "metric", metric)?;
        let duration = real_arg(F, "duration", duration)?;
        self.record_one(py, F, Kind::Timer, name, Value::Float(duration), tags)
    }

    #[pyo3(signature = (metric, value, tags=None))]
    fn record_timing(
        &self,
        py: Python<'_>,
        metric: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        const F: &str = "record_timing";
        let name = name_arg(F, "metric", metric)?;
        let value = real_arg(F, "value", value)?;
        self.record_one(py, F, Kind::Sample, name, Value::Float(value), tags)
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        match self.core.begin_flush() {
            Begin::Emit(window) => self.emit_all(py, window),
            Begin::HandedOff | Begin::Reentrant => Ok(()),
        }
    }

    /// (kind, name, tags or None, value, number of values) per pending key, in emission order.
    fn pending<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut snapshot = self.core.snapshot();
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
                let value = value_object(py, value)?;
                PyTuple::new(
                    py,
                    [
                        kind.into_pyobject(py)?.into_any(),
                        PyString::new(py, &key.name).into_any(),
                        tags,
                        value,
                        count.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect()
    }

    /// A callable for confluent-kafka delivery reports: on each call it counts `counter` under
    /// `success_tags` or `error_tags` (by whether `error` is None) and, when `latency` is given,
    /// records one `latency` sample of `time.time() - time_of_produce` under `latency_tags`; both
    /// atomically, then the throttled flush, so a flush it triggers has both of its values.
    #[pyo3(signature = (counter, success_tags, error_tags, latency=None, latency_tags=None))]
    fn delivery_callback(
        slf: &Bound<'_, Self>,
        counter: &Bound<'_, PyAny>,
        success_tags: Option<&Bound<'_, PyAny>>,
        error_tags: Option<&Bound<'_, PyAny>>,
        latency: Option<&Bound<'_, PyAny>>,
        latency_tags: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<DeliveryCallbackPy> {
        const F: &str = "delivery_callback";
        let latency = match latency.filter(|l| !l.is_none()) {
            Some(l) => Some(Key::new(
                name_arg(F, "latency", l)?,
                &tags_arg(F, "latency_tags", latency_tags)?,
            )),
            None => None,
        };
        let counter: Box<str> = name_arg(F, "counter", counter)?.into();
        let success_tags = own_tags(&tags_arg(F, "success_tags", success_tags)?);
        let error_tags = own_tags(&tags_arg(F, "error_tags", error_tags)?);
        let core = &slf.get().core;
        Ok(DeliveryCallbackPy {
            buffer: slf.clone().unbind(),
            hashes: [
                core.prehash(Kind::Counter, &counter, &success_tags),
                core.prehash(Kind::Counter, &counter, &error_tags),
                latency
                    .as_ref()
                    .map_or(0, |l| core.prehash(Kind::Sample, &l.name, &l.tags)),
            ],
            counter,
            success_tags,
            error_tags,
            latency,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<MetricsBuffer pending={} frequency_sec={} flushes={} flush_errors={}>",
            self.core.snapshot().len(),
            self.core.frequency(),
            self.core.stats().flushes,
            self.core.stats().flush_errors,
        )
    }
}

/// See `MetricsBuffer.delivery_callback`.
#[pyclass(
    name = "DeliveryCallback",
    module = "arroyo_metrics_buffer._native",
    frozen
)]
pub struct DeliveryCallbackPy {
    buffer: Py<MetricsBufferPy>,
    counter: Box<str>,
    success_tags: Tags,
    error_tags: Tags,
    latency: Option<Key>,
    /// Prehashed keys: success counter, error counter, latency sample.
    hashes: [u64; 3],
}

#[pymethods]
impl DeliveryCallbackPy {
    #[getter]
    fn buffer(&self, py: Python<'_>) -> Py<MetricsBufferPy> {
        self.buffer.clone_ref(py)
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
        let (tags, hash) = if error.is_none() {
            (&self.success_tags, self.hashes[0])
        } else {
            (&self.error_tags, self.hashes[1])
        };
        let buffer = self.buffer.get();
        let counter = Add {
            kind: Kind::Counter,
            name: &self.counter,
            tags,
            amount: Value::Int(1),
            hash: Some(hash),
        };
        let Some(latency) = &self.latency else {
            return buffer.record(py, &[counter]);
        };
        let Some(produced) = time_of_produce else {
            return Err(PyTypeError::new_err(
                "delivery callback missing required argument 'time_of_produce'",
            ));
        };
        let produced = real_arg("DeliveryCallback", "time_of_produce", produced)?;
        let now = now(py)?;
        let sample = Add {
            kind: Kind::Sample,
            name: &latency.name,
            tags: &latency.tags,
            amount: Value::Float(now - produced),
            hash: Some(self.hashes[2]),
        };
        buffer.record_at(py, &[counter, sample], now)
    }

    #[pyo3(signature = (error, _message, time_of_produce=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        _message: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.report(py, error, _message, time_of_produce)
    }
}
