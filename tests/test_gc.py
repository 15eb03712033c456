"""Reference cycles through a buffer are collected, and the native classes take weak references:
a backend that holds its buffer, its delivery callback or its bound flush is freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from arroyo_metrics_buffer import DeliveryCallback, MetricsBuffer


class Holder:
    """A backend that holds whatever it is given, as a backend keeping a reference to its buffer does."""

    def __init__(self, payload: bytes = b"") -> None:
        self.held: Any = None
        self.payload = payload

    def increment(self, name: str, value: int = 1, tags: Any = None) -> None:
        pass

    def timing(self, name: str, value: float, tags: Any = None) -> None:
        pass


#: What the backend holds to close the cycle backend -> ... -> buffer -> backend.
CYCLES: dict[str, Callable[[MetricsBuffer], Any]] = {
    "the buffer": lambda buf: buf,
    "its delivery callback": lambda buf: buf.delivery_callback("c", {"s": "ok"}, {"s": "error"}),
    "its bound flush": lambda buf: buf.flush,
}


def cycle(kind: str, payload: bytes = b"") -> tuple[Holder, MetricsBuffer]:
    backend = Holder(payload)
    buf = MetricsBuffer(backend)
    backend.held = CYCLES[kind](buf)
    buf.incr_counter("pending", 1)  # a buffer with something pending is collected all the same
    return backend, buf


@pytest.mark.parametrize("kind", list(CYCLES))
def test_a_backend_holding_its_buffer_is_collected(kind: str) -> None:
    backend, buf = cycle(kind)
    finalizer = weakref.finalize(backend, lambda: None)
    del backend, buf
    gc.collect()
    assert not finalizer.alive


@pytest.mark.parametrize("kind", list(CYCLES))
def test_the_buffer_in_a_collected_cycle_is_freed(kind: str) -> None:
    backend, buf = cycle(kind)
    backend_ref, buffer_ref = weakref.ref(backend), weakref.ref(buf)
    del backend, buf
    gc.collect()
    assert (backend_ref(), buffer_ref()) == (None, None)


def test_weak_references_to_a_buffer_and_a_delivery_callback() -> None:
    buf = MetricsBuffer(Holder())
    callback = buf.delivery_callback("c", None, None)
    buffer_ref, callback_ref = weakref.ref(buf), weakref.ref(callback)
    assert (buffer_ref(), callback_ref()) == (buf, callback)
    assert isinstance(callback_ref(), DeliveryCallback)
    del callback
    assert callback_ref() is None
    del buf
    assert buffer_ref() is None


def test_two_hundred_cycles_of_a_mebibyte_each_are_all_freed() -> None:
    finalized: list[int] = []
    gc.collect()
    for i in range(200):
        backend, _ = cycle(list(CYCLES)[i % len(CYCLES)], payload=bytes(1 << 20))
        weakref.finalize(backend, finalized.append, i)
    del backend, _
    gc.collect()
    assert sorted(finalized) == list(range(200))
