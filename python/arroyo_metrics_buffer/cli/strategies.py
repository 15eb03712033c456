"""A StreamProcessor that forwards what it consumes, counting it (for the demo and the tests).

Imports arroyo at the top: import this module only where arroyo is needed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload, KafkaProducer
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.processing.processor import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy, ProcessingStrategyFactory, Produce
from arroyo.types import Commit, Message, Partition, Topic


class CountingStep(ProcessingStrategy[KafkaPayload]):
    """Passes messages on to `next_step` and counts them."""

    def __init__(self, next_step: ProcessingStrategy[KafkaPayload]) -> None:
        self.next_step = next_step
        self.submitted = 0

    def submit(self, message: Message[KafkaPayload]) -> None:
        self.next_step.submit(message)
        self.submitted += 1

    def poll(self) -> None:
        self.next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self.next_step.join(timeout)

    def close(self) -> None:
        self.next_step.close()

    def terminate(self) -> None:
        self.next_step.terminate()


def forwarding_processor(
    bootstrap: str, source: str, sink: str, group: str, forward: KafkaProducer
) -> tuple[StreamProcessor[KafkaPayload], list[CountingStep]]:
    """A StreamProcessor reading `source` from the start that forwards each message to `sink`
    through `forward` with arroyo's Produce step, and the counting steps it creates (one per
    assignment)."""
    steps: list[CountingStep] = []

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(self, commit: Commit, partitions: Mapping[Partition, int]) -> Any:
            steps.append(CountingStep(Produce(forward, Topic(sink), CommitOffsets(commit))))
            return steps[-1]

    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {"bootstrap.servers": bootstrap}, group_id=group, auto_offset_reset="earliest"
        )
    )
    return StreamProcessor(consumer, Topic(source), Factory()), steps
