"""A processing step for the demo and the tests (imports arroyo: import it only where used)."""

from __future__ import annotations

from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies import ProcessingStrategy
from arroyo.types import Message


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
