//! Argument conversion: Python arguments to core values, with errors that name the argument.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyInt, PyMapping, PyString};

use crate::errors::Error;

static NUMBERS_REAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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

/// A `str`.
pub(crate) fn name<'a>(
    function: &'static str,
    arg: &'static str,
    obj: &'a Bound<'_, PyAny>,
) -> PyResult<&'a str> {
    match obj.cast::<PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(type_error(function, arg, "str", obj)),
    }
}

/// An `int` that fits an i64.
pub(crate) fn int(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<i64> {
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

/// Looks up `numbers.Real` (at module import).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let real = py.import("numbers")?.getattr("Real")?;
    let _ = NUMBERS_REAL.set(py, real.unbind());
    Ok(())
}

/// A float, an int, or any other `numbers.Real`.
pub(crate) fn real(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(f.value());
    }
    let py = obj.py();
    let real = NUMBERS_REAL
        .get(py)
        .expect("args::init runs at module import");
    if obj.is_instance_of::<PyInt>() || obj.is_instance(real.bind(py))? {
        return obj
            .extract::<f64>()
            .map_err(|e| Error::Overflow(format!("{function}() argument '{arg}': {e}")).into());
    }
    Err(type_error(function, arg, "a real number", obj))
}

/// A time in seconds: whatever `float()` takes. arroyo subtracts `time_of_produce` from
/// `time.time()`, which works for what a test's `mock.patch("time.time")` returns (a `MagicMock`,
/// whose `float()` is 1.0), so refusing that would raise where arroyo does not.
pub(crate) fn seconds(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    // pyo3 reads an exact float directly; anything else goes through `float()`'s protocol.
    obj.extract::<f64>()
        .map_err(|_| type_error(function, arg, "a number of seconds", obj))
}

/// `None`, or a mapping of `str` to `str`, as owned pairs in the mapping's order.
pub(crate) fn tags(
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
