//! Cells that a fork cannot leave locked: the one place with the core's `unsafe`.
//!
//! `fork()` copies only the calling thread. A lock that another thread of the parent held at that
//! moment stays held for good in the child, so a child must never touch the parent's locks. A
//! [`ForkLocal`] belongs to one fork generation of the process; the first use in a later generation
//! replaces it (the parent's copy is leaked, never touched again). A [`FillOnce`] is filled at
//! most once and never waits (a `OnceLock` makes a second filler wait for the first, which in a
//! child may be a thread that does not exist there).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Bumped in a forked child, before any other thread exists there (see [`after_fork_in_child`]).
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process: 0 in the original process, one more in each forked child
/// (a value that belongs to one generation, such as an emit in progress, is the parent's in any
/// other).
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// To call in the child right after `fork()`, before any other thread starts: every
/// [`ForkLocal`] is renewed on its next use. Only bumps an atomic (async-signal-safe).
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Registers [`after_fork_in_child`] with `pthread_atfork`, once per process, so that it runs in
/// the child of every `fork()`: Python's `os.fork`, or any native code's. Nothing callable from
/// Python can run it.
#[cfg(unix)]
pub fn register_at_fork() -> std::io::Result<()> {
    extern "C" fn child() {
        after_fork_in_child();
    }
    static REGISTERED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    // SAFETY: registering a handler has no precondition; the handler only bumps an atomic, which
    // is async-signal-safe, as a child handler in a multithreaded process must be.
    let rc = *REGISTERED.get_or_init(|| unsafe { libc::pthread_atfork(None, None, Some(child)) });
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// No `fork()` here.
#[cfg(not(unix))]
pub fn register_at_fork() -> std::io::Result<()> {
    Ok(())
}

struct Slot<T> {
    generation: u64,
    value: T,
}

/// A `T` per fork generation.
pub struct ForkLocal<T> {
    current: AtomicPtr<Slot<T>>,
    /// Owns a `T`: `Send` when `T` is (and `Sync` as below).
    _owns: PhantomData<T>,
}

// SAFETY: through `&ForkLocal` a thread reads the `T` (so `T: Sync`) and, in a child, may make the
// one that its owner, on another thread, later drops (so `T: Send`).
unsafe impl<T: Send + Sync> Sync for ForkLocal<T> {}

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
    #[inline(always)]
    pub fn get(&self, renew: impl Fn(&T) -> T) -> &T {
        let generation = GENERATION.load(Ordering::Acquire);
        // SAFETY: a slot is freed only by `Drop`, which has `&mut self`; one replaced after a
        // fork is leaked, never freed, so `current` stays valid for as long as `&self`.
        let slot = unsafe { &*self.current.load(Ordering::Acquire) };
        if slot.generation == generation {
            return &slot.value;
        }
        self.renew(generation, renew)
    }

    /// [`ForkLocal::get`]'s first call in a new generation.
    #[cold]
    #[inline(never)]
    fn renew(&self, generation: u64, renew: impl Fn(&T) -> T) -> &T {
        loop {
            let current = self.current.load(Ordering::Acquire);
            // SAFETY: as in `get`.
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

/// A `T` set at most once and then kept until dropped, without waiting on anyone: of two threads
/// that fill it at once, one keeps its value and the other's is dropped.
pub struct FillOnce<T> {
    value: AtomicPtr<T>,
    /// Owns a `T`: `Send` when `T` is (and `Sync` as below).
    _owns: PhantomData<T>,
}

// SAFETY: through `&FillOnce` a thread reads the `T` (so `T: Sync`) and may put in the one that its
// owner, on another thread, later drops (so `T: Send`).
unsafe impl<T: Send + Sync> Sync for FillOnce<T> {}

impl<T> Default for FillOnce<T> {
    fn default() -> Self {
        FillOnce {
            value: AtomicPtr::new(std::ptr::null_mut()),
            _owns: PhantomData,
        }
    }
}

impl<T> FillOnce<T> {
    #[inline(always)]
    pub fn get(&self) -> Option<&T> {
        let value = self.value.load(Ordering::Acquire);
        // SAFETY: a pointer other than null came from `Box::into_raw` in `fill` and is freed only
        // by `Drop`, which has `&mut self`, so no borrow of `&self` outlives it; the `Acquire` load
        // pairs with the `Release` of the exchange that published it.
        unsafe { value.as_ref() }
    }

    /// Fills it if it is empty; returns whether `value` is the one kept.
    pub fn fill(&self, value: T) -> bool {
        let new = Box::into_raw(Box::new(value));
        let null = std::ptr::null_mut();
        let won = self
            .value
            .compare_exchange(null, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if !won {
            // SAFETY: `new` came from `Box::into_raw` above and was never published.
            drop(unsafe { Box::from_raw(new) });
        }
        won
    }
}

impl<T> Drop for FillOnce<T> {
    fn drop(&mut self) {
        let value = *self.value.get_mut();
        if !value.is_null() {
            // SAFETY: published by `fill` from `Box::into_raw`; with `&mut self` nobody else can
            // reach it any more, and it is freed only here.
            drop(unsafe { Box::from_raw(value) });
        }
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
    use std::sync::Mutex;

    #[test]
    fn a_child_renews_the_value_once_even_if_its_lock_was_held() {
        let _alone = testing::exclusive();
        let local = ForkLocal::new(Mutex::new(vec![1]));
        let held = local.get(|_| unreachable!()).lock().unwrap();
        let renewals = std::sync::atomic::AtomicU64::new(0);
        let renew = |_: &Mutex<Vec<i32>>| {
            renewals.fetch_add(1, Ordering::Relaxed);
            Mutex::new(vec![2])
        };
        // What fork() leaves in the child: the lock held by a thread that does not exist there.
        after_fork_in_child();
        assert_eq!(*local.get(renew).try_lock().unwrap(), vec![2]);
        local.get(renew).try_lock().unwrap().push(3);
        assert_eq!(*local.get(renew).try_lock().unwrap(), vec![2, 3]);
        assert_eq!(renewals.load(Ordering::Relaxed), 1);
        drop(held);
    }

    #[cfg(unix)]
    #[test]
    fn a_real_fork_renews_the_value_in_the_child_whatever_the_parent_held() {
        let _alone = testing::exclusive();
        register_at_fork().unwrap();
        let local = ForkLocal::new(Mutex::new(1));
        let renew = |_: &Mutex<i32>| Mutex::new(2);
        let held = local.get(renew).lock().unwrap();
        // SAFETY: the child only reads atomics, takes a fresh lock and exits at once.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let renewed = local
                .get(renew)
                .try_lock()
                .map(|v| *v == 2)
                .unwrap_or(false);
            // SAFETY: leaving the child without running the test harness's atexit code.
            unsafe { libc::_exit(if renewed { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status}"
        );
        assert_eq!(*held, 1, "the parent's value is untouched");
    }

    #[test]
    fn fill_once_keeps_the_first_value_and_drops_every_other() {
        let kept = std::sync::Arc::new(1);
        let other = std::sync::Arc::new(2);
        let cell = FillOnce::default();
        assert!(cell.get().is_none());
        assert!(cell.fill(std::sync::Arc::clone(&kept)));
        assert!(!cell.fill(std::sync::Arc::clone(&other)));
        assert_eq!(cell.get().map(|v| **v), Some(1));
        assert_eq!(
            (
                std::sync::Arc::strong_count(&kept),
                std::sync::Arc::strong_count(&other)
            ),
            (2, 1)
        );
        drop(cell);
        assert_eq!(std::sync::Arc::strong_count(&kept), 1);
    }

    #[test]
    fn threads_filling_at_once_keep_exactly_one_value() {
        let cell = FillOnce::default();
        let values: Vec<std::sync::Arc<usize>> = (0..8).map(std::sync::Arc::new).collect();
        let won: usize = std::thread::scope(|s| {
            let handles: Vec<_> = values
                .iter()
                .map(|v| {
                    let cell = &cell;
                    s.spawn(move || cell.fill(std::sync::Arc::clone(v)) as usize)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 1);
        let kept = **cell.get().unwrap();
        let counts: Vec<usize> = values.iter().map(std::sync::Arc::strong_count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 9);
        assert_eq!(counts[kept], 2);
    }
}
