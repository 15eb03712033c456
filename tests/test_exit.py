"""Interpreter exit, and the native module's surface.

Each exit scenario runs as users hit it: a fresh interpreter per run, many runs, and for every run
its exit status and the time from the script's return to the process's end. What the native
module's atexit hook promises: from its start, calls on other threads return at once; the values
pending in every live buffer are emitted once, on a daemon thread the hook abandons at its
deadline (2 s by default, ARROYO_METRICS_BUFFER_EXIT_TIMEOUT); what misses it is dropped and
counted in one log line; whatever the backend does, the process exits with its own status, in
time, and never aborts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from arroyo_metrics_buffer import _native

#: Fresh interpreters per exit scenario: 30 by default; scripts/test runs 30 on CPython 3.11 and
#: 3.14 (the main CPython and Sentry's) and 10 on the others.
RUNS = int(os.environ.get("ARROYO_METRICS_BUFFER_EXIT_RUNS", "30"))
#: Runs of each shape of a thread ended by finalization (nine shapes; each run is short).
ENDED_RUNS = max(RUNS // 3, 5)
#: Runs at once: one per core for the scenarios that keep a core busy; more where they mostly wait.
PARALLEL = 2
WAITING = 6
RUN_TIMEOUT = 60
#: The default exit budget, and what the interpreter may take on its own after the hook (busy
#: daemon threads contend for the GIL while it finalizes; stock arroyo's exits take up to 0.35 s
#: in the busiest scenario here).
BUDGET = 2.0
SLACK = 1.0
#: A short budget, for the scenarios that use all of it.
SHORT = {"ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": "0.5"}

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

#: Logging set up to show INFO records, where the exit line goes when nothing was lost.
LOG_INFO = """
import logging
logging.basicConfig(level=logging.INFO)
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


#: Appended to every script: when it returned, on the clock the parent reads when the process ends.
RETURNED = """
import sys as _sys, time as _time
_sys.stderr.write(f"\\nRETURNED {_time.monotonic()!r}\\n")
_sys.stderr.flush()
"""


@dataclass(frozen=True)
class Run:
    status: int | str
    stdout: str
    stderr: str
    #: From the script's return to the process's end (None: it never returned).
    exit_seconds: float | None

    def exit_line(self) -> str:
        """The hook's one line about the exit (the last-resort handler prints it on stderr)."""
        lines = [line for line in self.stderr.splitlines() if "at exit: " in line]
        assert len(lines) == 1, self.stderr[-3000:]
        return lines[0]

    def exit_counts(self) -> tuple[int, int, int]:
        """(emitted, pending, dropped) from the exit line, which says each once; a call still in
        progress at the deadline counts as dropped."""
        line = self.exit_line()
        emitted, pending = map(int, re.search(r"(\d+) of (\d+) pending", line).groups())  # type: ignore[union-attr]
        count = lambda pattern: int(m.group(1)) if (m := re.search(pattern, line)) else 0  # noqa: E731
        return emitted, pending, count(r"(\d+) dropped") + count(r"(\d+) still in progress")


def run_script(*parts: str, env: dict[str, str] | None = None) -> Run:
    """A fresh interpreter running the script, to its end (killed after RUN_TIMEOUT)."""
    script = "".join(textwrap.dedent(p) for p in parts) + RETURNED
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = child.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        return Run("timed out", out, err, None)
    ended = time.monotonic()
    returned = [float(line.split()[1]) for line in err.splitlines() if line.startswith("RETURNED ")]
    return Run(child.returncode, out, err, ended - returned[-1] if returned else None)


def run_many(
    *parts: str, runs: int = RUNS, env: dict[str, str] | None = None, parallel: int = PARALLEL
) -> list[Run]:
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: run_script(*parts, env=env), range(runs)))


def assert_all_exited_cleanly(results: list[Run], budget: float = BUDGET) -> None:
    """Every run exited with status 0, no fatal error, within `budget` (and SLACK) of returning."""
    statuses = Counter(r.status for r in results)
    fatal = [r for r in results if "Fatal Python error" in r.stderr]
    late = sorted(
        r.exit_seconds or float("inf") for r in results if (r.exit_seconds or float("inf")) > budget + SLACK
    )
    first_bad = next((r.stderr for r in results if r.status != 0 or r in fatal), "")
    slowest = max((r.exit_seconds or float("inf")) for r in results)
    assert (statuses, len(fatal), late) == (Counter({0: len(results)}), 0, []), (
        f"exit statuses {dict(statuses)}, {len(fatal)} fatal errors, exits later than {budget + SLACK} s: "
        f"{late} (slowest {slowest:.2f} s); a failed run's stderr:\n{first_bad[-3000:]}"
    )


def increment_totals(stdout: str) -> Counter[str]:
    totals: Counter[str] = Counter()
    for line in stdout.splitlines():
        method, name, value = line.split()
        assert method == "increment", line
        totals[name] += int(value)
    return totals


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_exit_while_daemon_threads_flush_to_a_udp_backend() -> None:
    assert_all_exited_cleanly(run_many(UDP_BACKEND, DAEMON_THREADS_FLUSHING))


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_exit_without_closing_a_kafka_producer() -> None:
    pytest.importorskip("confluent_kafka", reason="the KafkaProducer scenario needs confluent-kafka")
    pytest.importorskip("arroyo", reason="the KafkaProducer scenario needs sentry-arroyo")
    assert_all_exited_cleanly(run_many(UDP_BACKEND, KAFKA_PRODUCER_WITHOUT_CLOSE))


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_values_never_flushed_are_emitted_once_at_exit() -> None:
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES)
    assert_all_exited_cleanly(results)
    for run in results:
        lines = run.stdout.splitlines()
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


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_values_of_idle_daemon_threads_are_emitted_once_at_exit() -> None:
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES_OF_DAEMON_THREADS)
    assert_all_exited_cleanly(results)
    expected = Counter({"c": 8 * 500, **{f"thread.{i}": 2 * 500 for i in range(8)}})
    assert [increment_totals(run.stdout) for run in results] == [expected] * len(results)


#: Eight daemon threads loop on one buffer that flushes on every call, into a backend that does
#: about 10 us of Python per call, and the main thread returns while they run: the shape that
#: aborted (a daemon thread ended inside a backend call made by native code) or hung (the hook
#: flushing what they recorded meanwhile) on CPython 3.11.
BUSY_DAEMON_THREADS = """
import threading
import time
from arroyo_metrics_buffer import MetricsBuffer

class Slow:
    def work(self):
        x = 0
        for i in range(300):
            x += i

    def increment(self, name, value=1, tags=None):
        self.work()

    def timing(self, name, value, tags=None):
        self.work()

buf = MetricsBuffer(Slow(), frequency_sec=0.0)

def loop():
    while True:
        buf.incr_counter("x", 1, {"a": "b"})
        buf.record_timing("s", 1.0)
        buf.flush()

for _ in range(8):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.3)
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_exit_while_busy_daemon_threads_flush_into_a_slow_backend() -> None:
    results = run_many(BUSY_DAEMON_THREADS, env=SHORT)
    assert_all_exited_cleanly(results, budget=0.5)
    for run in results:
        emitted, pending, dropped = run.exit_counts()
        assert emitted + dropped == pending, run.exit_line()
        assert "call(s) from other threads after exit began were ignored" in run.exit_line()


#: Ten daemon threads record faster than the slow backend takes (tagged counters, timers and
#: samples, flushing as they go), so that about a million calls are pending when the main thread
#: returns, and go on calling (refused) while the hook runs: each of them held the GIL for a whole
#: switch interval before the hook's thread got it back, and the hook overran its 2 s budget by up
#: to half a second (0.95 s from return to end, in an outside run of 20).
MANY_BUSY_THREADS_AND_A_MILLION_PENDING = """
import threading
import time
from arroyo_metrics_buffer import MetricsBuffer

class Slow:
    def work(self):
        x = 0
        for i in range(400):
            x += i * i

    def increment(self, name, value=1, tags=None):
        self.work()

    def timing(self, name, value, tags=None):
        self.work()

buf = MetricsBuffer(Slow(), frequency_sec=0.0)

def loop(i):
    k = 0
    while True:
        k += 1
        buf.incr_counter("c%d" % (k % 7), 1, {"t": str(i)})
        buf.incr_timing("t%d" % (k % 5), 0.001)
        buf.record_timing("r", 0.002)
        if k % 3 == 0:
            buf.flush()

for i in range(10):
    threading.Thread(target=loop, args=(i,), daemon=True).start()
time.sleep(0.3)
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_exit_with_ten_busy_threads_and_a_million_calls_pending_keeps_the_budget() -> None:
    results = run_many(MANY_BUSY_THREADS_AND_A_MILLION_PENDING)  # the default budget
    assert_all_exited_cleanly(results)
    for run in results:
        emitted, pending, dropped = run.exit_counts()
        assert emitted + dropped == pending, run.exit_line()
        assert dropped > 0, run.exit_line()  # far more was pending than 2 s could emit


#: A backend whose every call sleeps for a minute.
SLEEPY_BACKEND = """
import time
from arroyo_metrics_buffer import MetricsBuffer

class Sleepy:
    def increment(self, name, value=1, tags=None):
        time.sleep(60)

    timing = increment
"""

#: A daemon thread is inside a backend call that sleeps for a minute, and another buffer holds a
#: value, when the main thread returns.
BLOCKED_BACKEND = (
    SLEEPY_BACKEND
    + """
import threading

busy = MetricsBuffer(Sleepy(), frequency_sec=3600)
waiting = MetricsBuffer(Sleepy(), frequency_sec=3600)
busy.incr_counter("busy", 1)
waiting.incr_counter("waiting", 1)
inside = threading.Event()

def emit():
    inside.set()
    busy.flush()

threading.Thread(target=emit, daemon=True).start()
inside.wait()
time.sleep(0.1)
"""
)


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_backend_that_blocks_for_good_cannot_hold_up_exit_past_the_budget() -> None:
    results = run_many(BLOCKED_BACKEND, parallel=WAITING)  # the default budget
    assert_all_exited_cleanly(results)
    for run in results:
        assert run.exit_counts() == (0, 1, 1), run.exit_line()
        assert "1 buffer(s) were being emitted by another thread" in run.exit_line()
        assert "had not returned by the deadline" in run.exit_line()


#: The backend waits on a lock that the main thread holds when it returns.
DEADLOCKED_BACKEND = """
import threading
from arroyo_metrics_buffer import MetricsBuffer

lock = threading.Lock()

class Locking:
    def increment(self, name, value=1, tags=None):
        with lock:
            pass

    timing = increment

buf = MetricsBuffer(Locking(), frequency_sec=3600)
buf.incr_counter("c", 1)
buf.record_timing("s", 1.0)
lock.acquire()
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_backend_waiting_on_a_lock_the_exiting_thread_holds_cannot_hold_up_exit() -> None:
    results = run_many(DEADLOCKED_BACKEND, env=SHORT, parallel=WAITING)
    assert_all_exited_cleanly(results, budget=0.5)
    for run in results:
        assert run.exit_counts() == (0, 2, 2), run.exit_line()
        assert "within the 0.5 s exit budget (ARROYO_METRICS_BUFFER_EXIT_TIMEOUT)" in run.exit_line()


#: A backend call on a daemon thread outlasts the budget and returns while the interpreter
#: finalizes (a large heap makes that take a while): on CPython < 3.14 finalization ends that
#: thread, which used to abort the process, unwinding into the native frames below the call.
RETURNS_DURING_FINALIZATION = """
import threading
import time
from arroyo_metrics_buffer import MetricsBuffer

class Late:
    def increment(self, name, value=1, tags=None):
        time.sleep(0.45)

    timing = increment

heap = [[i] for i in range(1_000_000)]
buf = MetricsBuffer(Late(), frequency_sec=3600)
buf.incr_counter("late", 1)
inside = threading.Event()

def emit():
    inside.set()
    buf.flush()

threading.Thread(target=emit, daemon=True).start()
inside.wait()
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_backend_call_returning_while_the_interpreter_finalizes_does_not_abort() -> None:
    results = run_many(RETURNS_DURING_FINALIZATION, env={"ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": "0.3"})
    assert_all_exited_cleanly(results, budget=0.3 + 1.0)  # and the big heap's own teardown


#: Daemon threads keep making arroyo objects whose buffers the patch makes native while the main
#: thread returns: what they make during the exit is made as before, and nothing is logged about
#: it (each used to log a warning with a traceback, hundreds in half a second).
OBJECTS_MADE_DURING_EXIT = """
import threading
import time
import arroyo_metrics_buffer
from arroyo.processing.processor import MetricsBuffer as ArroyoBuffer

assert arroyo_metrics_buffer.install()
made = 0

def make():
    global made
    while True:
        buffer = ArroyoBuffer()
        buffer.incr_counter("arroyo.consumer.run.count", 1)
        made += 1

for _ in range(4):
    threading.Thread(target=make, daemon=True).start()
while made < 1000:
    time.sleep(0.001)
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_objects_made_on_other_threads_during_exit_log_nothing() -> None:
    pytest.importorskip("arroyo", reason="the patch needs sentry-arroyo")
    results = run_many(OBJECTS_MADE_DURING_EXIT, env=SHORT)
    assert_all_exited_cleanly(results, budget=0.5)
    for run in results:
        assert "could not give" not in run.stderr, run.stderr[-3000:]
        assert "Traceback" not in run.stderr, run.stderr[-3000:]


#: A daemon thread is inside one of our native calls, in Python code that call runs, when the main
#: thread returns; that code wants the GIL back while the interpreter finalizes (module teardown
#: runs Python code, so the main thread gives the GIL up). On CPython < 3.14 finalization then ends
#: the thread with `pthread_exit`, which on glibc unwinds its stack through our native frames: every
#: shape here aborted the process (status -6) with the extension built to unwind on panic instead
#: of to abort. The "gc in ..." shapes are a garbage collection that one of our allocations started
#: (on CPython 3.11, a collection runs inside the allocation that crosses the threshold).
ENDED_BY_FINALIZATION = """
import atexit, collections.abc, gc, logging, numbers, os, sys, threading, time

finalizing = threading.Event()
atexit.register(finalizing.set)  # registered before the import: runs after the exit hook
from arroyo_metrics_buffer import MetricsBuffer

SHAPE = os.environ["SHAPE"]
inside = threading.Event()

def park():
    \"\"\"Called by Python code that one of our native calls runs on the daemon thread.\"\"\"
    if threading.current_thread() is threading.main_thread() or inside.is_set():
        return
    inside.set()
    finalizing.wait()
    time.sleep(0.05)  # wants the GIL back while the interpreter finalizes

class Teardown:
    def __del__(self):
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            pass

teardown = Teardown()

class Backend:
    def increment(self, name, value=1, tags=None):
        if SHAPE == "backend":
            park()
        elif SHAPE == "failure log":
            raise ConnectionError("down")
        elif SHAPE == "result":
            return Dropped()

    timing = increment

class Dropped:
    def __del__(self):
        park()

class Garbage:
    def __init__(self):
        self.cycle = self

    def __del__(self):
        park()

class Real:
    def __float__(self):
        park()
        return 1.0

numbers.Real.register(Real)

class Tags(collections.abc.Mapping):
    def __getitem__(self, key):
        return "b"

    def __iter__(self):
        return iter(["a"])

    def __len__(self):
        return 1

    def items(self):
        park()
        return super().items()

class NoLock:
    def acquire(self, *args):
        return True

    def release(self):
        pass

    __enter__ = acquire

    def __exit__(self, *args):
        pass

class Handler(logging.Handler):
    def createLock(self):
        self.lock = NoLock()  # parked in emit, it must not hold up the exit line on a lock

    def emit(self, record):
        park()

def clock():
    park()
    return 1e9

logging.getLogger("arroyo_metrics_buffer").addHandler(Handler())
backend = Backend()
buf = MetricsBuffer(backend, frequency_sec=3600)

def work():
    gc.disable()
    if SHAPE == "clock":
        time.time = clock
    while not inside.is_set():
        if SHAPE in ("backend", "failure log", "result"):
            buf.incr_counter("c", 1)
            buf.flush()
        elif SHAPE == "conversion":
            buf.incr_timing("t", Real())
        elif SHAPE == "tags":
            buf.incr_counter("c", 1, Tags())
        elif SHAPE == "clock":
            buf.incr_counter("c", 1)
        else:
            # With a threshold of 1, the first allocation after gc.enable() collects: the native
            # call's own.
            Garbage()
            gc.set_threshold(1)
            gc.enable()
            if SHAPE == "gc in MetricsBuffer()":
                MetricsBuffer(backend, frequency_sec=3600)
            elif SHAPE == "gc in delivery_callback()":
                buf.delivery_callback("x")
            elif SHAPE == "gc in an error":
                try:
                    buf.incr_counter(1, 1)
                except TypeError:
                    pass
            gc.disable()
    time.sleep(60)

threading.Thread(target=work, daemon=True).start()
assert inside.wait(10), "the daemon thread never got inside"
"""

#: Where Python code runs inside our native calls (the last three only on CPython 3.11, where a
#: collection runs inside the allocation that starts it).
ENDED_SHAPES = [
    "backend",
    "failure log",
    "result",
    "conversion",
    "tags",
    "clock",
    "gc in MetricsBuffer()",
    "gc in delivery_callback()",
    "gc in an error",
]


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
@pytest.mark.parametrize("shape", ENDED_SHAPES)
def test_a_thread_ended_by_finalization_inside_native_code_does_not_abort(shape: str) -> None:
    if shape.startswith("gc in") and sys.version_info >= (3, 12):
        pytest.skip("CPython 3.12+ collects garbage between bytecodes, never inside an allocation")
    budget = 0.2
    env = {"SHAPE": shape, "ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": str(budget)}
    results = run_many(ENDED_BY_FINALIZATION, runs=ENDED_RUNS, env=env, parallel=WAITING)
    assert_all_exited_cleanly(results, budget=budget + 0.5)  # and the teardown's own 0.5 s


#: A backend that raises on every call at exit, one that is slow but finishes in time, and one that
#: calls back into the buffer it is emitting (which the exit thread's calls must not wait for).
RAISING_AT_EXIT = """
from arroyo_metrics_buffer import MetricsBuffer

class Down:
    def increment(self, name, value=1, tags=None):
        raise ConnectionError("statsd is down")

    timing = increment

buf = MetricsBuffer(Down(), frequency_sec=3600)
for i in range(50):
    buf.incr_counter(f"c{i}", i)
"""

SLOW_BUT_IN_TIME = """
import time
from arroyo_metrics_buffer import MetricsBuffer

class Slow:
    def increment(self, name, value=1, tags=None):
        time.sleep(0.002)
        print("increment", name, value, flush=True)

buf = MetricsBuffer(Slow(), frequency_sec=3600)
for i in range(1, 201):
    buf.incr_counter(f"c{i}", i)
"""

REENTRANT_AT_EXIT = """
from arroyo_metrics_buffer import MetricsBuffer

class Reentrant:
    def increment(self, name, value=1, tags=None):
        print("increment", name, value, flush=True)
        buf.incr_counter("again", 1)
        buf.flush()

buf = MetricsBuffer(Reentrant(), frequency_sec=3600)
buf.incr_counter("a", 1)
buf.incr_counter("b", 2)
"""


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_backend_raising_at_exit_is_counted_in_the_exit_line() -> None:
    results = run_many(RAISING_AT_EXIT)
    assert_all_exited_cleanly(results)
    for run in results:
        assert "at exit: 0 of 50 pending metric call(s) emitted; 50 raised (the first: ConnectionError: " in (
            run.exit_line()
        )


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_slow_backend_that_finishes_in_time_gets_every_value_once() -> None:
    results = run_many(SLOW_BUT_IN_TIME, parallel=WAITING)
    assert_all_exited_cleanly(results)
    expected = Counter({f"c{i}": i for i in range(1, 201)})
    assert [increment_totals(run.stdout) for run in results] == [expected] * len(results)


@pytest.mark.lifecycle
@pytest.mark.timeout(900)
def test_a_backend_calling_back_into_its_buffer_at_exit_gets_each_value_once() -> None:
    results = run_many(LOG_INFO, REENTRANT_AT_EXIT)
    assert_all_exited_cleanly(results)
    for run in results:
        assert increment_totals(run.stdout) == Counter({"a": 1, "b": 2})
        assert "4 call(s) from other threads after exit began were ignored" in run.exit_line()


@pytest.mark.lifecycle
def test_a_budget_of_zero_waits_for_nothing_and_accounts_for_everything() -> None:
    env = {"ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": "0"}
    results = run_many(LOG_INFO, PRINTING_BACKEND, UNFLUSHED_VALUES, runs=10, env=env)
    assert_all_exited_cleanly(results, budget=0.0)
    for run in results:
        emitted, pending, dropped = run.exit_counts()
        assert (emitted + dropped, pending) == (4, 4), run.exit_line()
        # The one flushed before exit, what was emitted, and at most the one call in progress.
        assert len(run.stdout.splitlines()) - 1 - emitted in (0, 1), run.exit_line()


@pytest.mark.lifecycle
def test_a_budget_that_is_not_a_number_is_named_and_the_default_used() -> None:
    env = {"ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": "soon"}
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES, runs=4, env=env)
    assert_all_exited_cleanly(results)
    for run in results:
        assert run.exit_line().endswith(
            'ARROYO_METRICS_BUFFER_EXIT_TIMEOUT="soon" is not a number of seconds, so the default 2 s was used'
        )
        assert run.exit_counts() == (4, 4, 0)


@pytest.mark.lifecycle
@pytest.mark.parametrize("given", ["-1", "nan", "inf", "3601", "1e20"])
def test_a_budget_out_of_range_is_named_and_the_default_used(given: str) -> None:
    """Negative, not finite, or more than an hour (a deadline past the clock's range ended the
    process at exit)."""
    env = {"ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": given}
    results = run_many(PRINTING_BACKEND, UNFLUSHED_VALUES, runs=2, env=env)
    assert_all_exited_cleanly(results)
    for run in results:
        assert run.exit_line().endswith(
            f'ARROYO_METRICS_BUFFER_EXIT_TIMEOUT="{given}" is not a number of seconds, so the default 2 s was used'
        )
        assert run.exit_counts() == (4, 4, 0)


#: A buffer whose backend blocks for good, holding five calls: the exit emission's first call
#: blocks, and the hook waits for it.
BLOCKED_EMISSION = (
    SLEEPY_BACKEND
    + """
buffer = MetricsBuffer(Sleepy(), frequency_sec=3600)
for i in range(5):
    buffer.incr_counter(f"c{i}", 1)
"""
)

#: Python leaves SIGINT ignored if it was when it started (as in a shell's background job, where
#: a CI runner may start the tests): Ctrl-C raising KeyboardInterrupt, as at a terminal.
CTRL_C_RAISES = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"

CTRL_C = {
    # in the hook's first wait, for the backend call in progress on another thread
    "waiting for another thread": (
        BLOCKED_BACKEND,
        "at exit: 0 of 1 pending metric call(s) emitted; 1 dropped: a signal ended the wait (its handler"
        " raised KeyboardInterrupt); 1 buffer(s) were being emitted by another thread, and what it had not sent was"
        " dropped; a call into Python from another thread (a metrics backend call, most likely) had"
        " not returned when a signal ended the wait (its handler raised KeyboardInterrupt)\n",
    ),
    # in the hook's wait for its own emission
    "waiting for the emission": (
        BLOCKED_EMISSION,
        "at exit: 0 of 5 pending metric call(s) emitted; 1 still in progress when a signal ended the"
        " wait (its handler raised KeyboardInterrupt); 4 dropped: a signal ended the wait (its handler"
        " raised KeyboardInterrupt)\n",
    ),
    # any signal whose handler raises, here SIGTERM's calling sys.exit (which cannot change the
    # status once exit has begun)
    "SIGTERM handler calling sys.exit": (
        "import sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n" + BLOCKED_EMISSION,
        "at exit: 0 of 5 pending metric call(s) emitted; 1 still in progress when a signal ended the"
        " wait (its handler raised SystemExit); 4 dropped: a signal ended the wait (its handler"
        " raised SystemExit)\n",
    ),
}


@pytest.mark.parametrize("shape", CTRL_C)
def test_ctrl_c_during_the_exit_budget_ends_the_wait_at_once(shape: str) -> None:
    """Ctrl-C (or any signal whose handler raises) while the hook waits for a blocked backend,
    with a 30 s budget: the wait ends at once, the exit line says why the values were dropped and
    what the handler raised, and the process exits with its status."""
    script, line = CTRL_C[shape]
    env = {**os.environ, "ARROYO_METRICS_BUFFER_EXIT_TIMEOUT": "30"}
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_RAISES + textwrap.dedent(script) + RETURNED],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stderr is not None
        seen = []
        while not (given := child.stderr.readline()).startswith("RETURNED"):
            assert given, "".join(seen)
            seen.append(given)
        time.sleep(0.3)  # in the hook's wait for the blocked backend
        child.send_signal(signal.SIGTERM if "SIGTERM" in shape else signal.SIGINT)
        interrupted = time.monotonic()
        _, err = child.communicate(timeout=RUN_TIMEOUT)
        assert (child.returncode, time.monotonic() - interrupted < SLACK) == (0, True), err[-3000:]
        assert err.endswith(line), err[-3000:]


#: A backend that forks on its first call, made by the exit hook's emission: the child goes on in
#: the emitting thread, and must make none of the parent's other calls.
FORK_AT_EXIT = """
import os
from arroyo_metrics_buffer import MetricsBuffer

forked = []

class Forking:
    def increment(self, name, value=1, tags=None):
        if not forked:
            forked.append(os.fork())
        os.write(1, f"{os.getpid()} {name}\\n".encode())  # one write: the two processes share stdout

buf = MetricsBuffer(Forking(), frequency_sec=3600)
for i in range(5):
    buf.incr_counter(f"c{i}", 1)
"""


def test_a_child_forked_by_a_backend_call_at_exit_makes_none_of_the_parents_calls() -> None:
    for run in run_many(FORK_AT_EXIT, runs=3):
        assert run.status == 0, run.stderr[-3000:]
        calls: dict[str, list[str]] = {}
        for line in run.stdout.splitlines():
            pid, name = line.split()
            calls.setdefault(pid, []).append(name)
        # The parent makes every call once; the child only finishes the one it was forked in.
        assert sorted(calls.values()) == [["c0"], ["c0", "c1", "c2", "c3", "c4"]], run.stdout


def test_the_native_module_exposes_only_its_api() -> None:
    names = {name for name in vars(_native) if not (name.startswith("__") and name.endswith("__"))}
    assert names == {"DeliveryCallback", "MetricsBuffer", "reset_logging"}
    assert isinstance(_native.__version__, str)
    assert not hasattr(_native, "_after_fork_in_child")


def test_the_hook_puts_the_switch_interval_back_for_what_runs_after_it() -> None:
    """The hook shortens CPython's switch interval while it runs (see `_exit.quicken`), with values
    pending so that it emits, and what runs after it (an `atexit` handler registered before the
    import runs after the hook) sees the application's own interval again."""
    script = """
import atexit, sys
sys.setswitchinterval(0.004)
atexit.register(lambda: print("after the hook", round(sys.getswitchinterval(), 6)))
from arroyo_metrics_buffer import MetricsBuffer

class Backend:
    def increment(self, name, value=1, tags=None):
        print("during the hook", round(sys.getswitchinterval(), 6))

buf = MetricsBuffer(Backend(), frequency_sec=3600)
buf.incr_counter("c", 1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "during the hook 0.0002\nafter the hook 0.004\n")
