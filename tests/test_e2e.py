"""End to end on librdkafka's mock cluster: a ConfluentProducer writes N messages, a StreamProcessor
forwards them with arroyo's Produce strategy through a KafkaProducer; with the patch every count is
exact."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from helpers import NO_KAFKA

pytest.importorskip("confluent_kafka", reason=NO_KAFKA)
pytest.importorskip("arroyo", reason=NO_KAFKA)

from arroyo.backends.kafka import KafkaProducer
from arroyo.backends.kafka.consumer import ConfluentProducer
from arroyo.types import Topic
from confluent_kafka import Consumer

from arroyo_metrics_buffer import install, uninstall
from arroyo_metrics_buffer.cli.kafka import MockCluster
from arroyo_metrics_buffer.cli.strategies import forwarding_processor
from helpers import PRODUCE_STATUS, CallLog, backend, kafka_producer_emits_produce_status

N = 2000


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    assert install()
    yield
    uninstall()


def test_forwarding_through_a_stream_processor_counts_every_message_once() -> None:
    cluster = MockCluster()
    servers = {"bootstrap.servers": cluster.bootstrap_servers}
    run = uuid.uuid4().hex[:8]
    source, sink = Topic(f"e2e-{run}"), Topic(f"e2e-{run}-forwarded")
    with backend(CallLog()) as log:
        writer = ConfluentProducer(dict(servers, **{"client.id": "e2e-source"}))
        for i in range(N):
            writer.produce(source.name, f"{i}".encode())
            writer.poll(0)
        assert writer.flush(60) == 0
        assert writer.flush(0) == 0  # flush() does the metrics before librdkafka's last callbacks
        forwarder = KafkaProducer(dict(servers, **{"client.id": "e2e-forward"}))
        processor, steps = forwarding_processor(
            cluster.bootstrap_servers, source.name, sink.name, f"e2e-{run}", forwarder
        )
        iterations = 0
        deadline = time.monotonic() + 60
        while sum(s.submitted for s in steps) < N and time.monotonic() < deadline:
            processor._run_once()
            iterations += 1
        processor._shutdown()  # joins the strategy (waits for the forwards) and flushes its metrics
        forwarder.close().result(timeout=60)
        forwarder._KafkaProducer__producer.flush(0)  # close() flushes metrics before the last callbacks

    forwarded = Consumer(dict(servers, **{"group.id": f"check-{run}", "auto.offset.reset": "earliest"}))
    forwarded.subscribe([sink.name])
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(values) < N and time.monotonic() < deadline:
        message = forwarded.poll(0.5)
        if message is not None and message.error() is None:
            values.append(message.value())
    forwarded.close()

    assert sorted(values, key=int) == [f"{i}".encode() for i in range(N)]
    assert sum(s.submitted for s in steps) == N
    assert log.total("increment", PRODUCE_STATUS, producer_name="e2e-source") == N
    forwarded_status = N if kafka_producer_emits_produce_status() else 0  # as stock arroyo of this version
    assert log.total("increment", PRODUCE_STATUS, producer_name="e2e-forward") == forwarded_status
    assert log.total("increment", PRODUCE_STATUS, status="error") == 0
    assert log.total("increment", "arroyo.consumer.run.count") == iterations
    assert log.total("increment", "arroyo.consumer.invalid_message.count") == 0
    assert log.total("increment", "arroyo.consumer.partitions_assigned.count") >= 1
