//! A backend error during an emit: logged once, and never left pending. Whatever logging itself
//! raises is handled like what the backend raises.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::exit;

/// Called once the data is safe (what was not sent is given back). Logs the backend's error, then
/// returns the error to raise, if any: the backend's if it is not an `Exception`
/// (KeyboardInterrupt, SystemExit), else one logging raised that is not an `Exception`. An
/// `Exception` raised by logging is dropped: it cannot be logged, and must not escape.
/// While the interpreter exits, another thread than the exiting one does not log (see
/// [`exit::stopping`]).
pub(crate) fn handle(py: Python<'_>, err: PyErr, pending: usize) -> PyResult<()> {
    let logged = if exit::stopping() {
        Ok(())
    } else {
        log(py, &err, pending)
    };
    if !err.is_instance_of::<PyException>(py) {
        return Err(err);
    }
    match logged {
        Err(e) if !e.is_instance_of::<PyException>(py) => Err(e),
        _ => Ok(()),
    }
}

/// One warning with the traceback, through pyo3-log. pyo3-log cannot return what the Python
/// logger raised (a raising filter or handler, a RecursionError): it leaves it set as the
/// current Python error, so it is taken back here.
fn log(py: Python<'_>, err: &PyErr, pending: usize) -> PyResult<()> {
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
        .unwrap_or_else(|_| describe(py, err));
    log::warn!(
        target: "arroyo_metrics_buffer",
        "metrics backend raised during a flush; {pending} metric call(s) kept for the next flush\n{}",
        traceback.trim_end()
    );
    match PyErr::take(py) {
        Some(raised) => Err(raised),
        None => Ok(()),
    }
}

/// "Type: message" without the traceback, for when formatting it fails (near the recursion
/// limit). Unlike `PyErr`'s `Display`, it cannot fail.
fn describe(py: Python<'_>, err: &PyErr) -> String {
    let name = err
        .get_type(py)
        .qualname()
        .map_or_else(|_| "<exception>".to_owned(), |n| n.to_string());
    match err.value(py).str() {
        Ok(message) => format!("{name}: {}", message.to_string_lossy()),
        Err(_) => format!("{name}: <str() failed>"),
    }
}
