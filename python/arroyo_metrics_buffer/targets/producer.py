"""Target: ``arroyo.backends.kafka.consumer.ConfluentProducer``, the producer under KafkaProducer.

Its delivery callbacks run on whichever thread polls the producer (KafkaProducer's worker thread,
or any thread calling ``poll()`` / ``flush()``), and count ``arroyo.producer.produce_status`` per
status in a dict (2.31.2+), plus one ``arroyo.producer.callback_latency`` sample per delivery in a
list (2.40.3+), flushed by iterating them. Patched, arroyo's ``__init__`` still runs, then the
instance's ``__metrics_delivery_callback`` and ``__flush_metrics`` become a native delivery callback
and the native buffer's ``flush``, and ``__delivery_callback`` (which ``produce()`` calls to wrap
the user's callback, per message) makes a ``functools.partial`` of a plain function instead of a
closure and a partial (see `wrapper`). ``flush()`` is arroyo's, and then emits what it delivered
(see `flush_then_emit`); ``produce()`` and the user's callbacks are arroyo's own. A subclass that
overrides one of those private methods keeps its override (and arroyo's wrapper, which calls it),
and an overridden ``__flush_metrics`` is what the throttle calls, as in arroyo.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Mapping
from functools import partial, wraps
from typing import Any

from .._native import DeliveryCallback, MetricsBuffer
from . import base

PRODUCE_STATUS = "arroyo.producer.produce_status"
CALLBACK_LATENCY = "arroyo.producer.callback_latency"
CALLBACK = "_ConfluentProducer__metrics_delivery_callback"
WRAPPER = "_ConfluentProducer__delivery_callback"
FLUSH_METRICS = "_ConfluentProducer__flush_metrics"
LAST_RECORD = "_ConfluentProducer__last_record_time"

DIRECT = base.Shape(
    "emits each delivery report directly (2.31.0-2.31.1): no buffer, nothing to fix", needs_patch=False
)
COUNTERS = base.Shape("produce_status counters in a dict (2.31.2-2.40.1)")
COUNTERS_AND_LATENCY = base.Shape(
    "produce_status counters in a dict and callback_latency samples in a list (2.40.3+)", latency=True
)


def status_tags(producer_name: str | None, status: str) -> dict[str, str]:
    """As arroyo builds them: status first, then producer_name when client.id is set."""
    tags = {"status": status}
    if producer_name:
        tags["producer_name"] = producer_name
    return tags


def latency_tags(producer_name: str | None) -> dict[str, str]:
    return {"producer_name": producer_name or "N/A"}


class ConfluentProducerTarget(base.Target):
    module_name = "arroyo.backends.kafka.consumer"
    class_name = "ConfluentProducer"

    def detect(self, cls: type, namespace: Mapping[str, Any]) -> base.Shape | str:
        absent = base.missing(namespace, ("__init__", CALLBACK, "produce"))
        if absent:
            return f"has no {', '.join(absent)}"
        callback = namespace[CALLBACK]
        callback_uses = base.names_used(callback)
        if FLUSH_METRICS not in namespace:
            if "increment" in callback_uses and PRODUCE_STATUS in callback_uses:
                return DIRECT
            return "has no __flush_metrics and does not emit directly either"
        absent = base.missing(namespace, (FLUSH_METRICS, "flush"))
        if absent:
            return f"has no {', '.join(absent)}"
        flush_uses = base.names_used(namespace[FLUSH_METRICS])
        if PRODUCE_STATUS not in flush_uses or "_ConfluentProducer__produce_counters" not in callback_uses:
            return "does not buffer produce_status the way arroyo 2.31.2+ does"
        try:
            base.frequency_of(cls)
        except (AttributeError, TypeError, ValueError) as e:
            return f"has no usable METRICS_FREQUENCY_SEC: {e}"
        signature = base.params(callback)
        if signature == ("self", "error", "_message") and CALLBACK_LATENCY not in flush_uses:
            return COUNTERS
        if (
            signature == ("self", "error", "_message", "time_of_produce")
            and CALLBACK_LATENCY in flush_uses
            and "_ConfluentProducer__callback_latency" in callback_uses
        ):
            return COUNTERS_AND_LATENCY
        return f"has __metrics_delivery_callback{signature}, which no known arroyo version has"

    def replacements(self, cls: type, shape: base.Shape) -> dict[str, Any]:
        original = {name: cls.__dict__[name] for name in ("__init__", CALLBACK, FLUSH_METRICS)}
        make, bind = adoption(cls, shape)

        @wraps(original["__init__"])
        def __init__(self: Any, configuration: Any, *args: Any, **kwargs: Any) -> None:
            original["__init__"](self, configuration, *args, **kwargs)
            base.native_of(self, make, bind)  # or arroyo's own behaviour, if that fails

        @wraps(original[CALLBACK])
        def metrics_delivery_callback(self: Any, *args: Any, **kwargs: Any) -> None:
            native = base.native_of(self, make, bind)
            if native is None:
                return original[CALLBACK](self, *args, **kwargs)  # type: ignore[no-any-return]
            report = vars(self).get(CALLBACK) or delivery_callback(self, native, shape).report
            report(*args, **kwargs)
            if not base.defined_by(self, cls, FLUSH_METRICS):
                throttled_flush(self)
            return None

        def throttled_flush(self: Any) -> None:
            # arroyo's __throttled_record(), for a subclass that overrides __flush_metrics()
            if time.time() - getattr(self, LAST_RECORD, 0.0) > base.frequency_of(cls):
                getattr(self, FLUSH_METRICS)()

        @wraps(original[FLUSH_METRICS])
        def flush_metrics(self: Any) -> None:
            native = base.native_of(self, make, bind)
            if native is None:
                return original[FLUSH_METRICS](self)  # type: ignore[no-any-return]
            native.flush()
            setattr(self, LAST_RECORD, time.time())  # as arroyo's __reset_metrics() does
            return None

        ours: dict[str, Any] = {
            "__init__": __init__,
            CALLBACK: metrics_delivery_callback,
            FLUSH_METRICS: flush_metrics,
        }
        if flushes_like_arroyo(cls):
            ours["flush"] = flush_then_emit(cls.__dict__["flush"], make, bind)
        return ours


def flushes_like_arroyo(cls: type) -> bool:
    """Whether arroyo's ``flush(timeout)`` is the one `flush_then_emit` wraps: it emits the metrics
    (``__flush_metrics``), then flushes the producer. If a later arroyo changes it, it stays."""
    flush = vars(cls).get("flush")
    return base.params(flush) == ("self", "timeout") and FLUSH_METRICS in base.names_used(flush)


def flush_then_emit(original: Callable[..., Any], make: base.Make, bind: base.Bind) -> Callable[..., Any]:
    """``flush()`` and ``close()`` (whose worker flushes) emit what they delivered.

    arroyo's ``flush()`` emits the metrics first and then flushes the producer, which runs the
    delivery callbacks of every message still in flight on the calling thread: their metrics would
    wait for the next throttled flush, which a closed producer never makes (upstream loses them;
    here the exit hook emits them). So when that flush delivered anything, the metrics are emitted
    once more before it returns, or raises (a user's delivery callback that raises makes
    confluent-kafka's flush raise, after the deliveries it served). A flush that delivered nothing
    makes no second emission, so a loop of ``flush(0)`` makes no more backend calls than arroyo's.
    """

    @wraps(original)
    def flush(self: Any, *args: Any, **kwargs: Any) -> Any:
        if base.native_of(self, make, bind) is None:
            return original(self, *args, **kwargs)
        before = DeliveryCallback.reports_on_this_thread()
        try:
            return original(self, *args, **kwargs)
        finally:
            if DeliveryCallback.reports_on_this_thread() != before:
                getattr(self, FLUSH_METRICS)()

    return flush


def delivery_callback(producer: Any, native: MetricsBuffer, shape: base.Shape) -> DeliveryCallback:
    name = producer.producer_name
    return native.delivery_callback(
        PRODUCE_STATUS,
        status_tags(name, "success"),
        status_tags(name, "error"),
        CALLBACK_LATENCY if shape.latency else None,
        latency_tags(name) if shape.latency else None,
    )


def wraps_like_arroyo(cls: type, shape: base.Shape) -> bool:
    """Whether arroyo's ``__delivery_callback`` is the wrapper `wrapper` replaces: ``(user_callback)``
    returning a closure that calls ``__metrics_delivery_callback`` and then the user's callback
    (2.31.2+), with ``time_of_produce`` bound by ``functools.partial`` (2.40.3+). If a later arroyo
    changes it, arroyo's own wrapper stays (it still calls the native callback)."""
    wrapper = vars(cls).get(WRAPPER)
    expected: tuple[str, ...]
    if shape.latency:
        expected = ("self", "user_callback", "time_of_produce")
        uses = {CALLBACK, "user_callback", "partial"}
    else:
        expected, uses = ("self", "user_callback"), {CALLBACK, "user_callback"}
    return base.params(wrapper) == expected and uses <= base.names_used(wrapper)


def deliver(
    report: Callable[..., None], user_callback: Any, _producer: Any, error: Any, message: Any
) -> None:
    """arroyo's per-message ``wrapped`` closure (2.31.2-2.40.1), as a plain function."""
    report(error, message)
    if user_callback is not None:
        user_callback(error, message)


def deliver_with_latency(
    report: Callable[..., None],
    user_callback: Any,
    _producer: Any,
    time_of_produce: float,
    error: Any,
    message: Any,
) -> None:
    """arroyo's per-message ``wrapped`` closure (2.40.3+), as a plain function."""
    report(error, message, time_of_produce)
    if user_callback is not None:
        user_callback(error, message)


def wrapper(producer: Any, report: Callable[..., None], latency: bool) -> Callable[..., Any]:
    """The instance's ``__delivery_callback``: what ``produce()`` hands to confluent-kafka as
    ``on_delivery`` for each message, as arroyo's but one ``functools.partial`` of a module-level
    function instead of a closure (with its cells) and a partial, and one Python frame per delivery
    instead of three.

    Like arroyo's closure, each partial holds the producer until its delivery, so a producer
    dropped with messages in flight is not destroyed under them. This function holds it weakly:
    the instance holds this function, and a cycle would leave the producer to the garbage
    collector. The user's callback is called from a Python frame, never from native code: on
    CPython 3.11-3.13 a daemon thread still running at exit is ended by unwinding its stack, which
    aborts the process if native frames are on it.
    """
    owner = weakref.ref(producer)
    if latency:

        def wrap(user_callback: Any, time_of_produce: float) -> Any:
            return partial(deliver_with_latency, report, user_callback, owner(), time_of_produce)

    else:

        def wrap(user_callback: Any) -> Any:  # type: ignore[misc]
            return partial(deliver, report, user_callback, owner())

    return wrap


def adoption(cls: type, shape: base.Shape) -> tuple[base.Make, base.Bind]:
    """How an instance of `cls` (arroyo's class, or a subclass) gets its native buffer."""
    replace_wrapper = wraps_like_arroyo(cls, shape)  # checked once per class

    def make(producer: Any) -> MetricsBuffer:
        # A subclass's own __flush_metrics() must be what the throttle calls, as in arroyo: then
        # the native buffer never flushes by itself and the callback wrapper does the throttle.
        own_flush = base.defined_by(producer, cls, FLUSH_METRICS)
        native = MetricsBuffer(
            producer._ConfluentProducer__metrics,
            frequency_sec=base.frequency_of(cls) if own_flush else math.inf,
            keyword_args=True,
        )
        # An instance from before install(): carry over what it had pending.
        name = producer.producer_name
        for status, count in base.take_pending(producer, "_ConfluentProducer__produce_counters"):
            native.incr_counter(PRODUCE_STATUS, count, status_tags(name, status))
        for value in base.take_pending(producer, "_ConfluentProducer__callback_latency"):
            native.record_timing(CALLBACK_LATENCY, value, latency_tags(name))
        return native

    def bind(producer: Any, native: MetricsBuffer) -> dict[str, Any]:
        # The fast path only where the class's methods are arroyo's own. A bound builtin method:
        # arroyo's `self.__metrics_delivery_callback(...)` is then one vectorcall into native code.
        if not base.defined_by(producer, cls, FLUSH_METRICS):
            return {}
        bound: dict[str, Any] = {FLUSH_METRICS: native.flush}
        if base.defined_by(producer, cls, CALLBACK):
            callback = delivery_callback(producer, native, shape)
            bound[CALLBACK] = callback.report
            # arroyo's wrapper calls the method above, so it is replaced only along with it.
            if replace_wrapper and base.defined_by(producer, cls, WRAPPER):
                bound[WRAPPER] = wrapper(producer, callback.report, shape.latency)
        return bound

    return make, bind
