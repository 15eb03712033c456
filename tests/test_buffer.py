"""The native MetricsBuffer on its own: emission format, throttle, failures, threads, bad input."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import sysconfig
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from typing import Any
from unittest import mock

import pytest

from arroyo_metrics_buffer import MetricsBuffer
from helpers import BackendError, CallLog, FakeClock, Gate, Raising, Recorder, needs_kafka


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_flush_calls_the_backend_like_arroyo(recorder: Recorder) -> None:
    buf = MetricsBuffer(recorder)
    buf.incr_counter("c1", 1)
    buf.incr_timing("t1", 0.5)
    buf.incr_counter("c2", 2, tags={"a": "b"})
    buf.incr_timing("t2", 1)
    buf.incr_counter("c1", 3)
    buf.incr_timing("t1", 0.25)
    buf.record_timing("s", 1.5, {"x": "y"})
    buf.record_timing("s", 2.5, {"x": "y"})
    assert recorder.calls == []
    buf.flush()
    assert recorder.calls == [
        ("timing", "t1", 0.75, None),
        ("timing", "t2", 1.0, None),
        ("increment", "c1", 4, None),
        ("increment", "c2", 2, {"a": "b"}),
        ("timing", "s", 1.5, {"x": "y"}),
        ("timing", "s", 2.5, {"x": "y"}),
    ]
    assert buf.pending() == []
    buf.flush()
    assert len(recorder.calls) == 6


def test_positional_and_keyword_call_styles() -> None:
    log = CallLog()
    for keyword_args in (False, True):
        buf = MetricsBuffer(log, keyword_args=keyword_args)
        buf.incr_counter("c", 1)
        buf.record_timing("s", 2.0, {"k": "v"})
        buf.flush()
    assert log.calls == [
        ("increment", ("c", 1), ()),
        ("timing", ("s", 2.0), (("tags", (("k", "v"),)),)),
        ("increment", (), (("name", "c"), ("value", 1))),
        ("timing", (), (("name", "s"), ("value", 2.0), ("tags", (("k", "v"),)))),
    ]


def test_keyword_names_are_interned_as_at_a_python_call_site() -> None:
    # CPython matches keywords to parameters by identity before comparing strings.
    seen: list[bool] = []

    class Backend:
        def increment(self, **kwargs: Any) -> None:
            seen.extend(sys.intern(k) is k for k in kwargs)

        def timing(self, **kwargs: Any) -> None:
            seen.extend(sys.intern(k) is k for k in kwargs)

    buf = MetricsBuffer(Backend(), keyword_args=True)
    buf.incr_counter("c", 1)
    buf.record_timing("s", 2.0, {"k": "v"})
    buf.flush()
    assert seen == [True] * 5


def test_tags_are_a_mapping_key_and_keep_their_first_order(recorder: Recorder) -> None:
    class Tags(Mapping[str, str]):
        def __init__(self, **items: str) -> None:
            self._items = items

        def __getitem__(self, key: str) -> str:
            return self._items[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._items)

        def __len__(self) -> int:
            return len(self._items)

    buf = MetricsBuffer(recorder)
    buf.incr_counter("c", 1, {"b": "2", "a": "1"})
    buf.incr_counter("c", 1, Tags(a="1", b="2"))
    buf.incr_counter("c", 1, {})
    buf.incr_counter("c", 1, None)
    buf.flush()
    assert recorder.calls == [
        ("increment", "c", 2, {"b": "2", "a": "1"}),
        ("increment", "c", 2, None),
    ]
    assert list(recorder.calls[0][3] or {}) == ["b", "a"]


def test_pending_and_statistics(recorder: Recorder) -> None:
    buf = MetricsBuffer(recorder, max_samples=2)
    buf.incr_counter("c", 2)
    buf.incr_counter("c", 3)
    buf.incr_timing("t", 0.5, {"k": "v"})
    for v in (1.0, 2.0, 4.0):
        buf.record_timing("s", v)
    assert buf.pending() == [
        ("timer", "t", {"k": "v"}, 0.5, 1),
        ("counter", "c", None, 5, 2),
        ("sample", "s", None, 3.0, 2),
    ]
    assert (buf.flushes, buf.flush_errors, buf.dropped_samples) == (0, 0, 1)
    buf.flush()
    assert (buf.flushes, buf.flush_errors, buf.dropped_samples) == (1, 0, 1)
    assert "pending=0" in repr(buf)


@pytest.mark.parametrize(
    ("frequency", "shown"), [(1, "1"), (0.25, "0.25"), (0, "0"), (1e300, "1e300"), (1e-5, "1e-5")]
)
def test_repr_shows_the_frequency_as_a_number_a_person_reads(
    recorder: Recorder, frequency: float, shown: str
) -> None:
    assert repr(MetricsBuffer(recorder, frequency_sec=frequency)) == (
        f"<MetricsBuffer pending=0 frequency_sec={shown} flushes=0 flush_errors=0>"
    )


def test_a_patched_time_time_drives_the_throttle(recorder: Recorder) -> None:
    with mock.patch("time.time", return_value=100.0) as clock:
        buf = MetricsBuffer(recorder, frequency_sec=1.0)
        clock.return_value = 100.5
        buf.incr_counter("c", 1)
        clock.return_value = 101.0  # exactly frequency_sec: not more, no flush
        buf.incr_counter("c", 1)
        assert recorder.calls == []
        clock.return_value = 101.25
        buf.incr_timing("t", 2.0)  # this call's own value goes out with the flush it triggers
        assert recorder.calls == [("timing", "t", 2.0, None), ("increment", "c", 2, None)]
        buf.incr_counter("c", 1)
        clock.return_value = 102.25  # the flush at 101.25 restarted the period: 1.0 is not more
        buf.incr_counter("c", 1)
        assert len(recorder.calls) == 2
        clock.return_value = 102.26
        buf.incr_counter("c", 1)
        assert recorder.calls[2:] == [("increment", "c", 3, None)]
    assert clock.call_count == 9  # creation, one per increment, one after each flush


def test_freezegun_drives_the_throttle(recorder: Recorder) -> None:
    import freezegun

    with freezegun.freeze_time("2026-01-01 00:00:00") as frozen:
        buf = MetricsBuffer(recorder, frequency_sec=1.0)
        frozen.tick(0.75)
        buf.incr_counter("c", 1)
        assert recorder.calls == []
        frozen.tick(0.5)
        buf.incr_counter("c", 1)
        assert recorder.calls == [("increment", "c", 2, None)]


def test_time_machine_drives_the_throttle(recorder: Recorder) -> None:
    import time_machine

    # time-machine swaps the C function inside the time.time builtin rather than the object.
    with time_machine.travel(1_000_000.0, tick=False) as traveller:
        buf = MetricsBuffer(recorder, frequency_sec=1.0)
        traveller.shift(0.75)
        buf.incr_counter("c", 1)
        assert recorder.calls == []
        traveller.shift(0.5)
        buf.incr_counter("c", 1)
        assert recorder.calls == [("increment", "c", 2, None)]
    # Back on the real clock, 1970 + 11 days is long ago: the next call flushes.
    buf.incr_counter("c", 3)
    assert recorder.calls[-1] == ("increment", "c", 3, None)


def test_frequency_sec_zero_flushes_whenever_the_clock_moves(recorder: Recorder) -> None:
    ticks = iter(float(t) for t in range(100))
    with mock.patch("time.time", side_effect=lambda: next(ticks)):
        buf = MetricsBuffer(recorder, frequency_sec=0)
        buf.incr_counter("c", 1)
        buf.incr_counter("c", 2)
    assert recorder.calls == [("increment", "c", 1, None), ("increment", "c", 2, None)]


@needs_kafka
def test_metrics_none_means_arroyos_get_metrics() -> None:
    from arroyo.utils.metrics import get_metrics

    assert MetricsBuffer().metrics is get_metrics()


def test_metrics_none_without_arroyo_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "arroyo.utils.metrics", None)
    with pytest.raises(ImportError, match=r"metrics=None.*arroyo"):
        MetricsBuffer()


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda b: b.incr_counter(1, 1),
            TypeError,
            r"incr_counter\(\) argument 'metric' must be str, not int",
        ),
        (lambda b: b.incr_counter(b"c", 1), TypeError, r"'metric' must be str, not bytes"),
        (lambda b: b.incr_counter("c", 1j), TypeError, r"'delta' must be int or float, not complex"),
        (lambda b: b.incr_counter("c", "1"), TypeError, r"'delta' must be int or float, not str"),
        (lambda b: b.incr_counter("c", None), TypeError, r"'delta' must be int or float, not NoneType"),
        (lambda b: b.incr_counter("c", 2**63), OverflowError, r"'delta' does not fit a 64-bit"),
        (lambda b: b.incr_counter("c", -(2**63) - 1), OverflowError, r"'delta' does not fit"),
        (lambda b: b.incr_counter("big", 1), OverflowError, r"counter \"big\" would overflow"),
        (
            lambda b: b.incr_timing("t", "0.5"),
            TypeError,
            r"incr_timing\(\) argument 'duration' must be a real number, not str",
        ),
        (lambda b: b.incr_timing("t", 1j), TypeError, r"'duration' must be a real number, not complex"),
        (lambda b: b.incr_timing(None, 1.0), TypeError, r"'metric' must be str, not NoneType"),
        (
            lambda b: b.record_timing("s", None),
            TypeError,
            r"record_timing\(\) argument 'value' must be a real number",
        ),
        (lambda b: b.record_timing("s", 10**400), OverflowError, r"'value'"),
        (
            lambda b: b.incr_counter("c", 1, ["a"]),
            TypeError,
            r"'tags' must be None or a mapping of str to str, not list",
        ),
        (lambda b: b.incr_counter("c", 1, {"a": 1}), TypeError, r"'tags' must map str to str, got 'a': 1"),
        (lambda b: b.incr_timing("t", 1.0, {1: "a"}), TypeError, r"'tags' must map str to str"),
        (lambda b: b.record_timing("s", 1.0, "a=b"), TypeError, r"'tags' must be None or a mapping"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    recorder: Recorder, call: Any, error: type[Exception], message: str
) -> None:
    buf = MetricsBuffer(recorder)
    buf.incr_counter("big", 2**63 - 1)
    buf.incr_counter("c", 1, {"a": "b"})
    buf.record_timing("s", 1.0)
    before = buf.pending()
    with pytest.raises(error, match=message):
        call(buf)
    assert buf.pending() == before
    buf.flush()
    assert recorder.totals() == Counter(
        {("increment", "big", ()): 2**63 - 1, ("increment", "c", (("a", "b"),)): 1, ("timing", "s", ()): 1.0}
    )


def test_real_numbers_are_accepted(recorder: Recorder) -> None:
    buf = MetricsBuffer(recorder)
    buf.incr_timing("t", 1)
    buf.incr_timing("t", Fraction(1, 4))
    buf.incr_timing("t", True)
    buf.incr_counter("c", True)
    buf.flush()
    assert recorder.calls == [("timing", "t", 2.25, None), ("increment", "c", 1, None)]


def test_a_delivery_report_takes_time_of_produce_as_float_does(recorder: Recorder) -> None:
    """As arroyo's `time.time() - time_of_produce`: a bare mock.patch("time.time") gives a MagicMock,
    whose float() is 1.0; a str is refused, naming the argument, and nothing is counted."""
    buf = MetricsBuffer(recorder, frequency_sec=60)
    callback = buf.delivery_callback("status", None, None, "latency")
    with pytest.raises(
        TypeError, match=r"report\(\) argument 'time_of_produce' must be a number of seconds, not str"
    ):
        callback.report(None, None, "999.0")
    assert buf.pending() == []
    with mock.patch("time.time", FakeClock(1000.0)):
        callback.report(None, None, mock.MagicMock())
        callback.report(None, None, 999.75)
    assert buf.pending() == [("counter", "status", None, 2, 2), ("sample", "latency", None, 999.25, 2)]


def test_delivery_callbacks_made_and_dropped_in_turn_add_to_the_same_keys(recorder: Recorder) -> None:
    """Each callback makes its keys once and the buffer's entries share them: one dropped while
    its values are pending, and another made at what may be the same address, change nothing."""
    buf = MetricsBuffer(recorder, frequency_sec=60, keyword_args=True)
    with mock.patch("time.time", FakeClock(1000.0)):
        for error_tags in ({"s": "error"}, {"s": "error"}, {"s": "failed"}):
            callback = buf.delivery_callback("status", {"s": "ok"}, error_tags, "latency", {"p": "x"})
            callback.report(None, None, 999.0)
            callback.report("broker down", None, 998.0)
            del callback
            gc.collect()
        buf.incr_counter("status", 1, {"s": "ok"})  # the same key, made on the call
        buf.flush()
    assert recorder.calls == [
        ("increment", "status", 4, {"s": "ok"}),
        ("increment", "status", 2, {"s": "error"}),
        ("increment", "status", 1, {"s": "failed"}),
        *[("timing", "latency", v, {"p": "x"}) for v in (1.0, 2.0, 1.0, 2.0, 1.0, 2.0)],
    ]


def test_a_delivery_report_at_the_counters_limit_is_counted_apart_not_refused(
    recorder: Recorder,
) -> None:
    """No exception out of a delivery callback, even when the user's own calls took its counter to
    the 64-bit limit: the report's count goes to an entry of its own."""
    buf = MetricsBuffer(recorder, frequency_sec=3600)
    counter, ok = "arroyo.producer.produce_status", {"status": "success"}
    buf.incr_counter(counter, 2**63 - 1, ok)
    callback = buf.delivery_callback(counter, ok, {"status": "error"}, "latency", None)
    with mock.patch("time.time", FakeClock(10.0)):
        callback.report(None, None, 9.5)
        callback.report(None, None, 9.75)
    with pytest.raises(OverflowError, match="would overflow"):
        buf.incr_counter(counter, 2**63 - 2, ok)  # the user's own delta is still refused
    buf.incr_counter(counter, 1, ok)  # and added to the entry that counts on
    assert buf.pending() == [
        ("counter", counter, ok, 2**63 - 1, 1),
        ("counter", counter, ok, 3, 3),
        ("sample", "latency", None, 0.75, 2),
    ]
    buf.flush()
    assert recorder.calls == [
        ("increment", counter, 2**63 - 1, ok),
        ("increment", counter, 3, ok),
        ("timing", "latency", 0.5, None),
        ("timing", "latency", 0.25, None),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"frequency_sec": -0.5}, ValueError, r"'frequency_sec' must be a non-negative number, not -0.5"),
        (
            {"frequency_sec": float("nan")},
            ValueError,
            r"'frequency_sec' must be a non-negative number, not NaN",
        ),
        ({"frequency_sec": "1"}, TypeError, r"'frequency_sec' must be a real number, not str"),
        ({"max_samples": -1}, ValueError, r"'max_samples' must be >= 0, not -1"),
        ({"max_samples": 1.5}, TypeError, r"'max_samples' must be int, not float"),
        ({"keyword_args": "yes"}, TypeError, r"'keyword_args' must be bool, not str"),
        ({"keyword_args": 1}, TypeError, r"'keyword_args' must be bool, not int"),
    ],
)
def test_bad_constructor_arguments(
    recorder: Recorder, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        MetricsBuffer(recorder, **kwargs)


def test_a_failing_backend_loses_and_repeats_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = Recorder(fail_every=3)
    buf = MetricsBuffer(backend)
    buf.incr_timing("t", 1.0)
    buf.incr_counter("a", 1)
    buf.incr_counter("b", 2)  # third call: fails
    buf.incr_counter("c", 3)
    with caplog.at_level(logging.WARNING, logger="arroyo_metrics_buffer"):
        buf.flush()
    assert backend.calls == [("timing", "t", 1.0, None), ("increment", "a", 1, None)]
    assert buf.pending() == [("counter", "b", None, 2, 1), ("counter", "c", None, 3, 1)]
    [record] = caplog.records
    assert record.name == "arroyo_metrics_buffer"
    assert record.levelno == logging.WARNING
    assert "2 metric call(s) kept for the next flush" in record.getMessage()
    assert "Traceback (most recent call last)" in record.getMessage()
    assert "BackendError: call 3 fails" in record.getMessage()
    # Newer values for a kept key join it; new keys go after.
    buf.incr_counter("d", 4)
    buf.incr_counter("b", 10)
    buf.flush()  # b, c, d: the 6th call (d) fails
    buf.flush()
    assert backend.calls[2:] == [
        ("increment", "b", 12, None),
        ("increment", "c", 3, None),
        ("increment", "d", 4, None),
    ]
    assert (buf.flushes, buf.flush_errors) == (3, 2)


def test_keyboard_interrupt_in_the_backend_is_raised_after_the_data_is_kept() -> None:
    buf = MetricsBuffer(Raising(KeyboardInterrupt()))
    buf.incr_counter("c", 1)
    with pytest.raises(KeyboardInterrupt):
        buf.flush()
    assert buf.pending() == [("counter", "c", None, 1, 1)]


def test_a_backend_calling_back_into_the_buffer_lands_in_the_next_window(recorder: Recorder) -> None:
    buf: MetricsBuffer

    class Reentrant:
        def increment(self, name: str, value: int, tags: Any = None) -> None:
            recorder.increment(name, value, tags)
            if name == "c":
                buf.incr_counter("from-backend", 1)
                buf.flush()  # while this thread emits: a no-op, the value waits

        def timing(self, name: str, value: float, tags: Any = None) -> None:
            recorder.timing(name, value, tags)

    with mock.patch("time.time", return_value=0.0) as clock:
        buf = MetricsBuffer(Reentrant(), frequency_sec=0)
        clock.return_value = 1.0
        buf.incr_counter("c", 1)  # triggers a flush whose emit re-enters
        assert recorder.calls == [("increment", "c", 1, None)]
        assert buf.pending() == [("counter", "from-backend", None, 1, 1)]
        buf.flush()
    assert recorder.calls[-1] == ("increment", "from-backend", 1, None)


def test_a_flush_during_another_threads_emit_is_handed_over(recorder: Recorder) -> None:
    gate = Gate(recorder, "first")
    buf = MetricsBuffer(gate)
    buf.incr_counter("first", 1)
    emitter = threading.Thread(target=buf.flush)
    emitter.start()
    assert gate.entered.wait(10)
    buf.incr_counter("second", 1)
    buf.flush()  # returns at once: the emitter will flush "second" after "first"
    assert recorder.calls == []
    gate.release.set()
    emitter.join(10)
    assert recorder.calls == [("increment", "first", 1, None), ("increment", "second", 1, None)]


THREADS = 16
ROUNDS = 400


def race(buf: MetricsBuffer, record: Callable[[int, int], None]) -> list[BaseException]:
    """THREADS threads each call `record(thread, round)` ROUNDS times, all started at once, against
    two threads flushing until they are done; then a last flush. Returns what the workers raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 2)
    stop = threading.Event()

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(ROUNDS):
                record(t, i)
        except BaseException as e:
            errors.append(e)

    def flusher() -> None:
        start.wait()
        while not stop.is_set():
            buf.flush()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    flushers = [threading.Thread(target=flusher) for _ in range(2)]
    for th in workers + flushers:
        th.start()
    for th in workers:
        th.join()
    stop.set()
    for th in flushers:
        th.join()
    buf.flush()
    return errors


def test_threads_with_a_flush_on_every_call_get_exact_totals(fast_switching: None) -> None:
    backend = Recorder()
    buf = MetricsBuffer(backend, frequency_sec=0)

    def record(t: int, i: int) -> None:
        buf.incr_counter(f"c{i % 3}", t + 1)
        buf.incr_timing("t", 0.5, {"thread": str(t % 2)})
        buf.record_timing("s", t * ROUNDS + i)

    errors = race(buf, record)
    assert errors == []
    assert backend.max_in_flight == 1
    totals = backend.totals()
    per_key = {f"c{k}": sum(t + 1 for t in range(THREADS)) * len(range(k, ROUNDS, 3)) for k in range(3)}
    for name, total in per_key.items():
        assert totals[("increment", name, ())] == total
    for parity in ("0", "1"):
        assert totals[("timing", "t", (("thread", parity),))] == 0.5 * ROUNDS * THREADS / 2
    samples = sorted(v for m, n, v, _ in backend.calls if n == "s")
    assert samples == list(range(THREADS * ROUNDS))
    assert buf.flushes > 1
    assert buf.pending() == []


def test_sixteen_threads_at_once_get_exact_totals() -> None:
    """No switch-interval trick: on a free-threaded CPython the 16 threads run at once, and with the
    GIL they interleave at the default interval. Every kind of call, delivery reports included,
    each one able to win the flush (frequency 0), against explicit flushes from two threads."""
    backend = Recorder()
    buf = MetricsBuffer(backend, frequency_sec=0)
    callback = buf.delivery_callback("status", {"s": "ok"}, {"s": "error"}, "latency")

    def record(t: int, i: int) -> None:
        buf.incr_counter("c", 1, {"t": str(t % 4)})
        buf.incr_timing("t", 0.25)
        buf.record_timing("s", t * ROUNDS + i)
        callback(None if i % 4 else "failed", None, 0.0)

    errors = race(buf, record)
    assert errors == []
    assert backend.max_in_flight == 1
    totals = backend.totals()
    for group in "0123":
        assert totals[("increment", "c", (("t", group),))] == ROUNDS * THREADS // 4
    assert totals[("timing", "t", ())] == 0.25 * ROUNDS * THREADS
    assert totals[("increment", "status", (("s", "ok"),))] == ROUNDS * THREADS * 3 // 4
    assert totals[("increment", "status", (("s", "error"),))] == ROUNDS * THREADS // 4
    assert sum(1 for m, n, _, _ in backend.calls if n == "latency") == ROUNDS * THREADS
    samples = sorted(v for m, n, v, _ in backend.calls if n == "s")
    assert samples == list(range(THREADS * ROUNDS))
    assert buf.pending() == []


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="a free-threaded CPython only")
def test_importing_the_module_leaves_a_free_threaded_cpython_without_the_gil() -> None:
    """The module declares that it runs without the GIL: CPython would otherwise turn the GIL on
    (and warn) when it is imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    code = "import sys, arroyo_metrics_buffer; print(sys._is_gil_enabled())"
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "False\n", "")


def test_threads_with_a_backend_failing_every_third_call(fast_switching: None) -> None:
    backend = Recorder(fail_every=3)
    buf = MetricsBuffer(backend, frequency_sec=0)
    errors: list[BaseException] = []
    logging.getLogger("arroyo_metrics_buffer").disabled = True
    try:

        def work(t: int) -> None:
            try:
                for i in range(ROUNDS):
                    buf.incr_counter("c", 1)
                    buf.record_timing("s", t * ROUNDS + i)
                    if i % 50 == 0:
                        buf.flush()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for _ in range(10_000):
            if not buf.pending():
                break
            buf.flush()
    finally:
        logging.getLogger("arroyo_metrics_buffer").disabled = False
    assert errors == []
    assert buf.flush_errors > 0
    assert backend.max_in_flight == 1
    assert backend.totals()[("increment", "c", ())] == THREADS * ROUNDS
    samples = sorted(v for m, n, v, _ in backend.calls if n == "s")
    assert samples == list(range(THREADS * ROUNDS))
    assert buf.pending() == []


def test_failures_keep_at_most_max_samples() -> None:
    logging.getLogger("arroyo_metrics_buffer").disabled = True
    try:
        buf = MetricsBuffer(Raising(BackendError("down")), max_samples=100)
        for _ in range(5):
            for i in range(60):
                buf.record_timing("s", float(i))
            buf.flush()
    finally:
        logging.getLogger("arroyo_metrics_buffer").disabled = False
    [(kind, _name, _tags, _total, count)] = buf.pending()
    assert (kind, count) == ("sample", 100)
    assert buf.dropped_samples == 5 * 60 - 100
    assert buf.flush_errors == 5


def clock_seen(recorder: Recorder) -> float:
    """What the buffer's clock reads now: a latency sample of `now - 0.0`."""
    buf = MetricsBuffer(recorder, frequency_sec=3600)
    buf.delivery_callback("c", None, None, "latency").report(None, None, 0.0)
    [(_, _, _, value, _)] = [p for p in buf.pending() if p[0] == "sample"]
    return float(value)


def test_the_clock_follows_time_time_as_it_is_replaced_and_restored(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import time_machine

    def real() -> None:
        before, seen, after = time.time(), clock_seen(recorder), time.time()
        assert before <= seen <= after

    real()
    real()  # the second read takes the fast path on 3.12+, if the first found the builtin
    with mock.patch("time.time", lambda: 1000.0):
        assert clock_seen(recorder) == 1000.0
    real()
    monkeypatch.setattr(time, "time", lambda: 2000.0)
    assert clock_seen(recorder) == 2000.0
    monkeypatch.undo()
    real()
    real()
    with mock.patch("time.time", lambda: 3000.0):
        assert clock_seen(recorder) == 3000.0
    real()
    with time_machine.travel(5000.0, tick=False):  # swaps the builtin's C function, not the name
        assert clock_seen(recorder) == 5000.0
    real()
    time.zzz_other_name = 1  # type: ignore[attr-defined]  # an unrelated change to the namespace
    del time.zzz_other_name  # type: ignore[attr-defined]
    real()


def test_the_clock_is_not_fooled_by_a_read_between_the_watcher_and_the_change(recorder: Recorder) -> None:
    """CPython calls dict watchers before the change lands. Another extension's watcher that fails
    makes CPython run sys.unraisablehook right there: a clock read from it sees the old value, and
    must not make later reads miss the change."""
    import time

    testcapi = pytest.importorskip("_testcapi", reason="needs CPython's _testcapi")
    if not hasattr(testcapi, "add_dict_watcher"):
        pytest.skip("dict watchers are CPython 3.12+")
    seen_in_hook: list[float] = []
    watcher = testcapi.add_dict_watcher(1)  # one that raises, so the hook runs inside the change
    testcapi.watch_dict(watcher, vars(time))
    try:
        with mock.patch("sys.unraisablehook", lambda _: seen_in_hook.append(clock_seen(recorder))):
            clock_seen(recorder)
            with mock.patch("time.time", lambda: 1000.0):
                assert clock_seen(recorder) == 1000.0
                assert clock_seen(recorder) == 1000.0
            assert 1000.0 < clock_seen(recorder) <= time.time()
    finally:
        testcapi.unwatch_dict(watcher, vars(time))
        testcapi.clear_dict_watcher(watcher)
    assert len(seen_in_hook) >= 2  # it did read the clock inside the changes


def test_a_name_used_again_is_held_and_found_by_its_object(recorder: Recorder) -> None:
    """An untagged name's str object is kept by the buffer from its second use (and found again by
    identity); whatever finds a key, each value lands on it once."""
    buf = MetricsBuffer(recorder, frequency_sec=3600)
    name = "".join(["arroyo.", "held"])  # an object of its own, shared with no constant
    count = sys.getrefcount(name)
    buf.incr_counter(name, 1)
    assert sys.getrefcount(name) == count  # seen once: not kept
    buf.incr_counter(name, 2)
    assert sys.getrefcount(name) == count + 1  # seen twice: kept
    buf.incr_counter(name, 4)  # found by its object
    buf.incr_counter("".join(["arroyo.", "held"]), 8)  # the same text in another object
    buf.incr_counter(name, 16, {"k": "v"})
    for duration in (0.5, 0.25, 0.125):
        buf.incr_timing(name, duration)
        buf.record_timing(name, duration)

    class Text(str):
        pass

    sub = Text(name)
    sub_count = sys.getrefcount(sub)
    for _ in range(3):
        buf.incr_counter(sub, 32)
    assert sys.getrefcount(sub) == sub_count  # only str itself is kept
    assert buf.pending() == [
        ("timer", name, None, 0.875, 3),
        ("counter", name, None, 111, 7),
        ("counter", name, {"k": "v"}, 16, 1),
        ("sample", name, None, 0.875, 3),
    ]
    buf.flush()
    buf.incr_counter(name, 64)  # the next window
    buf.flush()
    assert recorder.calls == [
        ("timing", name, 0.875, None),
        ("increment", name, 111, None),
        ("increment", name, 16, {"k": "v"}),
        ("timing", name, 0.5, None),
        ("timing", name, 0.25, None),
        ("timing", name, 0.125, None),
        ("increment", name, 64, None),
    ]
    del buf
    gc.collect()
    assert sys.getrefcount(name) == count


def test_two_names_used_by_turns_are_both_held(recorder: Recorder) -> None:
    """Whichever slots their addresses give them, two names used by turns are both kept from their
    second use. (200 pairs of new objects, all kept alive, with 0-39 strings of the same size made
    between the two: the distance between their addresses varies, and so do their slots.)"""
    alive = []
    for i in range(200):
        buf = MetricsBuffer(recorder, frequency_sec=3600)
        first = "".join(["a.", f"{i:03}"])
        alive.append(["".join(["s.", f"{i:03}"]) for _ in range(i % 40)])
        names = [first, "".join(["b.", f"{i:03}"])]
        alive.append(names)
        counts = [sys.getrefcount(n) for n in names]
        for at in (0, 1, 0, 1):
            buf.incr_counter(names[at], 1)
        assert [sys.getrefcount(n) for n in names] == [c + 1 for c in counts], i
        assert buf.pending() == [("counter", n, None, 2, 2) for n in names]


def test_more_names_than_the_buffer_holds_each_add_up(recorder: Recorder) -> None:
    buf = MetricsBuffer(recorder, frequency_sec=3600)
    names = [f"name.{i}" for i in range(200)]
    for round in range(4):
        for i, name in enumerate(names):
            buf.incr_counter(name, i + round)
    assert buf.pending() == [("counter", n, None, 4 * i + 6, 4) for i, n in enumerate(names)]


def test_lone_surrogates_in_names_and_tags_are_kept_as_they_are() -> None:
    """Any str is accepted, as stock arroyo accepts it, and emitted as the same text."""
    log = CallLog()
    buf = MetricsBuffer(log, frequency_sec=3600)
    name, key, value = "m\ud800", "k\udfff", "x\udc00\ud800y"
    buf.incr_counter(name, 1, {key: value})
    buf.incr_counter(name, 2, {key: value})
    buf.record_timing(value, 1.5, {name: key})
    callback = buf.delivery_callback(name, {key: "ok"}, {key: value}, value, {value: name})
    with mock.patch("time.time", FakeClock(10.0)):
        callback.report("error", None, 9.5)
    # The error report adds to the counter made by incr_counter: the same name and tags.
    assert buf.pending() == [
        ("counter", name, {key: value}, 4, 3),
        ("sample", value, {name: key}, 1.5, 1),
        ("sample", value, {value: name}, 0.5, 1),
    ]
    buf.flush()
    assert log.calls == [
        ("increment", (name, 4), (("tags", ((key, value),)),)),
        ("timing", (value, 1.5), (("tags", ((name, key),)),)),
        ("timing", (value, 0.5), (("tags", ((value, name),)),)),
    ]
    with pytest.raises(TypeError, match=r"incr_counter\(\) argument 'metric' must be str, not bytes"):
        buf.incr_counter(name.encode("utf-8", "surrogatepass"), 1)
