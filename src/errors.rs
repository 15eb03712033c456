//! The one error type of the Python layer, mapped onto built-in exceptions.

use pyo3::PyErr;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};

use metrics_buffer::CoreError;

pub enum Error {
    /// `function() argument 'arg' must be <expected>, not <type>`
    Type {
        function: &'static str,
        arg: &'static str,
        expected: &'static str,
        got: String,
    },
    Overflow(String),
    Value(String),
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Overflow(e.to_string())
    }
}

impl From<Error> for PyErr {
    fn from(e: Error) -> Self {
        match e {
            Error::Type {
                function,
                arg,
                expected,
                got,
            } => PyTypeError::new_err(format!(
                "{function}() argument '{arg}' must be {expected}, not {got}"
            )),
            Error::Overflow(msg) => PyOverflowError::new_err(msg),
            Error::Value(msg) => PyValueError::new_err(msg),
        }
    }
}
