//! What a backend failure logs, and what it raises. A backend that is down, or that fails and
//! works by turns, cannot flood the logs: the first failure is logged with its traceback, then at
//! most one failure record per interval, and one line when the backend works again after one (the
//! policy is the core's
//! [`FailureLog`](metrics_buffer::FailureLog)). Whatever logging itself raises is handled like what
//! the backend raises, and no error is left pending.
//!
//! Records go to the `arroyo_metrics_buffer` logger, looked up on each record (so logging
//! configured at any time is honoured), and are made by calling it through [`ffi`], as every call
//! into Python is.

use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString};

use crate::{ffi, gate};
use metrics_buffer::{FailureReport, Report};

/// After an emit in which the backend raised `err` (`unsent` calls given back): logs what
/// `report` says, then returns the error to raise, if any: the backend's if it is not an
/// `Exception` (KeyboardInterrupt, SystemExit), else one logging raised that is not an
/// `Exception`. An `Exception` raised by logging is dropped: it cannot be logged, and must not
/// escape. Nothing is logged once the interpreter exits on another thread (see [`gate`]).
pub(crate) fn failed(
    py: Python<'_>,
    err: PyErr,
    unsent: usize,
    report: Option<FailureReport>,
    interval: Duration,
) -> PyResult<()> {
    let logged = match report {
        Some(report) if !gate::stopping() => {
            let message = match report.report {
                Report::First => format!(
                    "metrics backend raised during a flush; {unsent} metric call(s) kept for the \
                     next flush (while it keeps failing, this buffer logs one summary every {} s)\n{}",
                    seconds(interval),
                    traceback(py, &err).trim_end()
                ),
                Report::StillFailing {
                    failed,
                    since,
                    recovered,
                } => format!(
                    "metrics backend still failing: {failed} more failed flush(es) in the last \
                     {} s{}; {} metric call(s) waiting, {} sample(s) dropped since the last \
                     report; the last error: {}",
                    seconds(since),
                    match recovered {
                        0 => String::new(),
                        n => format!(", and it worked again {n} time(s) in between"),
                    },
                    report.waiting,
                    report.dropped,
                    describe(py, &err)
                ),
                Report::Recovered { .. } => unreachable!("a failed flush is not a recovery"),
            };
            warn(py, &message)
        }
        _ => Ok(()),
    };
    if !err.is_instance_of::<PyException>(py) {
        return Err(err);
    }
    raise_unless_exception(py, logged)
}

/// After an emit that worked: the one line that says so, if the flushes before it had failed.
pub(crate) fn recovered(py: Python<'_>, report: Option<FailureReport>) -> PyResult<()> {
    let Some(FailureReport {
        report: Report::Recovered { failed },
        ..
    }) = report
    else {
        return Ok(());
    };
    if gate::stopping() {
        return Ok(());
    }
    let logged = warn(
        py,
        &format!(
            "metrics backend works again after {failed} failed flush(es); what was kept has been \
             emitted"
        ),
    );
    raise_unless_exception(py, logged)
}

fn raise_unless_exception(py: Python<'_>, logged: PyResult<()>) -> PyResult<()> {
    match logged {
        Err(e) if !e.is_instance_of::<PyException>(py) => Err(e),
        _ => Ok(()),
    }
}

/// `1`, `0.5`, `60`: seconds as a person writes them.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// `logging.getLogger` and `traceback.format_exception`, looked up at module import.
struct Callables {
    get_logger: Py<PyAny>,
    format_exception: Py<PyAny>,
}

static CALLABLES: PyOnceLock<Callables> = PyOnceLock::new();

pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    let callables = Callables {
        get_logger: py.import("logging")?.getattr("getLogger")?.unbind(),
        format_exception: py
            .import("traceback")?
            .getattr("format_exception")?
            .unbind(),
    };
    let _ = CALLABLES.set(py, callables);
    Ok(())
}

fn callables(py: Python<'_>) -> &Callables {
    CALLABLES
        .get(py)
        .expect("report::init runs at module import")
}

/// `logging.getLogger("arroyo_metrics_buffer").<level>(message)`; what it raises is returned.
pub(crate) fn log(py: Python<'_>, level: &Bound<'_, PyString>, message: &str) -> PyResult<()> {
    let name = intern!(py, "arroyo_metrics_buffer").clone().into_any();
    let logger = ffi::call(callables(py).get_logger.bind(py), [&name])?;
    let message = PyString::new(py, message);
    ffi::call_method(level, &[logger.as_ptr(), message.as_ptr()], None)?;
    Ok(())
}

/// One warning (see [`log`]).
pub(crate) fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    log(py, intern!(py, "warning"), message)
}

/// The error with its traceback, as Python prints it; "Type: message" if formatting it fails
/// (near the recursion limit).
fn traceback(py: Python<'_>, err: &PyErr) -> String {
    // The traceback as fetched: an exception that no Python `except` or `finally` handled has it
    // only there, not yet in its `__traceback__`.
    let tb = err
        .traceback(py)
        .map_or_else(|| py.None().into_bound(py), Bound::into_any);
    let (kind, value) = (err.get_type(py).into_any(), err.value(py).as_any());
    ffi::call(callables(py).format_exception.bind(py), [&kind, value, &tb])
        .and_then(|lines| lines.cast_into::<PyList>().map_err(PyErr::from))
        .map(|lines| {
            lines
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .concat()
        })
        .unwrap_or_else(|_| describe(py, err))
}

/// "Type: message" without the traceback. Unlike `PyErr`'s `Display`, it cannot fail.
pub(crate) fn describe(py: Python<'_>, err: &PyErr) -> String {
    let name = type_name(py, err);
    match err.value(py).str() {
        Ok(message) => format!("{name}: {}", message.to_string_lossy()),
        Err(_) => format!("{name}: <str() failed>"),
    }
}

/// The name of `err`'s type (`KeyboardInterrupt`).
pub(crate) fn type_name(py: Python<'_>, err: &PyErr) -> String {
    err.get_type(py)
        .qualname()
        .map_or_else(|_| "<exception>".to_owned(), |n| n.to_string())
}
