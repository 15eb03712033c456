"""`demo`: the same Kafka scenario with stock arroyo and with install(), each in a fresh process
(see ``scenario.py``), and a table of what each run counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from .demo_result import (
    FORWARD,
    KAFKA_PRODUCERS,
    KAFKA_SHARE,
    POOL,
    PURGE_EVERY,
    SWITCH_INTERVAL,
    RunFailure,
    RunResult,
    split,
)
from .kafka import MockCluster, check_reachable, versions
from .scenario import SCENARIO_SECONDS
from .table import table

Run = RunResult | RunFailure
HEADS = ("stock arroyo", "with arroyo_metrics_buffer")
NONE_BEFORE = "n/a (none before 2.40.3)"


def header(where: str, messages: int, threads: int) -> str:
    from .._patch import arroyo_version

    pool, kafka = split(messages, threads)
    return (
        f"arroyo {arroyo_version()}, {versions()}; {where}\n"
        f"{messages:,} messages from {threads} producing/polling threads: {pool:,} through one "
        f"ConfluentProducer ({POOL}) that they share with {threads} flushing threads (its queue purged "
        f"every {PURGE_EVERY * 1000:g} ms, so deliveries fail and succeed by turns), and every "
        f"{KAFKA_SHARE}th message, {kafka:,} in all, through two KafkaProducers; each run in a fresh "
        f"process, switching threads every {SWITCH_INTERVAL * 1e6:g} µs (sys.setswitchinterval) so "
        f"that the race shows in seconds"
    )


def run_scenario(bootstrap: str, messages: int, threads: int, patched: bool, mock: bool) -> Run:
    command = [
        sys.executable,
        "-m",
        "arroyo_metrics_buffer.cli.scenario",
        *("--bootstrap-servers", bootstrap, "--messages", str(messages), "--threads", str(threads)),
        *(["--patched"] if patched else []),
        *(["--mock"] if mock else []),
        *("--parent", str(os.getpid())),
    ]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=SCENARIO_SECONDS)
    except subprocess.TimeoutExpired:
        return RunFailure(patched, f"the run did not finish within {SCENARIO_SECONDS} s (hung)")
    try:
        return RunResult.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, KeyError, TypeError):
        return RunFailure(patched, f"the run exited with {done.returncode} and no result")


def n(value: int | None) -> str:
    return NONE_BEFORE if value is None else f"{value:,}"


def signed(value: int) -> str:
    return f"{value:+,}" if value else "0"


def pair(a: int | None, b: int | None) -> str:
    return f"{n(a)} / {n(b)}"


def pool_rows(runs: list[Run]) -> list[tuple[str, Callable[[RunResult], str]]]:
    rows: list[tuple[str, Callable[[RunResult], str]]] = [
        (f"{POOL}: messages produced", lambda r: n(r.pool.produced)),
        (
            "  delivered (success / error)",
            lambda r: pair(r.pool.delivered["success"], r.pool.delivered["error"]),
        ),
        (
            "  produce_status emitted (success / error)",
            lambda r: pair(r.pool.produce_status_emitted["success"], r.pool.produce_status_emitted["error"]),
        ),
        (
            "  emitted minus delivered, success / error (+ extra, - lost)",
            lambda r: f"{signed(r.pool.difference['success'])} / {signed(r.pool.difference['error'])}",
        ),
    ]
    if any(isinstance(r, RunResult) and r.pool.callback_latency_samples is not None for r in runs):
        rows.append(
            (
                "  callback_latency samples / deliveries",
                lambda r: pair(r.pool.callback_latency_samples, sum(r.pool.delivered.values())),
            )
        )
    rows.append(("  user delivery callbacks that never ran", lambda r: n(r.pool.callbacks_never_ran)))
    rows.append(("  messages/s (produce to delivery)", lambda r: n(r.messages_per_second)))
    return rows


def kafka_rows(name: str) -> list[tuple[str, Callable[[RunResult], str]]]:
    return [
        (
            f"{name} (KafkaProducer): futures ok / failed / never resolved",
            lambda r: " / ".join(n(v) for v in r.kafka[name].futures.values()),
        ),
        (
            "  produce_status emitted (success / error)",
            lambda r: " / ".join(n(v) for v in r.kafka[name].produce_status_emitted.values()),
        ),
    ]


def rows_of(runs: list[Run]) -> list[tuple[str, Callable[[RunResult], str]]]:
    kinds = sorted({k for r in runs if isinstance(r, RunResult) for k in r.exceptions})
    return [
        ("exceptions raised by poll()/flush()", lambda r: n(sum(r.exceptions.values()))),
        *((f"  {kind}", lambda r, k=kind: n(r.exceptions.get(k, 0))) for kind in kinds),
        *pool_rows(runs),
        *(row for name in KAFKA_PRODUCERS for row in kafka_rows(name)),
        (
            "StreamProcessor: consumed / delivered",
            lambda r: pair(r.stream_processor.consumed, r.stream_processor.expected),
        ),
        (
            f"{FORWARD} (Produce step): produce_status success",
            lambda r: n(r.forward.produce_status_emitted["success"]),
        ),
        ("result", lambda r: "exact" if r.exact else "WRONG"),
    ]


def render(runs: list[Run]) -> str:
    rows = [
        (label, *(get(r) if isinstance(r, RunResult) else "-" for r in runs)) for label, get in rows_of(runs)
    ]
    rows += [
        (f"{head} failed", r.error) for head, r in zip(HEADS, runs, strict=False) if isinstance(r, RunFailure)
    ]
    lines = table(("", *HEADS), rows)
    first = runs[0]
    if isinstance(first, RunResult) and first.exception_examples:
        lines += ["", "what stock arroyo raised, for example:"]
        lines += [f"  {k}: {v}" for k, v in first.exception_examples.items()]
    return "\n".join(lines)


def demo(bootstrap_servers: str | None, messages: int, threads: int, as_json: bool) -> int:
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
    print(header(where, messages, threads), file=sys.stderr)
    runs = [
        run_scenario(bootstrap_servers, messages, threads, patched, cluster is not None)
        for patched in (False, True)
    ]
    ok = isinstance(runs[1], RunResult) and runs[1].exact
    if as_json:
        report = {"bootstrap_servers": bootstrap_servers, "runs": [r.to_json() for r in runs]}
        print(json.dumps(dict(report, patched_run_exact=ok), indent=2))
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
