//! Emission: a window's values to the Python backend, the way arroyo's own code calls it.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::backend::Backend;
use crate::core::{Emit, Key, Kind, Value};
use crate::{clock, exit, failure};

/// A key's tags as a new dict, or None when it has none.
pub(crate) fn tags_dict<'py>(py: Python<'py>, key: &Key) -> PyResult<Option<Bound<'py, PyDict>>> {
    if key.tags.is_empty() {
        return Ok(None);
    }
    let tags = PyDict::new(py);
    for (k, v) in key.tags.iter() {
        tags.set_item(&**k, &**v)?;
    }
    Ok(Some(tags))
}

pub(crate) fn value_object(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
    })
}

/// Sends the emit's window, then every window asked for by other threads meanwhile. A backend
/// error gives back what was not sent, and is then handled by [`failure::handle`].
/// A backend the garbage collector cleared is not called: the values go back.
pub(crate) fn emit_all(py: Python<'_>, mut emit: Emit<'_>, backend: &Backend) -> PyResult<()> {
    let Some(metrics) = backend.get(py) else {
        return Ok(());
    };
    loop {
        let mut calls = Calls::new(metrics.clone(), backend.keyword_args);
        let failure = emit.send(|e| calls.call(e.kind, e.key, e.value)).err();
        let pending = emit.unsent();
        let now = clock::now(py);
        let next = emit.end(now.as_ref().ok().copied());
        if let Some(err) = failure {
            failure::handle(py, err, pending)?;
        }
        // A clock error: the next window, if any, goes back (dropping its emit); so does one
        // handed over while the interpreter exits.
        now?;
        match next {
            Some(next) if !exit::stopping() => emit = next,
            _ => return Ok(()),
        }
    }
}

/// The keyword names of the three call shapes: all three, name and value, tags only.
static KWNAMES: PyOnceLock<[Py<PyTuple>; 3]> = PyOnceLock::new();

/// Makes the keyword names (at module import). Interned, as a Python call site's are: CPython
/// matches keyword names to parameters by identity first and compares strings only after that,
/// which was a fifth of a flush's instructions with plain strings (callgrind, 3.11-3.14).
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
    metrics: Bound<'py, PyAny>,
    keyword_args: bool,
    last: Option<LastKey<'py>>,
}

/// A key (by address, within the window being emitted), its name and its tags as Python objects.
type LastKey<'py> = (*const Key, Bound<'py, PyString>, Option<Bound<'py, PyDict>>);

impl<'py> Calls<'py> {
    fn new(metrics: Bound<'py, PyAny>, keyword_args: bool) -> Self {
        Calls {
            metrics,
            keyword_args,
            last: None,
        }
    }

    fn call(&mut self, kind: Kind, key: &Key, value: Value) -> PyResult<()> {
        let py = self.metrics.py();
        let [all, name_value, tags_only] =
            KWNAMES.get(py).expect("emit::init runs at module import");
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
