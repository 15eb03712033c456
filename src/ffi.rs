//! The one door for raw CPython: the calls into Python and the CPython reads that pyo3 does not
//! wrap, each behind a safe function.
//!
//! Calls into Python (a backend, logging, a replaced `time.time`, a conversion that runs Python
//! code) need no frame of their own for interpreter exit: a thread that finalization ends with
//! `pthread_exit` while one of them is on its stack unwinds over our frames, which are built with
//! `panic = "abort"` and so have nothing to run there (Cargo.toml; docs/architecture.md).

use pyo3::ffi::{self, Py_ssize_t, PyObject};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyString, PyTuple};

/// The raw arguments of a call: at most four objects, borrowed for the call.
fn raw<const N: usize>(args: [&Bound<'_, PyAny>; N]) -> [*mut PyObject; N] {
    args.map(Bound::as_ptr)
}

/// `callable(*args)`, where `callable` may be any Python object (running Python code).
pub(crate) fn call<'py, const N: usize>(
    callable: &Bound<'py, PyAny>,
    args: [&Bound<'py, PyAny>; N],
) -> PyResult<Bound<'py, PyAny>> {
    let args = raw(args);
    // SAFETY: `callable` and every pointer in `args` are live objects, borrowed for the call;
    // PY_VECTORCALL_ARGUMENTS_OFFSET is not set, so `args` is not written. The result is a new
    // reference, or NULL with an error set, which `from_owned_ptr_or_err` takes.
    unsafe {
        let result =
            ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), N, std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(callable.py(), result)
    }
}

/// `object.name(*args, **kwargs)`: `args` starts with `object`, then the positional values, then
/// the values of the keywords named in `kwnames` (as a Python call site passes them).
pub(crate) fn call_method<'py>(
    name: &Bound<'py, PyString>,
    args: &[*mut PyObject],
    kwnames: Option<&Bound<'py, PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    let keywords = kwnames.map_or(0, |k| k.len());
    assert!(keywords < args.len(), "the object, then the arguments");
    let kwnames = kwnames.map_or(std::ptr::null_mut(), |k| k.as_ptr());
    // SAFETY: the caller passes live objects in `args` (built from `Bound`s it holds across this
    // call), and `name` and `kwnames` are live; the count is checked above;
    // PY_VECTORCALL_ARGUMENTS_OFFSET is not set, so `args` is not written. The result is a new
    // reference, or NULL with an error set.
    unsafe {
        let result = ffi::PyObject_VectorcallMethod(
            name.as_ptr(),
            args.as_ptr(),
            args.len() - keywords,
            kwnames,
        );
        Bound::from_owned_ptr_or_err(name.py(), result)
    }
}

/// `obj` as a float the way CPython's `PyFloat_AsDouble` (and so arroyo's arithmetic) takes it:
/// through its type's `__float__`, else `__index__`; a `TypeError` if it has neither. Unlike
/// `float()`, it does not parse strings.
pub(crate) fn float_of(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    let py = obj.py();
    // SAFETY: `obj`'s type is a live type object; PyType_GetSlot reads its slot table (any type,
    // static or heap, from 3.10) and returns NULL for a slot it does not have.
    let convertible = unsafe {
        let tp = ffi::Py_TYPE(obj.as_ptr());
        !ffi::PyType_GetSlot(tp, ffi::Py_nb_float).is_null()
            || !ffi::PyType_GetSlot(tp, ffi::Py_nb_index).is_null()
    };
    if !convertible {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "must be real number, not {}",
            obj.get_type()
                .name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string())
        )));
    }
    // SAFETY: `obj` is live; PyNumber_Float returns a new reference to a float, or NULL with an
    // error set (what `__float__` or `__index__` raised).
    let float = unsafe {
        let result = ffi::PyNumber_Float(obj.as_ptr());
        Bound::from_owned_ptr_or_err(py, result)?
    };
    Ok(float.cast_into::<pyo3::types::PyFloat>()?.value())
}

/// The error handler that lets UTF-8 carry lone surrogates (as CPython's own `surrogatepass`).
const SURROGATEPASS: &std::ffi::CStr = c"surrogatepass";

/// `text` (UTF-8, with lone surrogates as `surrogatepass` encodes them) as a `str`: the same
/// text that [`surrogatepass_bytes`] or `str.encode()` was given.
pub(crate) fn str_from_text<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyString>> {
    // A slice is never longer than isize::MAX bytes.
    let len = text.len() as Py_ssize_t;
    // SAFETY: the pointer and length describe `text`, alive across the call; the handler name is a
    // static C string. The result is a new reference, or NULL with an error set, which
    // `from_owned_ptr_or_err` takes; a non-NULL result of PyUnicode_DecodeUTF8 is a `str`.
    unsafe {
        let decoded = ffi::PyUnicode_DecodeUTF8(text.as_ptr().cast(), len, SURROGATEPASS.as_ptr());
        Bound::from_owned_ptr_or_err(py, decoded).map(|s| s.cast_into_unchecked())
    }
}

/// A `str` that UTF-8 cannot hold as it is (it has lone surrogates), as UTF-8 bytes with the
/// surrogates encoded the way CPython's `surrogatepass` does.
pub(crate) fn surrogatepass_bytes<'py>(
    text: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: `text` is a live `str`; the encoding and handler names are static C strings. The
    // result is a new reference, or NULL with an error set; a non-NULL result is a `bytes`.
    unsafe {
        let encoded = ffi::PyUnicode_AsEncodedString(
            text.as_ptr(),
            c"utf-8".as_ptr(),
            SURROGATEPASS.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(text.py(), encoded).map(|b| b.cast_into_unchecked())
    }
}

/// An `int`'s value, `None` if it does not fit an i64.
#[inline]
pub(crate) fn int_value(int: &Bound<'_, pyo3::types::PyInt>) -> Option<i64> {
    let mut overflow = 0;
    // SAFETY: `int` is a live `int` (or subclass) object, for which PyLong_AsLongLongAndOverflow
    // reads the value without calling `__index__`, and sets no error: it reports a value beyond
    // the range in `overflow` only.
    let value = unsafe { ffi::PyLong_AsLongLongAndOverflow(int.as_ptr(), &mut overflow) };
    (overflow == 0).then_some(value)
}

/// The address of the C function behind a builtin function object. time-machine swaps this
/// pointer inside the `time.time` builtin itself instead of replacing the object.
#[inline]
pub(crate) fn c_function(builtin: &Bound<'_, PyCFunction>) -> usize {
    // SAFETY: a `PyCFunction` instance is a PyCFunctionObject, whose method table pointer is set
    // at creation and outlives it; only the function pointer's address is read.
    unsafe {
        let function = builtin.as_ptr().cast::<ffi::PyCFunctionObject>();
        (*(*function).m_ml).ml_meth.PyCFunction as usize
    }
}

/// CLOCK_REALTIME as (seconds, nanoseconds), read as CPython's `time.time()` reads it; or, when
/// `coarse` and the system has one, its coarse variant (Linux's CLOCK_REALTIME_COARSE: the time
/// of the last timer tick, a few milliseconds' resolution, read without the time-stamp counter).
#[inline]
pub(crate) fn realtime(coarse: bool) -> Option<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = if coarse {
        libc::CLOCK_REALTIME_COARSE
    } else {
        libc::CLOCK_REALTIME
    };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = {
        let _ = coarse;
        libc::CLOCK_REALTIME
    };
    // SAFETY: `ts` is a valid timespec to write to.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    #[allow(clippy::useless_conversion)] // `time_t` and `c_long` are not i64 on every target
    Some((i64::from(ts.tv_sec), i64::from(ts.tv_nsec)))
}

/// A dict's version tag (CPython 3.11): changed by every change to that dict, and unique across
/// dicts, so an unchanged tag means an unchanged dict.
#[cfg(not(Py_3_12))]
#[inline]
pub(crate) fn dict_version(dict: &Bound<'_, pyo3::types::PyDict>) -> u64 {
    // SAFETY: a `PyDict` is a PyDictObject, whose `ma_version_tag` is a plain field on 3.11.
    unsafe { (*dict.as_ptr().cast::<ffi::PyDictObject>()).ma_version_tag }
}

/// CPython's dict watchers (3.12+, public API that pyo3-ffi leaves out).
#[cfg(Py_3_12)]
pub(crate) mod dict_watch {
    use std::ffi::CStr;
    use std::marker::PhantomData;
    use std::os::raw::c_int;
    use std::sync::OnceLock;

    use pyo3::ffi::{self, PyObject};
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    /// A change to a watched dict, reported before it takes place.
    pub(crate) enum Change<'a> {
        /// `key` is being set (added or modified) to the object at address `value`.
        Set { key: Key<'a>, value: usize },
        /// `key` is being deleted.
        Deleted { key: Key<'a> },
        /// The whole dict: cloned, cleared or deallocated.
        Whole,
    }

    /// The key of a [`Change`], valid for the callback only.
    pub(crate) struct Key<'a>(*mut PyObject, PhantomData<&'a ()>);

    impl Key<'_> {
        /// Whether it is the `str` `name` (ASCII). Reads only, allocates nothing.
        pub(crate) fn is(&self, name: &CStr) -> bool {
            // SAFETY: CPython passes a live key (or NULL, checked) for the duration of the
            // callback; PyUnicode_Check reads its type, and the comparison of a `str` with an
            // ASCII C string neither fails nor allocates.
            unsafe {
                !self.0.is_null()
                    && ffi::PyUnicode_Check(self.0) != 0
                    && ffi::PyUnicode_CompareWithASCIIString(self.0, name.as_ptr()) == 0
            }
        }
    }

    type Callback =
        unsafe extern "C" fn(c_int, *mut PyObject, *mut PyObject, *mut PyObject) -> c_int;

    unsafe extern "C" {
        fn PyDict_AddWatcher(callback: Callback) -> c_int;
    }

    /// The one handler (one dict is watched per process).
    static HANDLER: OnceLock<fn(Change<'_>)> = OnceLock::new();

    // `PyDict_WatchEvent`, a C enum passed as an int, in CPython's order (3.12-3.15).
    const ADDED: c_int = 0;
    const MODIFIED: c_int = 1;
    const DELETED: c_int = 2;

    /// Runs inside every change to the watched dict: it must neither fail nor call Python, and
    /// the handler is a plain function that does neither.
    unsafe extern "C" fn changed(
        event: c_int,
        _dict: *mut PyObject,
        key: *mut PyObject,
        new_value: *mut PyObject,
    ) -> c_int {
        let key = Key(key, PhantomData);
        let change = match event {
            ADDED | MODIFIED => Change::Set {
                key,
                value: new_value as usize,
            },
            DELETED => Change::Deleted { key },
            _ => Change::Whole,
        };
        if let Some(handler) = HANDLER.get() {
            handler(change);
        }
        0
    }

    /// Calls `handler` for each change to `dict` from now on; false if that cannot be (a
    /// handler is set already, or CPython has no watcher left), and then no error is pending.
    pub(crate) fn watch(dict: &Bound<'_, PyDict>, handler: fn(Change<'_>)) -> bool {
        if HANDLER.set(handler).is_err() {
            return false;
        }
        // SAFETY: `dict` is a live dict and we hold the GIL (its token is in `dict`); an error is
        // cleared here, so none is left pending.
        unsafe {
            let id = PyDict_AddWatcher(changed);
            if id < 0 || ffi::PyDict_Watch(id, dict.as_ptr()) < 0 {
                ffi::PyErr_Clear();
                return false;
            }
        }
        true
    }
}

/// The lock of a buffer's state under the GIL: none at all. On a CPython with the GIL, every call
/// into the buffer's core is made with the GIL held, and none gives it up while the state is
/// locked (the core runs only its own code there: no call into Python, so no eval breaker, and no
/// `detach`), so the GIL already keeps the state to one thread at a time, and a lock would only add
/// two atomic operations to every call. A free-threaded CPython gets `std::sync::Mutex` instead
/// (`locked::StateLock`).
#[cfg(not(Py_GIL_DISABLED))]
pub(crate) struct GilCell<T>(std::cell::UnsafeCell<T>);

// SAFETY: the value is only reached through `lock`, with the GIL held (see above), so no two
// threads ever reach it at once; it is sent between threads as a `T` is.
#[cfg(not(Py_GIL_DISABLED))]
unsafe impl<T: Send> Sync for GilCell<T> {}

#[cfg(not(Py_GIL_DISABLED))]
impl<T: Send> metrics_buffer::Lock<T> for GilCell<T> {
    type Guard<'a>
        = &'a mut T
    where
        T: 'a;

    fn new(value: T) -> Self {
        GilCell(std::cell::UnsafeCell::new(value))
    }

    fn lock(&self) -> &mut T {
        // SAFETY: PyGILState_Check only reads this thread's state.
        debug_assert!(unsafe { ffi::PyGILState_Check() } == 1, "the GIL is held");
        // SAFETY: this thread holds the GIL, which no other thread can take before this borrow
        // ends (the core neither calls Python nor gives the GIL up while locked, and never locks
        // twice at once), so this is the only reference to the value.
        unsafe { &mut *self.0.get() }
    }
}
