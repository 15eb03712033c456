"""Many threads on one patched arroyo object, with a flush attempt on every call: exact totals.

Real ConfluentProducer / KafkaProducer instances against librdkafka's in-process mock cluster."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import pytest

from helpers import NO_KAFKA

pytest.importorskip("confluent_kafka", reason=NO_KAFKA)
pytest.importorskip("arroyo", reason=NO_KAFKA)

import arroyo.backends.kafka.consumer as consumer_module
import arroyo.processing.processor as processor_module
from arroyo.backends.kafka import KafkaPayload, KafkaProducer
from arroyo.backends.kafka.consumer import ConfluentProducer
from arroyo.processing.processor import MetricsBuffer as ArroyoMetricsBuffer
from arroyo.types import Topic

from arroyo_metrics_buffer import install, uninstall
from helpers import (
    CALLBACK_LATENCY,
    MOCK_CLUSTER,
    CallLog,
    backend,
    kafka_producer_emits_produce_status,
    producer_has_latency,
)


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    assert install()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    # A flush attempt on every call, from every thread.
    with (
        mock.patch.object(consumer_module, "METRICS_FREQUENCY_SEC", 0.0),
        mock.patch.object(processor_module, "METRICS_FREQUENCY_SEC", 0.0),
    ):
        yield
    sys.setswitchinterval(old)
    uninstall()


@pytest.fixture
def log() -> Iterator[CallLog]:
    with backend(CallLog()) as log:
        yield log


def run_threads(
    targets: Sequence[Callable[[], None]],
    background: Sequence[Callable[[], None]] = (),
    stop: threading.Event | None = None,
) -> list[BaseException]:
    """Runs `targets` to completion while `background` threads run until `stop` is set."""
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as e:
                errors.append(e)

        return run

    threads = [threading.Thread(target=guard(t)) for t in targets]
    helpers = [threading.Thread(target=guard(t)) for t in background]
    for t in helpers + threads:
        t.start()
    for t in threads:
        t.join(90)
    if stop is not None:
        stop.set()
    for t in helpers:
        t.join(30)
    assert not any(t.is_alive() for t in threads + helpers), "a thread hung"
    return errors


def test_confluent_producer_polled_produced_and_flushed_from_many_threads(log: CallLog) -> None:
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "stress"}))
    delivered: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def on_delivery(error: Any, message: Any) -> None:
        with lock:
            delivered["error" if error is not None else "success"] += 1

    def produce() -> None:
        for i in range(1500):
            producer.produce("stress-topic", b"x", on_delivery=on_delivery)
            if i % 100 == 99:
                producer.purge(in_queue=True, in_flight=False, blocking=False)

    def poll() -> None:
        while not stop.is_set():
            producer.poll(0.001)

    def flush() -> None:
        while not stop.is_set():
            producer.flush(0.005)

    errors = run_threads([produce] * 4, [poll] * 4 + [flush] * 2, stop)
    # However the race went, both statuses occur: 10 delivered, 10 purged.
    for _ in range(10):
        producer.produce("stress-topic", b"x", on_delivery=on_delivery)
    assert producer.flush(60) == 0
    for _ in range(10):
        producer.produce("stress-topic", b"x", on_delivery=on_delivery)
    producer.purge()
    assert producer.flush(60) == 0
    assert producer.flush(0) == 0  # flush() does metrics before librdkafka's callbacks: once more
    assert errors == []
    assert sum(delivered.values()) == 4 * 1500 + 20
    assert delivered["error"] >= 10 and delivered["success"] >= 10
    assert log.statuses() == delivered
    if producer_has_latency():
        assert len(log.named("timing", CALLBACK_LATENCY)) == 4 * 1500 + 20


@pytest.mark.skipif(
    not kafka_producer_emits_produce_status(),
    reason="this arroyo's KafkaProducer wraps confluent_kafka.Producer: no buffered metrics to race on",
)
def test_kafka_producers_worker_thread_and_producing_threads(log: CallLog) -> None:
    producer = KafkaProducer(dict(MOCK_CLUSTER, **{"client.id": "worker"}))
    futures: list[Any] = []

    def produce() -> None:
        for _ in range(1000):
            futures.append(producer.produce(Topic("worker-topic"), KafkaPayload(None, b"v", [])))

    assert run_threads([produce] * 8) == []
    for f in futures:
        f.result(timeout=60)
    producer.close().result(timeout=60)
    producer._KafkaProducer__producer.flush(0)  # close() flushes metrics before the last callbacks
    assert log.statuses() == {"success": 8000}


def test_processor_metrics_buffer_from_many_threads(log: CallLog) -> None:
    buf = ArroyoMetricsBuffer()
    stop = threading.Event()

    def work() -> None:
        for i in range(2000):
            buf.incr_counter("arroyo.consumer.run.count", 1)
            buf.incr_timing("arroyo.consumer.poll.time", 0.25)
            if i % 3 == 0:
                buf.incr_counter("arroyo.consumer.pause", 2)

    def flush() -> None:
        while not stop.is_set():
            buf.flush()

    errors = run_threads([work] * 16, [flush] * 2, stop)
    buf.flush()
    assert errors == []
    assert log.total("increment", "arroyo.consumer.run.count") == 16 * 2000
    assert log.total("timing", "arroyo.consumer.poll.time") == 16 * 2000 * 0.25
    assert log.total("increment", "arroyo.consumer.pause") == 16 * 667 * 2
    assert len(log.calls) > 100, "flushes happened all along"
