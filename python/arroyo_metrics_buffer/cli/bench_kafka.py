"""`bench`'s figures on librdkafka's mock cluster: produce + deliver through one ConfluentProducer, and
a StreamProcessor consuming through a short pipeline (a transform, then CommitOffsets)."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._native import MetricsBuffer as NativeBuffer
from .._patch import install, uninstall
from ..targets.base import BUFFER_ATTR
from .kafka import MockCluster, MockClusterProcess


def throughput(producer: Any, messages: int) -> float:
    """Messages/s producing `messages` and waiting for their delivery, a second thread polling."""
    delivered = [0]

    def on_delivery(error: Any, message: Any) -> None:
        delivered[0] += 1

    done = threading.Event()

    def poller() -> None:
        while not done.is_set():
            producer.poll(0.01)

    thread = threading.Thread(target=poller)
    start = time.perf_counter()
    thread.start()
    for _ in range(messages):
        while True:
            try:
                producer.produce("bench-e2e", b"payload", on_delivery=on_delivery)
                break
            except BufferError:
                time.sleep(0.001)
    producer.flush(60)
    done.set()
    thread.join()
    elapsed = time.perf_counter() - start
    assert delivered[0] == messages, f"{delivered[0]} of {messages} delivered"
    return messages / elapsed


def produce_and_deliver(
    cluster: MockCluster,
    rounds: int,
    messages: int,
    alternate: Callable[..., tuple[float, ...]],
    still_stock: Callable[..., None],
) -> dict[str, Any]:
    """Messages/s producing and delivering through one ConfluentProducer on the mock cluster, with
    a thread polling it as KafkaProducer's worker does."""
    from arroyo.backends.kafka.consumer import ConfluentProducer

    # log_level 3: librdkafka's errors only, not its informational connection notices on stderr.
    config = {
        "bootstrap.servers": cluster.bootstrap_servers,
        "client.id": "bench-e2e",
        "linger.ms": 5,
        "log_level": 3,
    }
    uninstall()
    producers = [ConfluentProducer(config)]
    install()
    producers.append(ConfluentProducer(config))
    uninstall()
    s, p = alternate(
        lambda: throughput(producers[0], messages), lambda: throughput(producers[1], messages), rounds
    )
    still_stock(producers[0])
    producers.clear()  # the clients close before the cluster they talk to
    return figure("produce + deliver on the mock cluster", "messages/s", s, p)


def fill_topic(cluster: MockCluster | MockClusterProcess, topic: str, messages: int) -> None:
    """`messages` messages in `topic` (one partition), to consume again and again."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": cluster.bootstrap_servers, "linger.ms": 5, "log_level": 3})
    for i in range(messages):
        while True:
            try:
                producer.produce(topic, b"payload %d" % i, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0


class FloorBuffer:
    """A StreamProcessor's metrics buffer that records nothing: its recording calls are the native
    no-op methods (`MetricsBuffer._floor()`), so that a consumer with it shows what a message costs
    without any metrics bookkeeping, the floor that no buffer can go below."""

    def __init__(self, metrics: Any) -> None:
        floor = NativeBuffer._floor()
        self.metrics = metrics
        self.incr_counter = floor.incr_counter
        self.incr_timing = floor.incr_timing

    def flush(self) -> None:
        pass


def consume(
    cluster: MockClusterProcess, topic: str, messages: int, measured: list[float], floor: bool = False
) -> tuple[float, Any]:
    """A StreamProcessor consuming `messages` messages of `topic` from the start (a group of its
    own) through a transform and then CommitOffsets, run until it has seen them all. Returns its
    messages/s (wall clock), the processor, and appends the process's CPU time per message over
    all threads, in microseconds, to `measured`. Both are measured from the first message to the
    last: joining the group and shutting down take seconds of their own, which vary from round to
    round and have nothing to do with a message. With `floor`, the processor's metrics buffer is
    a `FloorBuffer`."""
    from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.processing.processor import StreamProcessor
    from arroyo.processing.strategies import CommitOffsets, ProcessingStrategyFactory, RunTask
    from arroyo.types import Commit, Message, Partition, Topic

    seen = [0]
    marks: list[tuple[float, float]] = []  # (CPU time, wall clock) at the first and last message
    processor: StreamProcessor[KafkaPayload]

    def transform(message: Message[KafkaPayload]) -> bytes:
        seen[0] += 1
        if seen[0] == 1 or seen[0] == messages:
            marks.append((time.process_time(), time.perf_counter()))
        if seen[0] == messages:
            processor.signal_shutdown()
        return message.payload.value.upper()

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(self, commit: Commit, partitions: Mapping[Partition, int]) -> Any:
            return RunTask(transform, CommitOffsets(commit))

    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {"bootstrap.servers": cluster.bootstrap_servers, "log_level": 3},
            group_id=f"bench-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
        )
    )
    processor = StreamProcessor(consumer, Topic(topic), Factory())
    if floor:
        from arroyo.utils.metrics import get_metrics

        processor._StreamProcessor__metrics_buffer = FloorBuffer(get_metrics())  # type: ignore[attr-defined]
    processor.run()
    assert seen[0] == messages and len(marks) == 2, f"{seen[0]} of {messages} consumed"
    (cpu_first, first), (cpu_last, last) = marks
    between = messages - 1
    measured.append((cpu_last - cpu_first) / between * 1e6)
    return between / (last - first), processor


def consumer(
    rounds: int,
    messages: int,
    alternate: Callable[..., tuple[float, ...]],
) -> list[dict[str, Any]]:
    """The StreamProcessor's figures: messages/s, and CPU time per message over all the consuming
    process's threads (the mock cluster's fetch path bounds the wall clock, so messages/s cannot
    show what the patch saves; CPU time can). The cluster runs in a process of its own, so that
    its brokers' work is not counted. A processor made while the patch is installed is patched;
    one made while it is not is stock, which the bench checks afterwards."""
    topic = "bench-consume"
    cluster = MockClusterProcess()
    try:
        fill_topic(cluster, topic, messages)
        return consumer_rounds(cluster, topic, rounds, messages, alternate)
    finally:
        cluster.close()


def consumer_rounds(
    cluster: MockClusterProcess,
    topic: str,
    rounds: int,
    messages: int,
    alternate: Callable[..., tuple[float, ...]],
) -> list[dict[str, Any]]:
    cpu: dict[str, list[float]] = {"stock": [], "patched": [], "floor": []}

    def side(name: str) -> Callable[[], float]:
        def run() -> float:
            rate, processor = consume(cluster, topic, messages, cpu[name], floor=name == "floor")
            buffer = processor._StreamProcessor__metrics_buffer
            patched = getattr(buffer, BUFFER_ATTR, None) is not None
            kind = "floor" if isinstance(buffer, FloorBuffer) else "patched" if patched else "stock"
            if kind != name:
                raise RuntimeError(f"bench: a {name} consumer round ran with a {kind} metrics buffer")
            return rate

        return run

    s, p, f = alternate(side("stock"), side("patched"), rounds, floor=side("floor"))
    # The warm-up runs of alternate() are not measured figures.
    cpu_stock, cpu_patched, cpu_floor = (
        statistics.median(cpu[name][1:]) for name in ("stock", "patched", "floor")
    )
    return [
        figure("consumer on the mock cluster, msg/s", "messages/s", s, p, f),
        figure(
            "consumer on the mock cluster, CPU per message", "us/message", cpu_stock, cpu_patched, cpu_floor
        ),
    ]


def figure(label: str, unit: str, stock: float, patched: float, floor: float | None = None) -> dict[str, Any]:
    return {
        "figure": label,
        "unit": unit,
        "stock": stock,
        "patched": patched,
        "ratio": patched / stock,
        "floor": floor,
        "floor_ratio": None if floor is None else patched / floor,
    }
