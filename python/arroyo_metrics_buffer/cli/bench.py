"""`bench`: the cost of arroyo's metrics bookkeeping, stock vs patched, measured in one process.

Each figure alternates stock and patched rounds and reports the medians and their ratio, so both
sides see the same machine state. A stock object is created and used while the patch is not
installed; a patched one is created while it is (and keeps its native buffer either way). Each
recording call is also measured against its floor: a native method with the same signature that
does nothing (`MetricsBuffer._floor()`), in the same rounds.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

from .._native import MetricsBuffer as NativeBuffer
from .._patch import arroyo_version, install, uninstall
from ..targets.base import BUFFER_ATTR
from ..targets.producer import CALLBACK, FLUSH_METRICS
from .bench_kafka import consumer, figure, produce_and_deliver
from .bench_memory import memory
from .kafka import MockCluster, versions
from .table import table

#: Each figure's targets: patched / stock, and patched / floor (the issues that asked for them).
TARGETS: dict[str, dict[str, tuple[str, float]]] = {
    "MetricsBuffer.incr_counter": {"stock": ("<=", 0.45), "floor": ("<=", 2.0)},
    "MetricsBuffer.incr_timing": {"stock": ("<=", 0.45), "floor": ("<=", 2.0)},
    "ConfluentProducer delivery callback": {"stock": ("<=", 0.3), "floor": ("<=", 2.0)},
    "produce + deliver on the mock cluster": {"stock": (">=", 1.5)},
    "consumer on the mock cluster, msg/s": {"stock": (">=", 1.0)},
    "consumer on the mock cluster, CPU per message": {"stock": ("<=", 0.95)},
}


class NullBackend:
    def increment(self, name: str, value: int | float = 1, tags: Any = None) -> None:
        pass

    def timing(self, name: str, value: int | float, tags: Any = None) -> None:
        pass

    def gauge(self, name: str, value: int | float, tags: Any = None) -> None:
        pass


def per_call_ns(call: Callable[..., None], args: tuple[Any, ...], calls: int) -> float:
    """A tight loop, as timeit's: no wrapper between the loop and the call being measured."""
    loop = repeat(None, calls)
    if len(args) == 2:
        a, b = args
        start = time.perf_counter_ns()
        for _ in loop:
            call(a, b)
    else:
        a, b, c = args
        start = time.perf_counter_ns()
        for _ in loop:
            call(a, b, c)
    return (time.perf_counter_ns() - start) / calls


def alternate(
    stock: Callable[[], float],
    patched: Callable[[], float],
    rounds: int,
    floor: Callable[[], float] | None = None,
) -> tuple[float, ...]:
    """The medians of `rounds` runs of each side, after one warm-up run of each, in ABBA order
    (stock, patched, patched, stock, ...) so that neither side always runs first; with a `floor`,
    its median too, run once a round, first in even rounds and last in odd ones.

    Stock runs with the patch uninstalled and patched runs with it installed. This matters beyond
    the calls measured: while installed, arroyo's class adopts a stock instance into the patch the
    first time one of its patched methods runs (arroyo's own code calls them through the class),
    and the instance stays adopted; `still_stock` checks that this did not happen.
    """
    times: dict[bool, list[float]] = {False: [], True: []}
    floors: list[float] = []

    def run(is_patched: bool) -> float:
        (install if is_patched else uninstall)()
        return (patched if is_patched else stock)()

    run(False)  # warm-up
    run(True)
    if floor is not None:
        floor()
    for i in range(rounds):
        if floor is not None and i % 2 == 0:
            floors.append(floor())
        for is_patched in (False, True) if i % 2 == 0 else (True, False):
            times[is_patched].append(run(is_patched))
        if floor is not None and i % 2 == 1:
            floors.append(floor())
    uninstall()
    medians = statistics.median(times[False]), statistics.median(times[True])
    return (*medians, statistics.median(floors)) if floor is not None else medians


def still_stock(*instances: Any) -> None:
    """Refuses a figure whose stock side was adopted by the patch: it would compare the patch with
    itself."""
    for instance in instances:
        if getattr(instance, BUFFER_ATTR, None) is not None:
            raise RuntimeError(
                f"bench: the stock {type(instance).__name__} was adopted by the patch during the "
                "run, so its figure would compare the patch with itself"
            )


def micro(rounds: int, calls: int) -> list[dict[str, Any]]:
    from arroyo.backends.kafka.consumer import ConfluentProducer
    from arroyo.processing.processor import MetricsBuffer

    uninstall()
    stock_buffer = MetricsBuffer()
    stock_producer = ConfluentProducer({"test.mock.num.brokers": 1, "client.id": "bench", "log_level": 0})
    install()
    ours_buffer = MetricsBuffer()
    ours_producer = ConfluentProducer({"test.mock.num.brokers": 1, "client.id": "bench", "log_level": 0})
    uninstall()
    floor = NativeBuffer._floor()
    latency = "time_of_produce" in vars(ConfluentProducer)[CALLBACK].__code__.co_varnames
    delivery_args: tuple[Any, ...] = (None, None, time.time()) if latency else (None, None)

    def loop(call: Callable[..., None], *args: Any) -> Callable[[], float]:
        return lambda: per_call_ns(call, args, calls)

    def fresh(flush: Callable[[], None], call: Callable[..., None], *args: Any) -> Callable[[], float]:
        """A round that starts with an empty window (flushed before it, untimed), as a producer's
        windows are: a round's 200,000 reports take a few milliseconds, and rounds in one window
        would soon hold more latency samples than a second of any real producer (and than the
        patch's cap, beyond which samples are dropped, not kept)."""

        def run() -> float:
            flush()
            return per_call_ns(call, args, calls)

        return run

    name = "arroyo.consumer.run.count"
    figures = []
    for label, stock, ours, nothing in (
        (
            "MetricsBuffer.incr_counter",
            loop(stock_buffer.incr_counter, name, 1),
            loop(ours_buffer.incr_counter, name, 1),
            loop(floor.incr_counter, name, 1),
        ),
        (
            "MetricsBuffer.incr_timing",
            loop(stock_buffer.incr_timing, "arroyo.consumer.poll.time", 0.001),
            loop(ours_buffer.incr_timing, "arroyo.consumer.poll.time", 0.001),
            loop(floor.incr_timing, "arroyo.consumer.poll.time", 0.001),
        ),
        (
            "ConfluentProducer delivery callback",
            fresh(getattr(stock_producer, FLUSH_METRICS), getattr(stock_producer, CALLBACK), *delivery_args),
            fresh(getattr(ours_producer, FLUSH_METRICS), getattr(ours_producer, CALLBACK), *delivery_args),
            loop(floor.report, *delivery_args),
        ),
    ):
        s, p, f = alternate(stock, ours, rounds, floor=nothing)
        still_stock(stock_buffer, stock_producer)
        figures.append(figure(label, "ns/call", s, p, f))
    # What no delivery callback that records arroyo's latency sample can go below: the floor with
    # the one precise clock read (and subtraction) the sample needs, measured right after.
    clock = loop(floor.report_with_clock, *delivery_args)
    clock()
    figures[-1]["clock_floor"] = statistics.median(clock() for _ in range(rounds)) if latency else None
    return figures


def meets(f: dict[str, Any]) -> dict[str, bool]:
    """Whether the figure meets each of its targets."""
    out = {}
    for against, (op, bound) in TARGETS.get(f["figure"], {}).items():
        ratio = f["ratio"] if against == "stock" else f["floor_ratio"]
        out[against] = ratio <= bound if op == "<=" else ratio >= bound
    return out


def bench(
    rounds: int,
    calls: int,
    messages: int,
    consume: int,
    memory_rounds: int,
    memory_seconds: float,
    as_json: bool,
) -> int:
    from arroyo.utils.metrics import configure_metrics

    configure_metrics(NullBackend(), force=True)
    machine = f"{platform.machine()}, {_cpus()} CPUs, {platform.system()} {platform.release()}"
    header = {
        "arroyo": arroyo_version(),
        "kafka": versions(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "machine": machine,
        "rounds": rounds,
        "calls_per_round": calls,
        "messages_per_round": messages,
        "consumed_per_round": consume,
    }
    if not as_json:
        print(
            f"arroyo {header['arroyo']}, {header['kafka']}, Python {header['python']}, {machine}",
            file=sys.stderr,
        )
        print(
            f"medians of {rounds} alternating rounds (stock, patched, patched, stock, ...) in this process",
            file=sys.stderr,
        )
    figures = micro(rounds, calls)
    cluster = MockCluster()
    figures.append(produce_and_deliver(cluster, rounds, messages, alternate, still_stock))
    del cluster  # its brokers' threads stop before the consumer figures
    figures.extend(consumer(rounds, consume, alternate))
    if memory_rounds:
        figures.extend(memory(memory_rounds, memory_seconds))
    for f in figures:
        f["targets"] = {
            against: f"{op} {bound}" for against, (op, bound) in TARGETS.get(f["figure"], {}).items()
        }
        f["meets_targets"] = meets(f)
    if as_json:
        print(json.dumps(dict(header, figures=figures), indent=2))
        return 0
    rows = [
        (
            f["figure"],
            f["unit"],
            _number(f["stock"]),
            _number(f["patched"]),
            "" if f["floor"] is None else _number(f["floor"]),
            f"{f['ratio']:.2f}x",
            "" if f["floor_ratio"] is None else f"{f['floor_ratio']:.2f}x",
            ", ".join(
                f"vs {against} {f['targets'][against]} {'met' if met else 'MISSED'}"
                for against, met in f["meets_targets"].items()
            ),
        )
        for f in figures
    ]
    head = ("figure", "unit", "stock arroyo", "patched", "floor", "vs stock", "vs floor", "targets")
    print("\n".join(table(head, rows, left=2)))
    callback = next(f for f in figures if f["figure"] == "ConfluentProducer delivery callback")
    if callback.get("clock_floor"):
        print(
            f"The delivery callback reads the precise clock for its latency sample, as stock does: "
            f"the floor with that one read is {_number(callback['clock_floor'])} ns, "
            f"{callback['clock_floor'] / callback['floor']:.2f}x the floor; the callback is "
            f"{callback['patched'] / callback['clock_floor']:.2f}x that."
        )
    return 0


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
