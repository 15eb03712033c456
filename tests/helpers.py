"""Shared pieces for the tests that drive real arroyo and confluent-kafka."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import arroyo.utils.metrics as arroyo_metrics

import arroyo_metrics_buffer

#: librdkafka's in-process mock cluster: a real Kafka protocol peer on loopback.
MOCK_CLUSTER: dict[str, Any] = {"test.mock.num.brokers": 1, "log_level": 3}

PRODUCE_STATUS = "arroyo.producer.produce_status"
CALLBACK_LATENCY = "arroyo.producer.callback_latency"


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

    def named(self, method: str, name: str) -> list[tuple[Any, dict[str, str]]]:
        """(value, tags) of each `method` call for metric `name`, however it was called."""
        out = []
        for m, args, kw in self.calls:
            call = dict(zip(("name", "value", "tags"), args))
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


@contextmanager
def backend(log: Any) -> Iterator[Any]:
    """arroyo's configured metrics backend is `log` for the duration."""
    old = arroyo_metrics._metrics_backend
    arroyo_metrics.configure_metrics(log, force=True)
    try:
        yield log
    finally:
        arroyo_metrics._metrics_backend = old


class FakeClock:
    """A `time.time` replacement that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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
