//! The `DeliveryCallback` pyclass: confluent-kafka delivery reports into a buffer.

use pyo3::exceptions::PyTypeError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyWeakrefMethods, PyWeakrefReference};
use pyo3::PyTraverseError;

use crate::buffer::MetricsBufferPy;
use crate::core::{own_tags, Add, Key, Kind, Tags, Value};
use crate::errors::Error;
use crate::{args, clock};

const F_REPORT: &str = "DeliveryCallback.report";
const F_WRAP: &str = "DeliveryCallback.wrap";

/// On each call it counts `counter` under `success_tags` or `error_tags` (by whether `error` is
/// None) and, when `latency` is given, records one `latency` sample of `time.time() -
/// time_of_produce` under `latency_tags`; both atomically, then the throttled flush, so a flush it
/// triggers has both of its values.
///
/// It takes part in garbage collection (`__traverse__`) but has no `__clear__`: its references, to
/// its buffer and (weakly) to its owner, never change, and every cycle through it goes on through
/// the buffer's reference to its backend, which the buffer's `__clear__` drops (the rule pyo3's
/// guide gives). So the hot path reads the buffer without a lock.
#[pyclass(
    name = "DeliveryCallback",
    module = "arroyo_metrics_buffer._native",
    frozen,
    weakref
)]
pub struct DeliveryCallbackPy {
    buffer: Py<MetricsBufferPy>,
    /// What each wrapper keeps alive until its delivery (a weak reference here, so that the owner
    /// holding this callback makes no cycle).
    owner: Option<Py<PyWeakrefReference>>,
    counter: Box<str>,
    success_tags: Tags,
    error_tags: Tags,
    latency: Option<Key>,
    /// Prehashed keys: success counter, error counter, latency sample.
    hashes: [u64; 3],
}

impl DeliveryCallbackPy {
    /// `MetricsBuffer.delivery_callback`.
    pub(crate) fn new(
        buffer: &Bound<'_, MetricsBufferPy>,
        counter: &Bound<'_, PyAny>,
        [success_tags, error_tags]: [Option<&Bound<'_, PyAny>>; 2],
        [latency, latency_tags]: [Option<&Bound<'_, PyAny>>; 2],
        owner: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        const F: &str = "delivery_callback";
        let owner = match owner.filter(|o| !o.is_none()) {
            Some(o) => Some(
                PyWeakrefReference::new(o)
                    .map_err(|e| {
                        PyTypeError::new_err(format!(
                            "{F}() argument 'owner' must take weak references: {e}"
                        ))
                    })?
                    .unbind(),
            ),
            None => None,
        };
        let latency = match latency.filter(|l| !l.is_none()) {
            Some(l) => Some(Key::new(
                args::name(F, "latency", l)?,
                &args::tags(F, "latency_tags", latency_tags)?,
            )),
            None => None,
        };
        let counter: Box<str> = args::name(F, "counter", counter)?.into();
        let success_tags = own_tags(&args::tags(F, "success_tags", success_tags)?);
        let error_tags = own_tags(&args::tags(F, "error_tags", error_tags)?);
        let core = &buffer.get().shared.core;
        Ok(DeliveryCallbackPy {
            buffer: buffer.clone().unbind(),
            owner,
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

    /// Count one delivery (and its latency, when this callback records latency).
    fn count(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        produced: Option<f64>,
    ) -> PyResult<()> {
        let (tags, hash) = if error.is_none() {
            (&self.success_tags, self.hashes[0])
        } else {
            (&self.error_tags, self.hashes[1])
        };
        let buffer = &self.buffer.get().shared;
        let counter = Add {
            kind: Kind::Counter,
            name: &self.counter,
            tags,
            amount: Value::Int(1),
            hash: Some(hash),
        };
        let Some(latency) = &self.latency else {
            return buffer.record_at(py, &[counter], clock::now(py)?);
        };
        let Some(produced) = produced else {
            return Err(missing_time_of_produce(F_REPORT));
        };
        let now = clock::now(py)?;
        let sample = Add {
            kind: Kind::Sample,
            name: &latency.name,
            tags: &latency.tags,
            amount: Value::Float(now - produced),
            hash: Some(self.hashes[2]),
        };
        buffer.record_at(py, &[counter, sample], now)
    }
}

#[pymethods]
impl DeliveryCallbackPy {
    #[getter]
    fn buffer(&self, py: Python<'_>) -> Py<MetricsBufferPy> {
        self.buffer.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.buffer)?;
        if let Some(owner) = &self.owner {
            visit.call(owner)?;
        }
        Ok(())
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
        let produced = match time_of_produce {
            Some(t) if self.latency.is_some() => {
                Some(args::seconds(F_REPORT, "time_of_produce", t)?)
            }
            _ => None,
        };
        self.count(py, error, produced)
    }

    /// arroyo's `ConfluentProducer.__delivery_callback(user_callback[, time_of_produce])`, native:
    /// the `on_delivery` callable for one produced message, which reports the delivery here and
    /// then calls `user_callback(error, message)` unless it is None.
    #[pyo3(signature = (user_callback, time_of_produce=None))]
    fn wrap(
        slf: &Bound<'_, Self>,
        user_callback: &Bound<'_, PyAny>,
        time_of_produce: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<WrappedCallbackPy> {
        let user = if user_callback.is_none() {
            None
        } else if user_callback.is_callable() {
            Some(user_callback.clone().unbind())
        } else {
            return Err(Error::Type {
                function: F_WRAP,
                arg: "user_callback",
                expected: "callable or None (the callback= or on_delivery= given to produce())",
                got: args::type_name(user_callback),
            }
            .into());
        };
        let produced = match (time_of_produce, &slf.get().latency) {
            (Some(t), Some(_)) => Some(args::seconds(F_WRAP, "time_of_produce", t)?),
            (None, Some(_)) => return Err(missing_time_of_produce(F_WRAP)),
            (_, None) => None,
        };
        let owner = match &slf.get().owner {
            Some(owner) => owner.bind(slf.py()).upgrade().map(Bound::unbind),
            None => None,
        };
        Ok(WrappedCallbackPy {
            callback: slf.clone().unbind(),
            user,
            produced,
            owner,
        })
    }

    /// The same as `report` (which is the faster callable to hand out).
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        slf: &Bound<'_, Self>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        slf.call_method(intern!(slf.py(), "report"), args, kwargs)?;
        Ok(())
    }
}

fn missing_time_of_produce(function: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{function}() missing required argument 'time_of_produce'"
    ))
}

/// What `DeliveryCallback.wrap` returns: arroyo's per-message `wrapped` closure (and the
/// `functools.partial` around it), as one native object. Called by confluent-kafka as
/// `on_delivery(error, message)`: it counts the delivery with its callback (and the latency since
/// `time_of_produce`), then calls the user's callback, as arroyo does; an exception from either
/// propagates, and the user's callback is not called if counting raised.
///
/// Only confluent-kafka holds one, from `produce()` until the delivery report. For the garbage
/// collector it shows both references; it has no `__clear__`, as `DeliveryCallback`: its references
/// never change, and a cycle through the user's callback has Python objects on it that clear.
/// No `freelist`: pyo3 0.30 hands out reused objects without tracking them for the collector
/// again, so a cycle through one would never be collected (tests/test_produce.py caught it).
#[pyclass(
    name = "WrappedCallback",
    module = "arroyo_metrics_buffer._native",
    frozen
)]
pub struct WrappedCallbackPy {
    callback: Py<DeliveryCallbackPy>,
    user: Option<Py<PyAny>>,
    produced: Option<f64>,
    /// The callback's owner (the producer), kept alive until this delivery as arroyo's closure
    /// keeps it: a producer dropped with messages in flight is not destroyed under them.
    owner: Option<Py<PyAny>>,
}

#[pymethods]
impl WrappedCallbackPy {
    fn __call__(
        &self,
        py: Python<'_>,
        error: &Bound<'_, PyAny>,
        message: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.callback.get().count(py, error, self.produced)?;
        if let Some(user) = &self.user {
            user.bind(py).call1((error, message))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.callback)?;
        for reference in [&self.user, &self.owner].into_iter().flatten() {
            visit.call(reference)?;
        }
        Ok(())
    }
}
