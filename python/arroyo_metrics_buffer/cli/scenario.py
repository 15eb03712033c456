"""One demo run, in a process of its own: ``python -m arroyo_metrics_buffer.cli.scenario``.

What a high-throughput consumer with a thread pool does: one arroyo ConfluentProducer (the pool)
shared by worker threads that produce and poll it, plus threads that flush it, with its queue purged
every few ms so that deliveries succeed and fail by turns (both produce_status keys appear and
vanish between flushes); a quarter of the messages go through two KafkaProducers instead. Then a
StreamProcessor consumes what was delivered and forwards it with arroyo's Produce strategy through
a KafkaProducer. A counting metrics backend records everything arroyo emits; the result says
whether each count is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ..targets.producer import CALLBACK_LATENCY, PRODUCE_STATUS
from .demo_result import (
    FORWARD,
    KAFKA_PRODUCERS,
    POOL,
    STATUSES,
    SWITCH_INTERVAL,
    ForwardReport,
    KafkaReport,
    PoolReport,
    RunResult,
    StreamReport,
)
from .kafka import CountingBackend, create_topics
from .load import Load
from .progress import Progress

SCENARIO_SECONDS = 300


@dataclass
class Topics:
    source: str
    sink: str
    group: str


def watchdog(parent: int, seconds: float) -> None:
    """Ends this process if the demo that started it is gone (its Kafka cluster went with it) or
    the run takes longer than `seconds`: a scenario never outlives its demo."""

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def prepare(bootstrap: str, patched: bool, mock: bool) -> tuple[CountingBackend, list[str], Topics]:
    """Both runs alike: the backend, fast thread switching and fresh topics; install() if patched."""
    from arroyo.utils.metrics import configure_metrics

    from .._patch import install

    # What makes a once-a-day race show in seconds: switching threads every microsecond, not 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    backend = CountingBackend()
    configure_metrics(backend, force=True)
    targets = install() if patched else []
    run = uuid.uuid4().hex[:8]
    topics = Topics(f"amb-demo-{run}", f"amb-demo-{run}-forwarded", f"amb-demo-{run}")
    create_topics(bootstrap, [topics.source, topics.sink], mock)
    return backend, targets, topics


def stream(load: Load, bootstrap: str, topics: Topics, expected: int, progress: Progress) -> int:
    """A StreamProcessor consumes what was delivered and forwards it through Produce; how many it
    consumed."""
    from arroyo.backends.kafka import KafkaProducer

    from .strategies import forwarding_processor

    forward = KafkaProducer({"bootstrap.servers": bootstrap, "client.id": FORWARD})
    processor, steps = forwarding_processor(bootstrap, topics.source, topics.sink, topics.group, forward)

    def consumed() -> int:
        return sum(step.submitted for step in steps)

    runner = threading.Thread(target=load.guarded, args=(processor.run,))
    runner.start()
    progress.label += " (StreamProcessor)"
    deadline = time.monotonic() + 120
    while consumed() < expected and runner.is_alive() and time.monotonic() < deadline:
        progress.show(f"consumed {consumed():,}/{expected:,}")
        time.sleep(0.05)
    progress.show(f"consumed {consumed():,}/{expected:,}", final=True)
    processor.signal_shutdown()
    runner.join(60)
    load.close_kafka_producer(forward)
    return consumed()


def pool_report(load: Load, backend: CountingBackend, latency: bool) -> PoolReport:
    emitted = {
        s: int(backend.increment_total(PRODUCE_STATUS, producer_name=POOL, status=s)) for s in STATUSES
    }
    delivered = {s: load.delivered[s] for s in STATUSES}
    produced = sum(load.produced)
    return PoolReport(
        produced=produced,
        delivered=delivered,
        callbacks_never_ran=produced - sum(delivered.values()),
        produce_status_emitted=emitted,
        difference={s: emitted[s] - delivered[s] for s in STATUSES},
        callback_latency_samples=backend.timing_count(CALLBACK_LATENCY, producer_name=POOL)
        if latency
        else None,
    )


def emitted_by(backend: CountingBackend, name: str, counts: bool) -> dict[str, int | None]:
    return {
        s: int(backend.increment_total(PRODUCE_STATUS, producer_name=name, status=s)) if counts else None
        for s in STATUSES
    }


def is_exact(result: RunResult, forwarded: int) -> bool:
    pool, stream = result.pool, result.stream_processor
    deliveries = sum(pool.delivered.values())
    return (
        not result.exceptions
        and pool.callbacks_never_ran == 0
        and all(v == 0 for v in pool.difference.values())
        and pool.callback_latency_samples in (None, deliveries)
        and stream.consumed == stream.expected
        and forwarded
        == (stream.consumed if result.forward.produce_status_emitted["success"] is not None else 0)
        and all(
            k.futures["unresolved"] == 0
            and k.produce_status_emitted["success"] in (None, k.futures["success"])
            and k.produce_status_emitted["error"] in (None, k.futures["error"])
            for k in result.kafka.values()
        )
    )


def scenario(bootstrap: str, messages: int, threads: int, patched: bool, mock: bool) -> RunResult:
    """The run: prepare, load the producers, stream, count."""
    from arroyo.backends.kafka import KafkaProducer

    from .._patch import arroyo_version

    backend, targets, topics = prepare(bootstrap, patched, mock)
    progress = Progress("with arroyo_metrics_buffer" if patched else "stock arroyo")
    load = Load(bootstrap, topics.source, messages, threads)
    seconds = load.run(progress)
    outcomes = load.close()
    expected = load.delivered["success"] + sum(o["success"] for o in outcomes.values())
    consumed = stream(load, bootstrap, topics, expected, progress)
    # Before 2.40.3 KafkaProducer wraps confluent_kafka.Producer and emits no produce_status.
    counts = "ConfluentProducer" in KafkaProducer.__init__.__code__.co_names
    latency = any(name == CALLBACK_LATENCY for name, _ in backend.timings)
    result = RunResult(
        arroyo=arroyo_version(),
        patched=targets,
        messages=messages,
        threads=threads,
        seconds=round(seconds, 3),
        messages_per_second=round(sum(load.produced) / seconds),
        exceptions=dict(load.raised),
        exception_examples=load.examples,
        pool=pool_report(load, backend, latency),
        kafka={
            name: KafkaReport(len(load.futures[name]), outcomes[name], emitted_by(backend, name, counts))
            for name in KAFKA_PRODUCERS
        },
        forward=ForwardReport(consumed, {"success": emitted_by(backend, FORWARD, counts)["success"]}),
        stream_processor=StreamReport(
            expected, consumed, int(backend.increment_total("arroyo.consumer.run.count"))
        ),
        exact=False,
    )
    forwarded = int(backend.increment_total(PRODUCE_STATUS, producer_name=FORWARD, status="success"))
    result.exact = is_exact(result, forwarded)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arroyo_metrics_buffer.cli.scenario")
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--patched", action="store_true")
    p.add_argument("--mock", action="store_true")
    p.add_argument("--parent", type=int, required=True, help="the demo's pid: exit when it is gone")
    args = p.parse_args(argv)
    watchdog(args.parent, SCENARIO_SECONDS)
    result = scenario(args.bootstrap_servers, args.messages, args.threads, args.patched, args.mock)
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
