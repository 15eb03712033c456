"""Target: ``arroyo.processing.processor.MetricsBuffer``, the buffer inside every StreamProcessor.

arroyo's class (unchanged across 2.x) sums timings and counters in two defaultdicts and flushes by
iterating them, from whichever thread calls ``incr_*``. Patched, ``MetricsBuffer()`` still runs
arroyo's ``__init__`` (so ``.metrics`` and the private fields exist), then gives the instance a
native buffer whose ``incr_timing`` / ``incr_counter`` / ``flush`` shadow the class's methods.

A subclass that overrides one of them keeps its override: only arroyo's own methods are shadowed,
and an overridden ``flush()`` is what the throttle calls, as in arroyo.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from typing import Any

from .._native import MetricsBuffer
from . import base

INCR = ("incr_timing", "incr_counter")
METHODS = (*INCR, "flush")


def adoption(cls: type) -> tuple[base.Make, base.Bind]:
    """How an instance of `cls` (arroyo's class, or a subclass) gets its native buffer."""

    def make(buffer: Any) -> MetricsBuffer:
        # A subclass's own flush() must be what the throttle calls, as in arroyo: then the
        # native buffer never flushes by itself and the incr_*() wrappers do arroyo's throttle.
        own_flush = base.defined_by(buffer, cls, "flush")
        native = MetricsBuffer(
            buffer.metrics, frequency_sec=base.frequency_of(cls) if own_flush else math.inf
        )
        # An instance from before install(): carry over what it had pending.
        for metric, duration in base.take_pending(buffer, "_MetricsBuffer__timers"):
            native.incr_timing(metric, duration)
        for metric, delta in base.take_pending(buffer, "_MetricsBuffer__counters"):
            native.incr_counter(metric, delta)
        return native

    def bind(buffer: Any, native: MetricsBuffer) -> dict[str, Any]:
        # The fast path (arroyo's call straight into native code) only where the class's method
        # is arroyo's own: a subclass's override keeps being called.
        if not base.defined_by(buffer, cls, "flush"):
            return {}
        return {name: getattr(native, name) for name in METHODS if base.defined_by(buffer, cls, name)}

    return make, bind


class ProcessorMetricsBufferTarget(base.Target):
    module_name = "arroyo.processing.processor"
    class_name = "MetricsBuffer"

    def detect(self, cls: type, namespace: Mapping[str, Any]) -> base.Shape | str:
        absent = base.missing(namespace, ("__init__", *METHODS))
        if absent:
            return f"has no {', '.join(absent)}"
        expected = {
            "__init__": ("self",),
            "incr_timing": ("self", "metric", "duration"),
            "incr_counter": ("self", "metric", "delta"),
            "flush": ("self",),
        }
        for method, want in expected.items():
            got = base.params(namespace[method])
            if got != want:
                return f"has {method}{got} where {method}{want} was expected"
        flush_uses = base.names_used(namespace["flush"])
        needed = {"timing", "increment", "_MetricsBuffer__timers", "_MetricsBuffer__counters"}
        if not needed <= flush_uses:
            return f"flush() does not use {sorted(needed - flush_uses)}"
        try:
            base.frequency_of(cls)
        except (AttributeError, TypeError, ValueError) as e:
            return f"has no usable METRICS_FREQUENCY_SEC: {e}"
        return base.Shape("timings and counters summed in dicts, flushed by iterating them")

    def replacements(self, cls: type, shape: base.Shape) -> dict[str, Any]:
        original = {name: cls.__dict__[name] for name in ("__init__", *METHODS)}
        make, bind = adoption(cls)

        @functools.wraps(original["__init__"])
        def __init__(self: Any) -> None:
            original["__init__"](self)
            base.native_of(self, make, bind)  # or arroyo's own behaviour, if that fails

        def incr(name: str) -> Any:
            @functools.wraps(original[name])
            def method(self: Any, *args: Any, **kwargs: Any) -> None:
                native = base.native_of(self, make, bind)
                if native is None:
                    return original[name](self, *args, **kwargs)  # type: ignore[no-any-return]
                getattr(native, name)(*args, **kwargs)
                if not base.defined_by(self, cls, "flush"):
                    throttled_flush(self)
                return None

            return method

        def throttled_flush(self: Any) -> None:
            # arroyo's __throttled_record(), for a subclass that overrides flush()
            if time.time() - getattr(self, "_MetricsBuffer__last_record_time", 0.0) > base.frequency_of(cls):
                self.flush()

        @functools.wraps(original["flush"])
        def flush(self: Any) -> None:
            native = base.native_of(self, make, bind)
            if native is None:
                return original["flush"](self)  # type: ignore[no-any-return]
            native.flush()
            self._MetricsBuffer__last_record_time = time.time()  # as arroyo's __reset() does
            return None

        return {
            "__init__": __init__,
            "incr_timing": incr("incr_timing"),
            "incr_counter": incr("incr_counter"),
            "flush": flush,
        }
