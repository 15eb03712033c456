"""`demo`: the same Kafka scenario with stock arroyo and with install(), each in a fresh subprocess.

The scenario (run by the hidden `_scenario` subcommand) is what a high-throughput consumer with a
thread pool does: one arroyo ConfluentProducer shared by worker threads that produce and poll it,
plus threads that flush it, with a message timeout so short that deliveries succeed and fail by
turns (both produce_status keys appear and vanish between flushes). Then a StreamProcessor consumes
what was delivered through a real KafkaConsumer and forwards it with arroyo's Produce strategy
through a KafkaProducer. A counting metrics backend records everything arroyo emits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ._kafka import CountingBackend, MockCluster, check_reachable, create_topics, versions

PRODUCE_STATUS = "arroyo.producer.produce_status"
CALLBACK_LATENCY = "arroyo.producer.callback_latency"
POOL = "demo-pool"
FORWARD = "demo-forward"
SCENARIO_SECONDS = 300
SWITCH_INTERVAL = 1e-6
PURGE_EVERY = 0.005
KAFKA_PRODUCERS = ("demo-kafka-1", "demo-kafka-2")
KAFKA_SHARE = 4
QUEUE_FULL_SECONDS = 30


class Progress:
    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.last = now
        if self.tty:
            sys.stderr.write(f"\r\033[K  {self.label}: {text}" + ("\n" if final else ""))
        else:
            sys.stderr.write(f"  {self.label}: {text}\n")
        sys.stderr.flush()


def watchdog(parent: int, seconds: float) -> None:
    """Ends this process if the demo that started it is gone (its Kafka cluster went with it) or
    the run takes longer than `seconds`: a scenario never outlives its demo."""

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def scenario(bootstrap: str, messages: int, threads: int, patched: bool, mock: bool) -> dict[str, Any]:
    """Runs in its own process; returns the counts as a JSON-able dict."""
    from arroyo.backends.kafka import KafkaConsumer, KafkaPayload, KafkaProducer
    from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
    from arroyo.backends.kafka.consumer import ConfluentProducer
    from arroyo.processing.processor import StreamProcessor
    from arroyo.processing.strategies import (
        CommitOffsets,
        ProcessingStrategyFactory,
        Produce,
    )
    from arroyo.types import Commit, Partition, Topic
    from arroyo.utils.metrics import configure_metrics

    from ._patch import arroyo_version, install
    from ._strategies import CountingStep

    def consumed() -> int:
        return sum(step.submitted for step in steps)

    # What makes a once-a-day race show in seconds, in both runs alike: the interpreter switches
    # threads every microsecond instead of every 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL)
    backend = CountingBackend()
    configure_metrics(backend, force=True)
    targets = install() if patched else []
    progress = Progress("with arroyo_metrics_buffer" if patched else "stock arroyo")
    run = uuid.uuid4().hex[:8]
    source, sink = f"amb-demo-{run}", f"amb-demo-{run}-forwarded"
    create_topics(bootstrap, [source, sink], mock)

    lock = threading.Lock()
    delivered: Counter[str] = Counter()
    raised: Counter[str] = Counter()
    examples: dict[str, str] = {}

    def on_delivery(error: Any, message: Any) -> None:
        with lock:
            delivered["error" if error is not None else "success"] += 1

    def guarded(call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except BufferError:
            raise
        except Exception as e:
            kind = type(e).__name__
            with lock:
                raised[kind] += 1
                examples.setdefault(kind, str(e)[:120])
            return None

    pool = ConfluentProducer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": POOL,
            # Messages wait up to 2 ms in the local queue, where the purger below fails some of them.
            "linger.ms": 2,
        }
    )
    # Every KAFKA_SHARE-th message goes through one of two arroyo KafkaProducers instead, from the
    # same threads; their own worker threads poll them.
    kafka_producers = {
        name: KafkaProducer({"bootstrap.servers": bootstrap, "client.id": name, "linger.ms": 2})
        for name in KAFKA_PRODUCERS
    }
    futures: dict[str, list[Any]] = {name: [] for name in KAFKA_PRODUCERS}
    share, rest = divmod(messages, threads)
    produced = [0] * threads
    done = threading.Event()

    def worker(index: int) -> None:
        for i in range(share + (1 if index < rest else 0)):
            if i % KAFKA_SHARE == KAFKA_SHARE - 1:
                name = KAFKA_PRODUCERS[(index + i) % len(KAFKA_PRODUCERS)]
                future = guarded(
                    kafka_producers[name].produce, Topic(source), KafkaPayload(None, b"payload", [])
                )
                with lock:
                    futures[name].append(future)
                continue
            full_since = None
            while True:
                try:
                    pool.produce(source, b"payload", on_delivery=on_delivery)
                    break
                except BufferError:  # librdkafka's queue is full: serve callbacks, retry
                    full_since = full_since or time.monotonic()
                    if time.monotonic() - full_since > QUEUE_FULL_SECONDS:
                        with lock:  # Kafka is gone: stop this thread, and say so
                            raised["QueueFull"] += 1
                            examples.setdefault("QueueFull", f"queue full for {QUEUE_FULL_SECONDS} s")
                        return
                    guarded(pool.poll, 0.01)
            produced[index] += 1
            guarded(pool.poll, 0)

    def flusher() -> None:
        while not done.is_set():
            guarded(pool.flush, 0.01)

    def purger() -> None:
        # Fails what is still queued every few ms (delivery reports with _PURGE_QUEUE), so that
        # deliveries succeed and fail by turns: both produce_status keys appear and vanish between
        # flushes. (A very short message.timeout.ms does the same on some librdkafka versions and
        # fails everything on others.)
        while not done.wait(PURGE_EVERY):
            guarded(pool.purge, True, False, False)

    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    flushers = [threading.Thread(target=flusher) for _ in range(threads)] + [threading.Thread(target=purger)]
    for t in workers + flushers:
        t.start()

    def status() -> str:
        with lock:
            return (
                f"produced {sum(produced):,}/{messages:,}  delivered {sum(delivered.values()):,}"
                f"  exceptions {sum(raised.values()):,}"
            )

    while any(t.is_alive() for t in workers):
        progress.show(status())
        time.sleep(0.05)
    done.set()
    for t in flushers:
        t.join()
    deadline = time.monotonic() + 60
    while len(pool) and time.monotonic() < deadline:
        guarded(pool.flush, 1)
    seconds = time.monotonic() - started
    guarded(pool.flush, 0)  # flush() does the metrics before librdkafka's callbacks: once more
    outcomes = {name: settle(fs) for name, fs in futures.items()}
    for producer in kafka_producers.values():
        guarded(lambda p=producer: p.close().result(timeout=60))
        # Like the pool above: close() flushes metrics before the last callbacks.
        guarded(producer._KafkaProducer__producer.flush, 0)  # type: ignore[attr-defined]
    progress.show(status(), final=True)

    # End to end: a StreamProcessor consumes what was delivered and forwards it through Produce.
    expected = delivered["success"] + sum(o["success"] for o in outcomes.values())
    steps: list[CountingStep] = []

    forward = KafkaProducer({"bootstrap.servers": bootstrap, "client.id": FORWARD})

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(self, commit: Commit, partitions: Mapping[Partition, int]) -> Any:
            steps.append(CountingStep(Produce(forward, Topic(sink), CommitOffsets(commit))))
            return steps[-1]

    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {"bootstrap.servers": bootstrap}, group_id=f"amb-demo-{run}", auto_offset_reset="earliest"
        )
    )
    processor = StreamProcessor(consumer, Topic(source), Factory())
    runner = threading.Thread(target=guarded, args=(processor.run,))
    runner.start()
    label = progress.label
    progress.label = f"{label} (StreamProcessor)"
    deadline = time.monotonic() + 120
    while consumed() < expected and runner.is_alive() and time.monotonic() < deadline:
        progress.show(f"consumed {consumed():,}/{expected:,}")
        time.sleep(0.05)
    progress.show(f"consumed {consumed():,}/{expected:,}", final=True)
    processor.signal_shutdown()
    runner.join(60)
    guarded(lambda: forward.close().result(timeout=60))
    # Like the pool above: the forwarder's last callbacks come after its final metrics flush.
    guarded(forward._KafkaProducer__producer.flush, 0)  # type: ignore[attr-defined]

    latency = any(name == CALLBACK_LATENCY for name, _ in backend.timings)
    # Before 2.40.3 KafkaProducer wraps confluent_kafka.Producer and emits no produce_status.
    forward_counts = "ConfluentProducer" in KafkaProducer.__init__.__code__.co_names

    def producer_report(name: str, produced_count: int, callbacks: Counter[str]) -> dict[str, Any]:
        emitted = {
            s: backend.increment_total(PRODUCE_STATUS, producer_name=name, status=s)
            for s in ("success", "error")
        }
        report: dict[str, Any] = {
            "produced": produced_count,
            "delivered": {s: callbacks[s] for s in ("success", "error")},
            "callbacks_never_ran": produced_count - sum(callbacks.values()),
            "produce_status_emitted": emitted,
            "difference": {s: emitted[s] - callbacks[s] for s in ("success", "error")},
        }
        if latency:
            report["callback_latency_samples"] = backend.timing_count(CALLBACK_LATENCY, producer_name=name)
        return report

    forwarded = backend.increment_total(PRODUCE_STATUS, producer_name=FORWARD, status="success")

    def kafka_report(name: str) -> dict[str, Any]:
        outcome = outcomes[name]
        emitted = {
            s: backend.increment_total(PRODUCE_STATUS, producer_name=name, status=s)
            if forward_counts
            else None
            for s in ("success", "error")
        }
        return {"produced": len(futures[name]), "futures": outcome, "produce_status_emitted": emitted}

    producers = {
        POOL: producer_report(POOL, sum(produced), delivered),
        **{name: kafka_report(name) for name in KAFKA_PRODUCERS},
        # Each consumed message was forwarded once; the forwarder's callbacks are arroyo's own.
        FORWARD: {
            "produced": consumed(),
            "produce_status_emitted": {"success": forwarded if forward_counts else None},
        },
    }
    pool_report = producers[POOL]
    exact = (
        not raised
        and pool_report["callbacks_never_ran"] == 0
        and all(v == 0 for v in pool_report["difference"].values())
        and pool_report.get("callback_latency_samples", sum(delivered.values())) == sum(delivered.values())
        and consumed() == expected
        and (forwarded == consumed() if forward_counts else forwarded == 0)
        and all(
            producers[name]["futures"]["unresolved"] == 0
            and (
                not forward_counts
                or producers[name]["produce_status_emitted"]
                == {s: producers[name]["futures"][s] for s in ("success", "error")}
            )
            for name in KAFKA_PRODUCERS
        )
    )
    return {
        "arroyo": arroyo_version(),
        "patched": targets,
        "messages": messages,
        "threads": threads,
        "seconds": round(seconds, 3),
        "messages_per_second": round(sum(produced) / seconds),
        "exceptions": dict(raised),
        "exception_examples": examples,
        "producers": producers,
        "stream_processor": {
            "expected": expected,
            "consumed": consumed(),
            "run_count_emitted": backend.increment_total("arroyo.consumer.run.count"),
        },
        "exact": exact,
    }


def settle(futures: list[Any], timeout: float = 60) -> dict[str, int]:
    """Waits for KafkaProducer futures: how many succeeded, failed, or never resolved."""
    import concurrent.futures

    real = [f for f in futures if f is not None]
    concurrent.futures.wait(real, timeout=timeout)
    out = {"success": 0, "error": 0, "unresolved": len(futures) - len(real)}
    for f in real:
        if not f.done():
            out["unresolved"] += 1
        elif f.exception() is not None:
            out["error"] += 1
        else:
            out["success"] += 1
    return out


def run_scenario(bootstrap: str, messages: int, threads: int, patched: bool, mock: bool) -> dict[str, Any]:
    command = (
        [
            sys.executable,
            "-m",
            "arroyo_metrics_buffer",
            "_scenario",
            "--bootstrap-servers",
            bootstrap,
            "--messages",
            str(messages),
            "--threads",
            str(threads),
        ]
        + (["--patched"] if patched else [])
        + (["--mock"] if mock else [])
        + ["--parent", str(os.getpid())]
    )
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=SCENARIO_SECONDS)
    except subprocess.TimeoutExpired:
        return {"patched": patched, "error": f"the run did not finish within {SCENARIO_SECONDS} s (hung)"}
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    except (ValueError, IndexError):
        return {"patched": patched, "error": f"the run exited with {done.returncode} and no result"}


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def forwarded_text(value: int | None) -> str:
    return "n/a (none before 2.40.3)" if value is None else _n(value)


def render(runs: list[dict[str, Any]]) -> str:
    heads = ["stock arroyo", "with arroyo_metrics_buffer"]
    rows: list[tuple[str, ...]] = []

    def row(label: str, get: Any) -> None:
        values = []
        for run in runs:
            try:
                values.append(get(run))
            except (KeyError, TypeError):
                values.append("-")
        rows.append((label, *values))

    def pool(run: dict[str, Any]) -> dict[str, Any]:
        return run["producers"][POOL]  # type: ignore[no-any-return]

    def signed(v: int) -> str:
        return f"{v:+,}" if v else "0"

    row("exceptions raised by poll()/flush()", lambda r: _n(sum(r["exceptions"].values())))
    for kind in sorted({k for r in runs for k in r.get("exceptions", {})}):
        row(f"  {kind}", lambda r, k=kind: _n(r["exceptions"].get(k, 0)))
    row(f"{POOL}: messages produced", lambda r: _n(pool(r)["produced"]))
    row(
        "  delivered (success / error)",
        lambda r: f"{_n(pool(r)['delivered']['success'])} / {_n(pool(r)['delivered']['error'])}",
    )
    row(
        "  produce_status emitted (success / error)",
        lambda r: "{} / {}".format(*map(_n, pool(r)["produce_status_emitted"].values())),
    )
    row(
        "  emitted - delivered (+doubled / -lost)",
        lambda r: f"{signed(pool(r)['difference']['success'])} / {signed(pool(r)['difference']['error'])}",
    )
    if any("callback_latency_samples" in r.get("producers", {}).get(POOL, {}) for r in runs):
        row(
            "  callback_latency samples / deliveries",
            lambda r: f"{_n(pool(r)['callback_latency_samples'])} / {_n(sum(pool(r)['delivered'].values()))}",
        )
    row("  user delivery callbacks that never ran", lambda r: _n(pool(r)["callbacks_never_ran"]))
    row("  messages/s (produce to delivery)", lambda r: _n(r["messages_per_second"]))
    for name in KAFKA_PRODUCERS:
        row(
            f"{name} (KafkaProducer): futures ok / failed / never resolved",
            lambda r, n=name: "{} / {} / {}".format(*map(_n, r["producers"][n]["futures"].values())),
        )
        row(
            "  produce_status emitted (success / error)",
            lambda r, n=name: " / ".join(
                forwarded_text(v) for v in r["producers"][n]["produce_status_emitted"].values()
            ),
        )
    row(
        "StreamProcessor: consumed / delivered",
        lambda r: f"{_n(r['stream_processor']['consumed'])} / {_n(r['stream_processor']['expected'])}",
    )
    row(
        f"{FORWARD} (Produce step): produce_status success",
        lambda r: _n(
            r["producers"][FORWARD]["produce_status_emitted"]["success"] or "n/a (none before 2.40.3)"
        ),
    )
    row("result", lambda r: "exact" if r["exact"] else "WRONG")
    for i, run in enumerate(runs):
        if "error" in run:
            rows.append((f"{heads[i]} failed", run["error"]))
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [("", *heads), *rows]) for i in range(3)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(("", *heads), widths)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
    examples = {k: v for run in runs[:1] for k, v in run.get("exception_examples", {}).items()}
    if examples:
        lines.append("")
        lines.append("what stock arroyo raised, for example:")
        lines.extend(f"  {k}: {v}" for k, v in examples.items())
    return "\n".join(lines)


def demo(bootstrap_servers: str | None, messages: int, threads: int, as_json: bool) -> int:
    from ._patch import arroyo_version

    cluster = None
    if bootstrap_servers:
        problem = check_reachable(bootstrap_servers)
        if problem:
            print(f"error: cannot reach Kafka at {bootstrap_servers}: {problem}", file=sys.stderr)
            return 2
        where = f"Kafka at {bootstrap_servers}"
    else:
        cluster = MockCluster()
        bootstrap_servers = cluster.bootstrap_servers
        where = f"librdkafka's mock cluster at {bootstrap_servers} (in this process, real Kafka protocol)"
    print(
        f"arroyo {arroyo_version()}, {versions()}; {where}\n"
        f"{messages:,} messages through one ConfluentProducer shared by {threads} producing/polling threads "
        f"and {threads} flushing threads (its queue purged every {PURGE_EVERY * 1000:g} ms, so "
        f"deliveries fail and succeed by turns); each run in a fresh process, switching threads every "
        f"{SWITCH_INTERVAL * 1e6:g} µs (sys.setswitchinterval) so that the race shows in seconds",
        file=sys.stderr,
    )
    runs = [
        run_scenario(bootstrap_servers, messages, threads, patched, cluster is not None)
        for patched in (False, True)
    ]
    ok = runs[1].get("exact") is True
    if as_json:
        print(
            json.dumps(
                {"bootstrap_servers": bootstrap_servers, "runs": runs, "patched_run_exact": ok}, indent=2
            )
        )
    else:
        print()
        print(render(runs))
        print()
        print(
            "The patched run is exact: every delivery counted once, nothing raised."
            if ok
            else "The patched run is NOT exact: please report this."
        )
    del cluster
    return 0 if ok else 1
