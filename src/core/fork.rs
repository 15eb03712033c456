//! A value of which a forked child gets a fresh copy: the one place with the core's `unsafe`.
//!
//! `fork()` copies only the calling thread. A lock that another thread of the parent held at that
//! moment stays held for good in the child, so a child must never touch the parent's locks. A
//! [`ForkLocal`] belongs to one fork generation of the process; the first use in a later generation
//! replaces it (the parent's copy is leaked, never touched again).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Bumped in a forked child, before any other thread exists there (see [`after_fork_in_child`]).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// To call in the child right after `fork()`, before any other thread starts: every
/// [`ForkLocal`] is renewed on its next use. Only bumps an atomic (async-signal-safe).
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A `T` per fork generation.
pub struct ForkLocal<T> {
    current: AtomicPtr<Slot<T>>,
    /// Owns a `T`: `Send`/`Sync` exactly when `T` is.
    _owns: PhantomData<T>,
}

impl<T> ForkLocal<T> {
    pub fn new(value: T) -> Self {
        ForkLocal {
            current: AtomicPtr::new(Self::slot(value)),
            _owns: PhantomData,
        }
    }

    fn slot(value: T) -> *mut Slot<T> {
        let generation = GENERATION.load(Ordering::Acquire);
        Box::into_raw(Box::new(Slot { generation, value }))
    }

    /// The value of this generation. In a forked child the first call makes it with `renew` from
    /// the parent's value, which may be mid-change by a thread that does not exist here: `renew`
    /// must read only what is safe to read then (atomics), never take a lock.
    #[inline]
    pub fn get(&self, renew: impl Fn(&T) -> T) -> &T {
        let generation = GENERATION.load(Ordering::Acquire);
        loop {
            let current = self.current.load(Ordering::Acquire);
            // SAFETY: a slot is freed only by `Drop`, which has `&mut self`; one replaced after a
            // fork is leaked, never freed, so `current` stays valid for as long as `&self`.
            let slot = unsafe { &*current };
            if slot.generation == generation {
                return &slot.value;
            }
            let replacement = Self::slot(renew(&slot.value));
            if self
                .current
                .compare_exchange(current, replacement, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread of the child replaced it first; use theirs.
                // SAFETY: `replacement` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(replacement) });
            }
        }
    }
}

impl<T> Drop for ForkLocal<T> {
    fn drop(&mut self) {
        // SAFETY: the current slot came from `Box::into_raw`, and with `&mut self` nobody else can
        // reach it any more.
        drop(unsafe { Box::from_raw(*self.current.get_mut()) });
    }
}

/// Tests that bump the process-wide generation run alone; every test whose values must survive
/// holds [`testing::serial`].
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

    static FORK: RwLock<()> = RwLock::new(());

    pub fn serial() -> RwLockReadGuard<'static, ()> {
        FORK.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
        FORK.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn a_child_renews_the_value_once_even_if_its_lock_was_held() {
        let _alone = testing::exclusive();
        let local = ForkLocal::new(Mutex::new(vec![1]));
        let held = local.get(|_| unreachable!()).lock();
        let renewals = std::sync::atomic::AtomicU64::new(0);
        let renew = |_: &Mutex<Vec<i32>>| {
            renewals.fetch_add(1, Ordering::Relaxed);
            Mutex::new(vec![2])
        };
        // What fork() leaves in the child: the lock held by a thread that does not exist there.
        after_fork_in_child();
        assert_eq!(*local.get(renew).lock(), vec![2]);
        local.get(renew).lock().push(3);
        assert_eq!(*local.get(renew).lock(), vec![2, 3]);
        assert_eq!(renewals.load(Ordering::Relaxed), 1);
        drop(held);
    }
}
