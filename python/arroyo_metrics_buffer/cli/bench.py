"""`bench`: the cost of arroyo's metrics bookkeeping, stock vs patched, measured in one process.

Each figure alternates stock and patched rounds and reports the medians and their ratio, so both
sides see the same machine state. A stock object is created and used while the patch is not
installed; a patched one is created while it is (and keeps its native buffer either way).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

from .._patch import arroyo_version, install, uninstall
from ..targets.base import BUFFER_ATTR
from ..targets.producer import CALLBACK
from .kafka import MockCluster, versions
from .table import table

#: The targets of the issues that asked for these figures (patched / stock).
TARGETS = {
    "MetricsBuffer.incr_counter": ("<=", 0.7),
    "MetricsBuffer.incr_timing": ("<=", 0.7),
    "ConfluentProducer delivery callback": ("<=", 0.6),
    "produce + deliver on the mock cluster": (">=", 1.0),
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


def alternate(stock: Callable[[], float], patched: Callable[[], float], rounds: int) -> tuple[float, float]:
    """The medians of `rounds` runs of each side, after one warm-up run of each, in ABBA order
    (stock, patched, patched, stock, ...) so that neither side always runs first.

    Stock runs with the patch uninstalled and patched runs with it installed. This matters beyond
    the calls measured: while installed, arroyo's class adopts a stock instance into the patch the
    first time one of its patched methods runs (arroyo's own code calls them through the class),
    and the instance stays adopted; `still_stock` checks that this did not happen.
    """
    times: dict[bool, list[float]] = {False: [], True: []}

    def run(is_patched: bool) -> float:
        (install if is_patched else uninstall)()
        return (patched if is_patched else stock)()

    run(False)  # warm-up
    run(True)
    for i in range(rounds):
        for is_patched in (False, True) if i % 2 == 0 else (True, False):
            times[is_patched].append(run(is_patched))
    uninstall()
    return statistics.median(times[False]), statistics.median(times[True])


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
    latency = "time_of_produce" in vars(ConfluentProducer)[CALLBACK].__code__.co_varnames
    delivery_args: tuple[Any, ...] = (None, None, time.time()) if latency else (None, None)

    def loop(call: Callable[..., None], *args: Any) -> Callable[[], float]:
        return lambda: per_call_ns(call, args, calls)

    figures = []
    for label, stock, ours in (
        (
            "MetricsBuffer.incr_counter",
            loop(stock_buffer.incr_counter, "arroyo.consumer.run.count", 1),
            loop(ours_buffer.incr_counter, "arroyo.consumer.run.count", 1),
        ),
        (
            "MetricsBuffer.incr_timing",
            loop(stock_buffer.incr_timing, "arroyo.consumer.poll.time", 0.001),
            loop(ours_buffer.incr_timing, "arroyo.consumer.poll.time", 0.001),
        ),
        (
            "ConfluentProducer delivery callback",
            loop(getattr(stock_producer, CALLBACK), *delivery_args),
            loop(getattr(ours_producer, CALLBACK), *delivery_args),
        ),
    ):
        s, p = alternate(stock, ours, rounds)
        still_stock(stock_buffer, stock_producer)
        figures.append({"figure": label, "unit": "ns/call", "stock": s, "patched": p, "ratio": p / s})
    return figures


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


def end_to_end(rounds: int, messages: int) -> dict[str, Any]:
    """Messages/s producing and delivering through one ConfluentProducer on the mock cluster, with
    a thread polling it as KafkaProducer's worker does."""
    from arroyo.backends.kafka.consumer import ConfluentProducer

    cluster = MockCluster()
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
    stock, ours = (lambda: throughput(producers[0], messages)), (lambda: throughput(producers[1], messages))
    s, p = alternate(stock, ours, rounds)
    still_stock(producers[0])
    producers.clear()  # the clients close before the cluster they talk to
    del cluster
    return {
        "figure": "produce + deliver on the mock cluster",
        "unit": "messages/s",
        "stock": s,
        "patched": p,
        "ratio": p / s,
    }


def bench(rounds: int, calls: int, messages: int, as_json: bool) -> int:
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
    figures.append(end_to_end(rounds, messages))
    for f in figures:
        op, target = TARGETS[f["figure"]]
        f["target"] = f"{op} {target}"
        f["meets_target"] = f["ratio"] <= target if op == "<=" else f["ratio"] >= target
    if as_json:
        print(json.dumps(dict(header, figures=figures), indent=2))
        return 0
    rows = [
        (
            f["figure"],
            f["unit"],
            f"{f['stock']:,.0f}",
            f"{f['patched']:,.0f}",
            f"{f['ratio']:.2f}x",
            f"{f['target']} " + ("met" if f["meets_target"] else "MISSED"),
        )
        for f in figures
    ]
    print("\n".join(table(("figure", "unit", "stock arroyo", "patched", "ratio", "target"), rows, left=2)))
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
