//! Conversion both ways: Python arguments to core values, with errors that name the argument; and
//! core values (names, tags, sums) back to the Python objects arroyo would have passed.
//!
//! The usual arguments (`str`, `int`, `float`, a `dict` of `str`) convert without running any
//! Python code. Anything else may (`numbers.Real`, `__float__`, a `Mapping`'s `items()`, a `repr`
//! for an error message): that is done by calling Python's own `isinstance`, `float`, `list`,
//! `repr` or `str` through [`ffi::call`], under [`gate::python`].

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};

use metrics_buffer::{Key, Value};

use crate::errors::Error;
use crate::{ffi, gate};

/// What conversions call when an argument is not of the usual types (looked up at import).
struct Callables {
    isinstance: Py<PyAny>,
    repr: Py<PyAny>,
    real: Py<PyAny>,
    mapping: Py<PyAny>,
}

static CALLABLES: PyOnceLock<Callables> = PyOnceLock::new();

fn callables(py: Python<'_>) -> &Callables {
    CALLABLES
        .get(py)
        .expect("convert::init runs at module import")
}

/// `isinstance(obj, cls)`.
fn is_instance(obj: &Bound<'_, PyAny>, cls: &Py<PyAny>) -> PyResult<bool> {
    let py = obj.py();
    ffi::call(callables(py).isinstance.bind(py), [obj, cls.bind(py)])?.extract()
}

/// `repr(obj)`, or "?" if that fails.
fn repr_of(obj: &Bound<'_, PyAny>) -> String {
    let py = obj.py();
    ffi::call(callables(py).repr.bind(py), [obj]).map_or_else(|_| "?".into(), |r| r.to_string())
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

/// A name or a tag, as the core keeps it: its UTF-8 bytes. Any `str` is accepted, as arroyo
/// accepts it: one with lone surrogates (which UTF-8 cannot hold) is encoded with
/// `surrogatepass`, and [`ffi::str_from_text`] gives the same text back.
pub(crate) enum Text<'a> {
    /// The `str`'s own UTF-8, borrowed.
    Utf8(&'a str),
    /// The `str` encoded with `surrogatepass`.
    Encoded(PyBackedBytes),
}

impl AsRef<[u8]> for Text<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Text::Utf8(s) => s.as_bytes(),
            Text::Encoded(b) => b,
        }
    }
}

/// [`Text`] that owns what it borrows (tags, whose objects are the mapping's).
pub(crate) enum OwnedText {
    Utf8(PyBackedStr),
    Encoded(PyBackedBytes),
}

impl AsRef<[u8]> for OwnedText {
    fn as_ref(&self) -> &[u8] {
        match self {
            OwnedText::Utf8(s) => s.as_bytes(),
            OwnedText::Encoded(b) => b,
        }
    }
}

/// A `str` with lone surrogates, encoded (which makes a Python exception and a `bytes` object).
fn encoded(s: &Bound<'_, PyString>) -> PyResult<PyBackedBytes> {
    gate::python(|| ffi::surrogatepass_bytes(s).map(PyBackedBytes::from))
}

/// A `str`. (This and the other converters of the recording calls are inlined: a result returned
/// through memory is stored in parts and read back whole, which stalls.)
#[inline(always)]
pub(crate) fn name<'a>(
    function: &'static str,
    arg: &'static str,
    obj: &'a Bound<'_, PyAny>,
) -> PyResult<Text<'a>> {
    match obj.cast::<PyString>() {
        Ok(s) => match s.to_str() {
            Ok(utf8) => Ok(Text::Utf8(utf8)),
            Err(_) => encoded(s).map(Text::Encoded),
        },
        Err(_) => Err(type_error(function, arg, "str", obj)),
    }
}

fn owned_text(s: &Bound<'_, PyString>) -> PyResult<OwnedText> {
    match PyBackedStr::try_from(s.clone()) {
        Ok(utf8) => Ok(OwnedText::Utf8(utf8)),
        Err(_) => encoded(s).map(OwnedText::Encoded),
    }
}

/// A `bool` (and nothing else, not even an `int`).
pub(crate) fn boolean(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    match obj.cast::<PyBool>() {
        Ok(b) => Ok(b.is_true()),
        Err(_) => Err(type_error(function, arg, "bool", obj)),
    }
}

/// An `int` that fits an i64.
#[inline(always)]
pub(crate) fn int(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<i64> {
    let Ok(int) = obj.cast::<PyInt>() else {
        return Err(type_error(function, arg, "int", obj));
    };
    ffi::int_value(int).ok_or_else(|| too_big(function, arg, obj))
}

/// A counter's delta: an `int` that fits an i64, or a `float`, which arroyo's `+=` also takes (the
/// key's sum is then a float, as arroyo's becomes).
#[inline(always)]
pub(crate) fn delta(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<Value> {
    if let Ok(int) = obj.cast::<PyInt>() {
        return ffi::int_value(int)
            .map(Value::Int)
            .ok_or_else(|| too_big(function, arg, obj));
    }
    match obj.cast::<PyFloat>() {
        Ok(f) => Ok(Value::Float(f.value())),
        Err(_) => Err(type_error(function, arg, "int or float", obj)),
    }
}

#[cold]
fn too_big(function: &'static str, arg: &'static str, obj: &Bound<'_, PyAny>) -> PyErr {
    let shown = gate::python(|| Ok(repr_of(obj))).unwrap_or_default();
    Error::Overflow(format!(
        "{function}() argument '{arg}' does not fit a 64-bit signed integer: {shown}"
    ))
    .into()
}

/// Looks up what [`Callables`] holds (at module import).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let builtins = py.import("builtins")?;
    let callables = Callables {
        isinstance: builtins.getattr("isinstance")?.unbind(),
        repr: builtins.getattr("repr")?.unbind(),
        real: py.import("numbers")?.getattr("Real")?.unbind(),
        mapping: py.import("collections.abc")?.getattr("Mapping")?.unbind(),
    };
    let _ = CALLABLES.set(py, callables);
    Ok(())
}

/// A float, an int, or any other `numbers.Real`.
#[inline(always)]
pub(crate) fn real(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(f.value());
    }
    if obj.is_exact_instance_of::<PyInt>() {
        return obj
            .extract::<f64>()
            .map_err(|e| Error::Overflow(format!("{function}() argument '{arg}': {e}")).into());
    }
    gate::python(|| {
        if obj.is_instance_of::<PyInt>() || is_instance(obj, &callables(obj.py()).real)? {
            return ffi::float_of(obj).map_err(|e| {
                Error::Overflow(format!("{function}() argument '{arg}': {e}")).into()
            });
        }
        Err(type_error(function, arg, "a real number", obj))
    })
}

/// A time in seconds: whatever `float()` takes. arroyo subtracts `time_of_produce` from
/// `time.time()`, which works for what a test's `mock.patch("time.time")` returns (a `MagicMock`,
/// whose `float()` is 1.0), so refusing that would raise where arroyo does not.
pub(crate) fn seconds(
    function: &'static str,
    arg: &'static str,
    obj: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(f.value());
    }
    // Anything else goes through `float()`'s protocol, which may run Python code.
    gate::python(|| {
        ffi::float_of(obj).map_err(|_| type_error(function, arg, "a number of seconds", obj))
    })
}

/// `None`, or a mapping of `str` to `str`, as owned pairs in the mapping's order.
pub(crate) fn tags(
    function: &'static str,
    arg: &'static str,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<(OwnedText, OwnedText)>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    let pair = |k: Bound<'_, PyAny>, v: Bound<'_, PyAny>| -> PyResult<(OwnedText, OwnedText)> {
        match (k.cast::<PyString>(), v.cast::<PyString>()) {
            (Ok(ks), Ok(vs)) => Ok((owned_text(ks)?, owned_text(vs)?)),
            _ => Err(gate::python(|| {
                Ok(PyTypeError::new_err(format!(
                    "{function}() argument '{arg}' must map str to str, got {}: {} ({} to {})",
                    repr_of(&k),
                    repr_of(&v),
                    type_name(&k),
                    type_name(&v),
                )))
            })
            .unwrap_or_else(|refused| refused)),
        }
    };
    if let Ok(dict) = obj.cast::<PyDict>() {
        return dict.iter().map(|(k, v)| pair(k, v)).collect();
    }
    // The `Mapping` check itself may run Python code (an ABC's registry), and so may `items()`
    // and iterating what it returns: `list(obj.items())` runs all of it through `ffi`.
    gate::python(|| {
        let py = obj.py();
        if !is_instance(obj, &callables(py).mapping)? {
            return Err(type_error(
                function,
                arg,
                "None or a mapping of str to str",
                obj,
            ));
        }
        let items = ffi::call_method(intern!(py, "items"), &[obj.as_ptr()], None)?;
        let list = py.get_type::<PyList>().into_any();
        let items = ffi::call(&list, [&items])?.cast_into::<PyList>()?;
        items
            .iter()
            .map(|item| {
                let (k, v) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
                pair(k, v)
            })
            .collect()
    })
}

/// A key's tags as a new dict, or None when it has none.
pub(crate) fn tags_dict<'py>(py: Python<'py>, key: &Key) -> PyResult<Option<Bound<'py, PyDict>>> {
    if key.tags.is_empty() {
        return Ok(None);
    }
    let tags = PyDict::new(py);
    for (k, v) in key.tags.iter() {
        tags.set_item(ffi::str_from_text(py, k)?, ffi::str_from_text(py, v)?)?;
    }
    Ok(Some(tags))
}

pub(crate) fn value_object(py: Python<'_>, value: Value) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
    })
}
