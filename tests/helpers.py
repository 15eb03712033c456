"""The tests' shared doubles and constants. Imports without arroyo or confluent-kafka (CPython 3.15
has no confluent-kafka wheel): whatever needs them imports them inside."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

import arroyo_metrics_buffer

HAVE_KAFKA = all(importlib.util.find_spec(m) is not None for m in ("arroyo", "confluent_kafka"))
NO_KAFKA = (
    "needs sentry-arroyo and confluent-kafka (not installed; confluent-kafka has no wheel for this Python)"
)
#: For a test that drives arroyo or confluent-kafka, in a file whose other tests need neither.
needs_kafka = pytest.mark.skipif(not HAVE_KAFKA, reason=NO_KAFKA)

#: librdkafka's in-process mock cluster: a real Kafka protocol peer on loopback.
MOCK_CLUSTER: dict[str, Any] = {"test.mock.num.brokers": 1, "log_level": 3}

PRODUCE_STATUS = "arroyo.producer.produce_status"
CALLBACK_LATENCY = "arroyo.producer.callback_latency"
#: What install() patches, in its order.
TARGETS = ["arroyo.processing.processor.MetricsBuffer", "arroyo.backends.kafka.consumer.ConfluentProducer"]


class CallLog:
    """A metrics backend that records each call exactly as made (positional and keyword)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], tuple[tuple[str, Any], ...]]] = []
        self._lock = threading.Lock()

    def _add(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Tags are compared with their order: a backend may format them in iteration order.
        kw = tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in kwargs.items())
        with self._lock:
            self.calls.append((method, args, kw))

    def increment(self, *args: Any, **kwargs: Any) -> None:
        self._add("increment", args, kwargs)

    def timing(self, *args: Any, **kwargs: Any) -> None:
        self._add("timing", args, kwargs)

    def gauge(self, *args: Any, **kwargs: Any) -> None:
        self._add("gauge", args, kwargs)

    def take(self) -> CallLog:
        """A log of the calls so far, which this one then forgets (to compare a second run with)."""
        taken = CallLog()
        with self._lock:
            taken.calls, self.calls = self.calls, []
        return taken

    def named(self, method: str, name: str) -> list[tuple[Any, dict[str, str]]]:
        """(value, tags) of each `method` call for metric `name`, however it was called."""
        out = []
        for m, args, kw in self.calls:
            call = dict(zip(("name", "value", "tags"), args, strict=False))
            call.setdefault("value", 1)  # increment(name) counts one
            call.update(kw)
            if m == method and call["name"] == name:
                out.append((call["value"], dict(call.get("tags") or ())))
        return out

    def total(self, method: str, name: str, **tags: str) -> Any:
        return sum(v for v, t in self.named(method, name) if all(t.get(k) == x for k, x in tags.items()))

    def statuses(self, name: str = PRODUCE_STATUS) -> Counter[str]:
        out: Counter[str] = Counter()
        for value, tags in self.named("increment", name):
            out[tags["status"]] += value
        return out


class Plain:
    """A lock-free recording backend (a lock held by a parent thread would hang a forked child)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def increment(self, name: str, value: int = 1, tags: Any = None) -> None:
        self.calls.append(("increment", name, value))

    def timing(self, name: str, value: float, tags: Any = None) -> None:
        self.calls.append(("timing", name, value))

    def gauge(self, name: str, value: float, tags: Any = None) -> None:
        self.calls.append(("gauge", name, value))


class Raising:
    """A metrics backend whose every call raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def increment(self, *args: Any, **kwargs: Any) -> None:
        raise self.error

    def timing(self, *args: Any, **kwargs: Any) -> None:
        raise self.error

    def gauge(self, *args: Any, **kwargs: Any) -> None:
        raise self.error


class Gate:
    """Passes calls on to `inner`, but an increment of `metric` first sets `entered` and waits for
    `release`: a backend call caught in the middle of an emit."""

    def __init__(self, inner: Any, metric: str) -> None:
        self.inner, self.metric = inner, metric
        self.entered, self.release = threading.Event(), threading.Event()

    def increment(self, name: str, value: int = 1, tags: Any = None) -> None:
        if name == self.metric:
            self.entered.set()
            assert self.release.wait(30)
        self.inner.increment(name, value, tags)


@contextmanager
def backend(log: Any) -> Iterator[Any]:
    """arroyo's configured metrics backend is `log` for the duration."""
    import arroyo.utils.metrics as arroyo_metrics

    old = arroyo_metrics._metrics_backend
    arroyo_metrics.configure_metrics(log, force=True)
    try:
        yield log
    finally:
        arroyo_metrics._metrics_backend = old


def clock_moved() -> None:
    """Returns once `time.time()` reads later than when called, so that a buffer with
    `frequency_sec=0` made or flushed before the call finds its throttle due at its next reading,
    whatever the clock's resolution (a float of seconds since 1970 moves in steps of 238 ns).
    The real clock, with no Python code in its place: for tests where that matters."""
    start = time.time()
    while time.time() <= start:
        pass


class FakeClock:
    """A `time.time` replacement that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def arroyo_originals() -> dict[tuple[type, str], Any]:
    """(class, attribute) -> arroyo's own value, for every attribute install() replaces; call it
    while nothing is installed."""
    from arroyo.backends.kafka.consumer import ConfluentProducer
    from arroyo.processing.processor import MetricsBuffer

    patched: dict[type, tuple[str, ...]] = {
        MetricsBuffer: ("__init__", "incr_timing", "incr_counter", "flush"),
        ConfluentProducer: (
            "__init__",
            "_ConfluentProducer__metrics_delivery_callback",
            "_ConfluentProducer__flush_metrics",
        ),
    }
    return {(cls, attr): cls.__dict__[attr] for cls, attrs in patched.items() for attr in attrs}


def producer_has_latency() -> bool:
    """Whether this arroyo's ConfluentProducer keeps callback_latency samples (2.40.3+)."""
    for s in arroyo_metrics_buffer.status():
        if s.name.endswith("ConfluentProducer"):
            return bool(s.shape and s.shape.latency)
    raise AssertionError("no ConfluentProducer target")


def kafka_producer_emits_produce_status() -> bool:
    """Whether this arroyo's KafkaProducer wraps its ConfluentProducer (2.40.3+); before that it
    wraps confluent_kafka.Producer directly and emits no produce_status at all."""
    from arroyo.backends.kafka.consumer import KafkaProducer

    return "ConfluentProducer" in KafkaProducer.__init__.__code__.co_names


def run_python(code: str) -> str:
    """What `code` prints, run by this Python in a fresh process (which must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


CHILD_SECONDS = 10


def child_exit_status(check: Callable[[], None]) -> int:
    """Forks; the child runs `check` under an alarm and exits 0 if it returns (1 if it raises,
    printing the traceback). The child's exit status; the test fails if the child hangs."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
            signal.alarm(CHILD_SECONDS)  # a hung child is killed: exit status -SIGALRM
            check()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    deadline = time.monotonic() + CHILD_SECONDS + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung past its alarm")


class BackendError(Exception):
    pass


class Recorder:
    """A metrics backend that records every call, notices overlapping calls and can fail."""

    def __init__(self, fail_every: int = 0) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, str] | None]] = []
        self.fail_every = fail_every
        self.attempts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def _record(self, method: str, name: str, value: Any, tags: Mapping[str, str] | None) -> None:
        with self._lock:
            self.attempts += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fail = self.fail_every and self.attempts % self.fail_every == 0
        try:
            if fail:
                raise BackendError(f"call {self.attempts} fails")
            self.calls.append((method, name, value, None if tags is None else dict(tags)))
        finally:
            with self._lock:
                self.in_flight -= 1

    def increment(self, name: str, value: int = 1, tags: Mapping[str, str] | None = None) -> None:
        self._record("increment", name, value, tags)

    def timing(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("timing", name, value, tags)

    def gauge(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("gauge", name, value, tags)

    def totals(self) -> Counter[tuple[str, str, tuple[tuple[str, str], ...]]]:
        out: Counter[tuple[str, str, tuple[tuple[str, str], ...]]] = Counter()
        for method, name, value, tags in self.calls:
            out[(method, name, tuple(sorted((tags or {}).items())))] += value
        return out
