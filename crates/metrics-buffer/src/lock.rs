//! What keeps a buffer's state to one thread at a time.

use std::ops::DerefMut;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Keeps a value to one thread at a time. `std::sync::Mutex` does it for any caller, and is the
/// default. A caller that already keeps its calls into the buffer to one thread at a time can
/// supply a lock that takes no atomic operation: a Python extension under CPython's GIL, whose
/// calls into the buffer never give the GIL up while the state is locked. The trait is safe: a
/// guard that hands out `&mut` access to a value shared between threads cannot be written
/// without `unsafe`, and whoever writes that `unsafe` answers for it.
pub trait Lock<T>: Send + Sync {
    /// Access to the value while it is locked.
    type Guard<'a>: DerefMut<Target = T>
    where
        Self: 'a,
        T: 'a;

    fn new(value: T) -> Self;

    /// The value, for this thread alone until the guard is dropped. The buffer never locks twice
    /// at once, and never runs anything but its own code while locked.
    fn lock(&self) -> Self::Guard<'_>;
}

impl<T: Send> Lock<T> for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;

    fn new(value: T) -> Self {
        Mutex::new(value)
    }

    /// A panic that happened under the lock (a bug) does not make it unusable.
    fn lock(&self) -> MutexGuard<'_, T> {
        Mutex::lock(self).unwrap_or_else(PoisonError::into_inner)
    }
}
