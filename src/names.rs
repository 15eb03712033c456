//! Untagged metric names a buffer has seen before, found again by the identity of their `str`
//! object: a call that passes the same object as before (arroyo's calls pass the same literal
//! every time) skips the name's UTF-8, hashing and comparison, and adds through a key prepared
//! once (see [`metrics_buffer::Prepared`]).
//!
//! A slot holds a reference to its `str`, so while the slot lives no other object can have that
//! address, and an equal address means the same (immutable) text. Slots are filled once and never
//! emptied, so a key handed out stays valid for the buffer's life whatever the caller does
//! meanwhile (a recording call may emit, and the backend may record again). A name is remembered
//! the second time its object is seen, so that names made afresh on each call (an f-string) do not
//! take the slots; those, and names beyond the slots, take the usual path.

use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::locked::Core;
use metrics_buffer::{FillOnce, Kind, Prepared, slot_pair};

/// A power of two: a StreamProcessor's buffer has about a dozen untagged names.
const SLOTS: usize = 32;

struct Named {
    name: Py<PyString>,
    key: Prepared,
}

pub(crate) struct Names {
    /// Filled without waiting on anyone (see [`FillOnce`]), never emptied.
    slots: [FillOnce<Named>; SLOTS],
    /// Per pair of slots, the addresses of the last two names that missed there (only compared,
    /// never followed).
    seen: [AtomicUsize; SLOTS],
}

impl Names {
    pub(crate) fn new() -> Self {
        Names {
            slots: std::array::from_fn(|_| FillOnce::default()),
            seen: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// The key remembered for this very object under `kind`, if any.
    #[inline(always)]
    pub(crate) fn get(&self, name: &Bound<'_, PyAny>, kind: Kind) -> Option<&Prepared> {
        let address = name.as_ptr() as usize;
        slot_pair::<SLOTS>(address, kind)
            .into_iter()
            .find_map(|slot| {
                let named = self.slots[slot].get()?;
                (named.name.as_ptr() as usize == address && named.key.kind == kind)
                    .then_some(&named.key)
            })
    }

    /// Called on a miss with a `str` whose UTF-8 is `utf8`: the second miss of the same object
    /// (while a slot for it is free) remembers it. Any subclass of `str` is left out: only `str`
    /// itself is known to be immutable.
    pub(crate) fn missed(&self, core: &Core, name: &Bound<'_, PyString>, utf8: &[u8], kind: Kind) {
        if !name.is_exact_instance_of::<PyString>() {
            return;
        }
        let address = name.as_ptr() as usize;
        let [first, second] = slot_pair::<SLOTS>(address, kind);
        let Some(free) = [first, second]
            .into_iter()
            .find(|&s| self.slots[s].get().is_none())
        else {
            return;
        };
        // The last two names that missed in this pair of slots (whichever of the two is their
        // first), so that two names that alternate are both remembered.
        let [newest, older] = [&self.seen[first & !1], &self.seen[first | 1]];
        let last = newest.load(Ordering::Relaxed);
        if last != address && older.load(Ordering::Relaxed) != address {
            older.store(last, Ordering::Relaxed);
            newest.store(address, Ordering::Relaxed);
            return;
        }
        let no_tags: &[(&[u8], &[u8])] = &[];
        let named = Named {
            name: name.clone().unbind(),
            key: core.prepare(kind, utf8, no_tags),
        };
        self.slots[free].fill(named); // or another thread filled it first
    }
}
