"""Interpreter exit (issue 8.1) and the native module's surface (issue 8.7).

Each exit scenario runs as users hit it: a fresh interpreter per run, many runs, every exit status
checked. The agreed behaviour at exit: the native module's atexit hook stops new emits on other
threads, waits (at most 2 s) for emits in flight, then flushes every live MetricsBuffer once from
the exiting thread, so values recorded and never flushed are emitted exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from arroyo_metrics_buffer import _native

RUNS = 30
PARALLEL = 2
RUN_TIMEOUT = 60

#: A statsd-like backend: one UDP datagram per call to a local socket nobody reads; the send releases
#: the GIL in the middle of the emit loop, as a real statsd client does.
UDP_BACKEND = """
import socket

class Udp:
    def __init__(self):
        self.sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sink.bind(("127.0.0.1", 0))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.setblocking(False)

    def send(self, line):
        try:
            self.sender.sendto(line.encode(), self.sink.getsockname())
        except OSError:
            pass

    def increment(self, name, value=1, tags=None):
        self.send(f"{name}:{value}|c")

    def timing(self, name, value, tags=None):
        self.send(f"{name}:{value}|ms")

    def gauge(self, name, value, tags=None):
        self.send(f"{name}:{value}|g")
"""

#: A backend that prints each call (one line, flushed): the parent adds up what was emitted.
PRINTING_BACKEND = """
import sys

class Printing:
    def increment(self, name, value=1, tags=None):
        print("increment", name, value, flush=True)

    def timing(self, name, value, tags=None):
        print("timing", name, value, flush=True)
"""

DAEMON_THREADS_FLUSHING = """
import threading
import time
from arroyo_metrics_buffer import MetricsBuffer

buf = MetricsBuffer(Udp(), frequency_sec=0)

def work(i):
    while True:
        buf.incr_counter(f"counter.{i % 3}", 1, {"thread": str(i)})
        buf.incr_timing("timer", 0.001)
        buf.flush()

for i in range(8):
    threading.Thread(target=work, args=(i,), daemon=True).start()
while buf.flushes < 200:
    time.sleep(0.001)
# Exit without joining the threads: they are inside incr_* / flush, calling the backend.
"""

KAFKA_PRODUCER_WITHOUT_CLOSE = """
import arroyo.backends.kafka.consumer
import arroyo_metrics_buffer
from arroyo.backends.kafka import KafkaPayload, KafkaProducer
from arroyo.types import Topic
from arroyo.utils.metrics import configure_metrics

configure_metrics(Udp(), force=True)
assert arroyo_metrics_buffer.install()
# Every delivery report flushes (arroyo's default is once a second), so that exit usually finds
# arroyo's worker thread inside an emit, as a busy producer's sometimes is.
arroyo.backends.kafka.consumer.METRICS_FREQUENCY_SEC = 0
producer = KafkaProducer({"test.mock.num.brokers": 1, "log_level": 0, "client.id": "exit"})
topic = Topic("exit")
futures = [producer.produce(topic, KafkaPayload(None, b"x", [])) for _ in range(200)]
for future in futures:
    future.result(timeout=30)
for _ in range(1000):
    producer.produce(topic, KafkaPayload(None, b"y", []))
# Exit without close(): arroyo's worker thread is still polling, delivery reports still come.
"""

UNFLUSHED_VALUES = """
from arroyo_metrics_buffer import MetricsBuffer

buf = MetricsBuffer(Printing(), frequency_sec=3600)
buf.incr_counter("c", 2)
buf.incr_timing("t", 0.5)
buf.incr_counter("c", 3)
buf.record_timing("s", 1.5)
other = MetricsBuffer(Printing(), frequency_sec=3600)
other.incr_counter("other", 7)
flushed = MetricsBuffer(Printing(), frequency_sec=3600)
flushed.incr_counter("flushed", 1)
flushed.flush()
# Exit without flush(): each pending value is emitted once, at exit.
"""

UNFLUSHED_VALUES_OF_DAEMON_THREADS = """
import threading
from arroyo_metrics_buffer import MetricsBuffer

buf = MetricsBuffer(Printing(), frequency_sec=3600)
done = threading.Barrier(9)

def work(i):
    for n in range(500):
        buf.incr_counter("c", 1)
        buf.incr_counter(f"thread.{i}", 2)
        if n % 64 == 0:
            buf.flush()
    done.wait()
    threading.Event().wait()  # alive, idle, never joined

for i in range(8):
    threading.Thread(target=work, args=(i,), daemon=True).start()
done.wait()
# Exit: what the threads' flushes did not emit yet is emitted at exit, once.
"""


def run_script(*parts: str) -> tuple[int | str, str, str]:
    """(exit status, or "timed out"; stdout; stderr) of a fresh interpreter running the script."""
    script = "".join(textwrap.dedent(p) for p in parts)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return "timed out", out, err
    return done.returncode, done.stdout, done.stderr


def run_many(*parts: str, runs: int = RUNS) -> list[tuple[int | str, str, str]]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda _: run_script(*parts), range(runs)))


def assert_all_exited_cleanly(results: list[tuple[int | str, str, str]]) -> None:
    statuses = Counter(status for status, _, _ in results)
    fatal = [err for _, _, err in results if "Fatal Python error" in err]
    first_bad = next((err for status, _, err in results if status != 0), "")
    assert (statuses, len(fatal)) == (Counter({0: len(results)}), 0), (
        f"exit statuses {dict(statuses)}, {len(fatal)} fatal errors; a failed run's stderr:\n{first_bad[-3000:]}"
    )


def increment_totals(stdout: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for line in stdout.splitlines():
        method, name, value = line.split()
        assert method == "increment", line
        totals[name] += int(value)
    return totals


@pytest.mark.timeout(900)
def test_exit_while_daemon_threads_flush_to_a_udp_backend() -> None:
    assert_all_exited_cleanly(run_many(UDP_BACKEND, DAEMON_THREADS_FLUSHING))


@pytest.mark.timeout(900)
def test_exit_without_closing_a_kafka_producer() -> None:
    pytest.importorskip("confluent_kafka", reason="the KafkaProducer scenario needs confluent-kafka")
    pytest.importorskip("arroyo", reason="the KafkaProducer scenario needs sentry-arroyo")
    assert_all_exited_cleanly(run_many(UDP_BACKEND, KAFKA_PRODUCER_WITHOUT_CLOSE))


@pytest.mark.timeout(900)
def test_values_never_flushed_are_emitted_once_at_exit() -> None:
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES)
    assert_all_exited_cleanly(results)
    for _, stdout, _ in results:
        lines = stdout.splitlines()
        assert lines[0] == "increment flushed 1"
        assert sorted(lines[1:]) == sorted(
            ["timing t 0.5", "increment c 5", "timing s 1.5", "increment other 7"]
        )
        # Within one buffer, the usual order: timers, counters, then samples.
        assert [line for line in lines if line.split()[1] in ("t", "c", "s")] == [
            "timing t 0.5",
            "increment c 5",
            "timing s 1.5",
        ]


@pytest.mark.timeout(900)
def test_values_of_idle_daemon_threads_are_emitted_once_at_exit() -> None:
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES_OF_DAEMON_THREADS)
    assert_all_exited_cleanly(results)
    expected = Counter({"c": 8 * 500, **{f"thread.{i}": 2 * 500 for i in range(8)}})
    assert [increment_totals(stdout) for _, stdout, _ in results] == [expected] * len(results)


def test_the_native_module_exposes_only_its_api() -> None:
    names = {name for name in vars(_native) if not (name.startswith("__") and name.endswith("__"))}
    assert names == {"DeliveryCallback", "MetricsBuffer", "reset_logging"}
    assert isinstance(_native.__version__, str)
    assert not hasattr(_native, "_after_fork_in_child")
