"""The demo's scenario in figures: its fixed parameters, and the typed result of one run, which
travels from the scenario's process to the demo's as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

POOL = "demo-pool"
FORWARD = "demo-forward"
KAFKA_PRODUCERS = ("demo-kafka-1", "demo-kafka-2")
#: Every KAFKA_SHARE-th message of each thread goes through a KafkaProducer instead of the pool.
KAFKA_SHARE = 4
SWITCH_INTERVAL = 1e-6
PURGE_EVERY = 0.005
STATUSES = ("success", "error")


def thread_shares(messages: int, threads: int) -> list[int]:
    """How many messages each producing thread sends."""
    share, rest = divmod(messages, threads)
    return [share + (1 if i < rest else 0) for i in range(threads)]


def split(messages: int, threads: int) -> tuple[int, int]:
    """(through the pool, through the KafkaProducers) for a run of `messages` on `threads`."""
    kafka = sum(n // KAFKA_SHARE for n in thread_shares(messages, threads))
    return messages - kafka, kafka


@dataclass
class PoolReport:
    """The ConfluentProducer shared by every thread: where the race is."""

    produced: int
    delivered: dict[str, int]
    callbacks_never_ran: int
    produce_status_emitted: dict[str, int]
    #: emitted minus delivered, per status: above 0 counted more than once, below 0 lost.
    difference: dict[str, int]
    #: None before arroyo 2.40.3, which keeps no latency samples.
    callback_latency_samples: int | None


@dataclass
class KafkaReport:
    """One of the KafkaProducers, polled only by its own worker thread."""

    produced: int
    #: success / error / unresolved
    futures: dict[str, int]
    #: None per status before arroyo 2.40.3, whose KafkaProducer emits no produce_status.
    produce_status_emitted: dict[str, int | None]


@dataclass
class ForwardReport:
    """The Produce step's KafkaProducer, forwarding what the StreamProcessor consumed."""

    produced: int
    produce_status_emitted: dict[str, int | None]


@dataclass
class StreamReport:
    expected: int
    consumed: int
    run_count_emitted: int


@dataclass
class RunResult:
    arroyo: str | None
    patched: list[str]
    messages: int
    threads: int
    seconds: float
    messages_per_second: int
    exceptions: dict[str, int]
    exception_examples: dict[str, str]
    pool: PoolReport
    kafka: dict[str, KafkaReport]
    forward: ForwardReport
    stream_processor: StreamReport
    exact: bool

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["producers"] = {POOL: out.pop("pool"), **out.pop("kafka"), FORWARD: out.pop("forward")}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        producers = dict(data["producers"])
        fields = {k: v for k, v in data.items() if k != "producers"}
        return cls(
            **dict(
                fields,
                pool=PoolReport(**producers.pop(POOL)),
                forward=ForwardReport(**producers.pop(FORWARD)),
                kafka={name: KafkaReport(**report) for name, report in producers.items()},
                stream_processor=StreamReport(**data["stream_processor"]),
            )
        )


@dataclass
class RunFailure:
    """A run that produced no result (it hung, or its process died)."""

    patched: bool
    error: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
