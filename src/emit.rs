//! Emission: a window's values to the Python backend, the way arroyo's own code calls it.

use std::time::Instant;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::backend::Backend;
use crate::convert::{tags_dict, value_object};
use crate::locked::{Core, CoreEmit};
use crate::{clock, ffi, gate, report};
use metrics_buffer::{Emission, Key, Kind};

/// How an emit ended short.
enum Stop {
    /// The backend raised.
    Failed(PyErr),
    /// The interpreter began to exit on another thread: the rest is left for the exit hook.
    Exiting,
}

/// Sends the emit's window, then every window asked for by other threads meanwhile. A backend
/// error gives back what was not sent, and is then handled by [`report::failed`]. The caller
/// holds a [`gate::Pass`]; once exit begins on another thread, the emit stops before its next
/// backend call and gives back what it did not send, so that no call into Python is left in
/// progress here for finalization to cut short. A backend the garbage collector cleared is not
/// called: the values go back.
pub(crate) fn emit_all(
    py: Python<'_>,
    mut emit: CoreEmit<'_>,
    core: &Core,
    backend: &Backend,
) -> PyResult<()> {
    let Some(metrics) = backend.get(py) else {
        return Ok(());
    };
    loop {
        let mut calls = Calls::new(py, backend.keyword_args);
        let sent = emit.send(|e| {
            if gate::stopping() {
                return Err(Stop::Exiting);
            }
            calls.call(&metrics, &e).map_err(Stop::Failed)
        });
        let failure = match sent {
            Ok(()) => None,
            Err(Stop::Exiting) => {
                emit.give_back();
                return Ok(());
            }
            Err(Stop::Failed(err)) => Some(err),
        };
        let unsent = emit.unsent();
        let now = clock::now(py, false);
        let next = emit.end(now.as_ref().ok().copied());
        let report = core.failure_report(failure.is_some(), Instant::now());
        match failure {
            Some(err) => report::failed(py, err, unsent, report, core.failure_interval())?,
            None => report::recovered(py, report)?,
        }
        // A clock error: the next window, if any, goes back (dropping its emit).
        now?;
        match next {
            Some(next) if gate::stopping() => {
                next.give_back();
                return Ok(());
            }
            Some(next) => emit = next,
            None => return Ok(()),
        }
    }
}

/// Backend calls as data, for the exit hook's Python loop to make them as [`emit_all`] would:
/// `(metrics, method name, args, kwargs or None)`. Keeps the last key's objects from one call to
/// the next, as [`emit_all`] does.
pub(crate) struct Described<'py>(Calls<'py>);

impl<'py> Described<'py> {
    pub(crate) fn new(py: Python<'py>, keyword_args: bool) -> Self {
        Described(Calls::new(py, keyword_args))
    }

    pub(crate) fn call(
        &mut self,
        metrics: &Bound<'py, PyAny>,
        e: &Emission<'_>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (method, args, kwargs) = self.0.shape(e)?;
        PyTuple::new(
            self.0.py,
            [
                metrics.clone(),
                PyString::intern(self.0.py, method).into_any(),
                args.into_any(),
                kwargs.map_or_else(|| self.0.py.None().into_bound(self.0.py), Bound::into_any),
            ],
        )
    }
}

/// The keyword names of the three call shapes: all three, name and value, tags only.
static KWNAMES: PyOnceLock<[Py<PyTuple>; 3]> = PyOnceLock::new();

/// Makes the keyword names (at module import). Interned, as a Python call site's are: CPython
/// matches keyword names to parameters by identity first and compares strings only after that,
/// which plain strings would make slower (docs/performance.md).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let interned = |names: &[&str]| PyTuple::new(py, names.iter().map(|n| PyString::intern(py, n)));
    let names = [
        interned(&["name", "value", "tags"])?.unbind(),
        interned(&["name", "value"])?.unbind(),
        interned(&["tags"])?.unbind(),
    ];
    let _ = KWNAMES.set(py, names);
    Ok(())
}

/// Calls a metrics backend the way arroyo's own code does: `timing(name, value)` /
/// `increment(name, value)`, `tags=` only when there are tags, or all three as keywords. It uses
/// vectorcall with keyword names (as a Python call site does, no kwargs dict), and reuses the last
/// key's name string and tags, since a window's samples of one key come one after another. Each
/// call gets its own copy of the tags dict, so a backend that changes it changes nothing else.
struct Calls<'py> {
    py: Python<'py>,
    keyword_args: bool,
    last: Option<LastKey<'py>>,
}

/// A key (by address, within the window being emitted), its name and its tags as Python objects.
type LastKey<'py> = (*const Key, Bound<'py, PyString>, Option<Bound<'py, PyDict>>);

/// One call's method name, its positional values and its keyword values.
type Shape<'py> = (
    &'static str,
    Bound<'py, PyTuple>,
    Option<Bound<'py, PyDict>>,
);

impl<'py> Calls<'py> {
    fn new(py: Python<'py>, keyword_args: bool) -> Self {
        Calls {
            py,
            keyword_args,
            last: None,
        }
    }

    fn method(kind: Kind) -> &'static str {
        match kind {
            Kind::Counter => "increment",
            Kind::Timer | Kind::Sample => "timing",
        }
    }

    /// The emission's name, a fresh copy of its tags (if any) and its value.
    #[allow(clippy::type_complexity)]
    fn parts(
        &mut self,
        e: &Emission<'_>,
    ) -> PyResult<(
        Bound<'py, PyString>,
        Option<Bound<'py, PyDict>>,
        Bound<'py, PyAny>,
    )> {
        let key: &Key = e.key;
        if self
            .last
            .as_ref()
            .is_none_or(|(k, ..)| !std::ptr::eq(*k, key))
        {
            let name = ffi::str_from_text(self.py, &key.name)?;
            self.last = Some((key, name, tags_dict(self.py, key)?));
        }
        let (_, name, template) = self.last.as_ref().expect("set above");
        let tags = template.as_ref().map(|t| t.copy()).transpose()?;
        Ok((name.clone(), tags, value_object(self.py, e.value)?))
    }

    /// Makes the call.
    fn call(&mut self, metrics: &Bound<'py, PyAny>, e: &Emission<'_>) -> PyResult<()> {
        let py = self.py;
        let [all, name_value, tags_only] =
            KWNAMES.get(py).expect("emit::init runs at module import");
        let (name, tags, value) = self.parts(e)?;
        let method = match e.kind {
            Kind::Counter => intern!(py, "increment"),
            Kind::Timer | Kind::Sample => intern!(py, "timing"),
        };
        let mut args = [
            metrics.as_ptr(),
            name.as_ptr(),
            value.as_ptr(),
            std::ptr::null_mut(),
        ];
        if let Some(tags) = &tags {
            args[3] = tags.as_ptr();
        }
        // The object whose method is called, then the positionals, then the values of the
        // keywords named in `kwnames`.
        let (args, kwnames) = match (self.keyword_args, tags.is_some()) {
            (true, true) => (&args[..4], Some(all)),
            (true, false) => (&args[..3], Some(name_value)),
            (false, true) => (&args[..4], Some(tags_only)),
            (false, false) => (&args[..3], None),
        };
        ffi::call_method(method, args, kwnames.map(|k| k.bind(py)))?;
        Ok(())
    }

    /// The call as data: the same shape as [`Calls::call`] makes.
    fn shape(&mut self, e: &Emission<'_>) -> PyResult<Shape<'py>> {
        let py = self.py;
        let (name, tags, value) = self.parts(e)?;
        let method = Self::method(e.kind);
        if self.keyword_args {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "name"), name)?;
            kwargs.set_item(intern!(py, "value"), value)?;
            if let Some(tags) = tags {
                kwargs.set_item(intern!(py, "tags"), tags)?;
            }
            return Ok((method, PyTuple::empty(py), Some(kwargs)));
        }
        let args = PyTuple::new(py, [name.into_any(), value])?;
        let kwargs = match tags {
            Some(tags) => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "tags"), tags)?;
                Some(kwargs)
            }
            None => None,
        };
        Ok((method, args, kwargs))
    }
}
