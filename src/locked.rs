//! The core buffer as the bindings use it: with the lock that suits this CPython.

use metrics_buffer::{Buffer, Emit, State};

/// What keeps a buffer's state to one thread at a time: the GIL itself where there is one (see
/// `ffi::GilCell`), a mutex on a free-threaded CPython.
#[cfg(not(Py_GIL_DISABLED))]
pub(crate) type StateLock = crate::ffi::GilCell<State>;
#[cfg(Py_GIL_DISABLED)]
pub(crate) type StateLock = std::sync::Mutex<State>;

/// The core buffer, with that lock.
pub(crate) type Core = Buffer<StateLock>;
/// An emit of it.
pub(crate) type CoreEmit<'a> = Emit<'a, StateLock>;
