"""Target: ``arroyo.processing.processor.MetricsBuffer``, the buffer inside every StreamProcessor.

arroyo's class (unchanged across 2.x) sums timings and counters in two defaultdicts and flushes by
iterating them, from whichever thread calls ``incr_*``. Patched, ``MetricsBuffer()`` still runs
arroyo's ``__init__`` (so ``.metrics`` and the private fields exist), then gives the instance a
native buffer whose ``incr_timing`` / ``incr_counter`` / ``flush`` shadow the class's methods.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from .._native import MetricsBuffer
from .base import Shape, Target, frequency_of, missing, names_used, native_of, params, take_pending

METHODS = ("incr_timing", "incr_counter", "flush")


class ProcessorMetricsBufferTarget(Target):
    module_name = "arroyo.processing.processor"
    class_name = "MetricsBuffer"

    def detect(self, cls: type, namespace: Mapping[str, Any]) -> Shape | str:
        absent = missing(namespace, ("__init__", *METHODS))
        if absent:
            return f"has no {', '.join(absent)}"
        expected = {
            "__init__": ("self",),
            "incr_timing": ("self", "metric", "duration"),
            "incr_counter": ("self", "metric", "delta"),
            "flush": ("self",),
        }
        for method, want in expected.items():
            got = params(namespace[method])
            if got != want:
                return f"has {method}{got} where {method}{want} was expected"
        flush_uses = names_used(namespace["flush"])
        needed = {"timing", "increment", "_MetricsBuffer__timers", "_MetricsBuffer__counters"}
        if not needed <= flush_uses:
            return f"flush() does not use {sorted(needed - flush_uses)}"
        try:
            frequency_of(cls)
        except (AttributeError, TypeError, ValueError) as e:
            return f"has no usable METRICS_FREQUENCY_SEC: {e}"
        return Shape("timings and counters summed in dicts, flushed by iterating them")

    def replacements(self, cls: type, shape: Shape) -> dict[str, Any]:
        original = {name: cls.__dict__[name] for name in ("__init__", *METHODS)}

        def make(buffer: Any) -> MetricsBuffer:
            native = MetricsBuffer(buffer.metrics, frequency_sec=frequency_of(cls))
            # An instance from before install(): carry over what it had pending.
            for metric, duration in take_pending(buffer, "_MetricsBuffer__timers"):
                native.incr_timing(metric, duration)
            for metric, delta in take_pending(buffer, "_MetricsBuffer__counters"):
                native.incr_counter(metric, delta)
            return native

        def bind(buffer: Any, native: MetricsBuffer) -> None:
            for name in METHODS:
                vars(buffer)[name] = getattr(native, name)

        @functools.wraps(original["__init__"])
        def __init__(self: Any) -> None:
            original["__init__"](self)
            native_of(self, make, bind)  # or arroyo's own behaviour, if that fails

        def delegate(name: str) -> Any:
            fallback = original[name]

            @functools.wraps(fallback)
            def method(self: Any, *args: Any) -> Any:
                native = native_of(self, make, bind)
                if native is None:
                    return fallback(self, *args)
                return getattr(native, name)(*args)

            return method

        return {"__init__": __init__, **{name: delegate(name) for name in METHODS}}
