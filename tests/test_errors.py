"""Whatever the backend and logging raise, no metrics method returns with a Python error pending
(a raising filter, an interrupting handler, RecursionError at any headroom), and a counter given
back at the i64 edge is never saturated."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

from arroyo_metrics_buffer import MetricsBuffer
from helpers import BackendError, FakeClock, Recorder, clock_moved

LOGGER = "arroyo_metrics_buffer"
I64_MAX = 2**63 - 1


class LoggingError(Exception):
    pass


def backend_error() -> None:
    raise BackendError("the backend is down")


def endless_recursion() -> None:
    endless_recursion()


class Broken(Recorder):
    """A backend that calls `fail` (which raises) on every call while it is set, and records calls
    once it is None."""

    def __init__(self, fail: Callable[[], None] | None = backend_error) -> None:
        super().__init__()
        self.fail = fail

    def _record(self, method: str, name: str, value: Any, tags: Any) -> None:
        if self.fail is not None:
            self.fail()
        super()._record(method, name, value, tags)


class RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise LoggingError("a logging filter fails")


class InterruptingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.raised = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.raised += 1
        raise KeyboardInterrupt


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    clock = FakeClock(1000.0)
    with mock.patch("time.time", clock):
        yield clock


@pytest.fixture
def raising_filter() -> Iterator[None]:
    logger, bad = logging.getLogger(LOGGER), RaisingFilter()
    logger.addFilter(bad)
    yield
    logger.removeFilter(bad)


@pytest.fixture
def interrupting_handler() -> Iterator[InterruptingHandler]:
    logger, bad = logging.getLogger(LOGGER), InterruptingHandler()
    logger.addHandler(bad)
    yield bad
    logger.removeHandler(bad)


#: Each way a flush can run, on a buffer holding counter "c" = 2: (call, what a good flush then emits).
TRIGGERS: dict[str, tuple[Callable[[MetricsBuffer], None], list[tuple[str, str, Any, Any]]]] = {
    "flush": (lambda buf: buf.flush(), [("increment", "c", 2, None)]),
    "incr_counter": (lambda buf: buf.incr_counter("c", 1), [("increment", "c", 3, None)]),
    "delivery_callback": (
        lambda buf: buf.delivery_callback("d", {"s": "ok"}, {"s": "error"})(None, None),
        [("increment", "c", 2, None), ("increment", "d", 1, {"s": "ok"})],
    ),
}


def broken_buffer(clock: FakeClock) -> tuple[Broken, MetricsBuffer]:
    """A buffer holding counter "c" = 2 with a failing backend; the clock has moved, so that the
    next incr_* / delivery report flushes (frequency_sec=0)."""
    backend = Broken()
    buf = MetricsBuffer(backend, frequency_sec=0)
    buf.incr_counter("c", 2)
    clock.now += 1
    return backend, buf


def repaired_emission(backend: Broken, buf: MetricsBuffer) -> list[tuple[str, str, Any, Any]]:
    backend.fail = None
    buf.flush()
    buf.flush()
    return backend.calls


@pytest.mark.parametrize("trigger", list(TRIGGERS))
@pytest.mark.usefixtures("raising_filter")
def test_a_raising_logging_filter_does_not_escape(clock: FakeClock, trigger: str) -> None:
    call, emitted = TRIGGERS[trigger]
    backend, buf = broken_buffer(clock)
    call(buf)
    assert sys.exc_info() == (None, None, None)
    assert buf.flush_errors == 1
    assert repaired_emission(backend, buf) == emitted


@pytest.mark.usefixtures("raising_filter")
def test_a_raising_logging_filter_does_not_surface_later_in_a_warm_loop(clock: FakeClock) -> None:
    backend, buf = broken_buffer(clock)
    caught: list[BaseException] = []
    for _ in range(1000):
        try:
            clock.now += 1
            buf.incr_counter("c", 1)
        except Exception as e:
            caught.append(e)
    # A pending error leaks out at the next instruction that checks for one, such as these.
    after = [n for n in range(3)]
    assert after == [0, 1, 2]
    assert sys.exc_info() == (None, None, None)
    assert caught == []
    assert buf.flush_errors == 1000
    assert repaired_emission(backend, buf) == [("increment", "c", 1002, None)]


@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_a_logging_handler_interrupt_is_raised_once_and_the_data_kept(
    clock: FakeClock, interrupting_handler: InterruptingHandler, trigger: str
) -> None:
    call, emitted = TRIGGERS[trigger]
    backend, buf = broken_buffer(clock)
    with pytest.raises(KeyboardInterrupt):
        call(buf)
    assert sys.exc_info() == (None, None, None)
    assert interrupting_handler.raised == 1
    assert buf.flush_errors == 1
    logging.getLogger(LOGGER).removeHandler(interrupting_handler)
    assert repaired_emission(backend, buf) == emitted


def lower_recursion_limit(headroom: int) -> None:
    """Sets the recursion limit `headroom` calls above the lowest one allowed at the caller's depth."""
    limit = 1
    while True:
        try:
            sys.setrecursionlimit(limit)
        except RecursionError:  # below the current depth
            limit += 1
            continue
        sys.setrecursionlimit(limit + headroom)
        return


def test_a_backend_recursion_error_is_logged_and_the_value_kept(caplog: pytest.LogCaptureFixture) -> None:
    backend = Broken(endless_recursion)
    buf = MetricsBuffer(backend)
    buf.incr_counter("c", 4)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        buf.flush()
    records = [(r.name, r.levelno, "RecursionError" in r.getMessage()) for r in caplog.records]
    assert records == [(LOGGER, logging.WARNING, True)]
    assert buf.flush_errors == 1
    backend.fail = None
    buf.flush()
    assert backend.calls == [("increment", "c", 4, None)]


@pytest.mark.parametrize("headroom", [1, 3, 5, 10, 20])
def test_a_backend_recursion_error_near_the_recursion_limit_does_not_escape(headroom: int) -> None:
    backend = Broken(endless_recursion)
    buf = MetricsBuffer(backend)
    buf.incr_counter("c", 4)
    raised: BaseException | None = None
    old = sys.getrecursionlimit()
    lower_recursion_limit(headroom)
    try:
        buf.flush()
    except BaseException as e:
        raised = e
    finally:
        sys.setrecursionlimit(old)
    assert raised is None
    assert buf.flush_errors == 1
    assert buf.pending() == [("counter", "c", None, 4, 1)]
    backend.fail = None
    buf.flush()
    buf.flush()
    assert backend.calls == [("increment", "c", 4, None)]


def test_a_counter_given_back_at_the_i64_edge_is_not_saturated(clock: FakeClock) -> None:
    backend = Recorder()
    failed = False

    class EdgeBackend:
        """While its emit of "big" fails, +5 of "big" arrives (into the next window)."""

        def increment(self, name: str, value: int = 1, tags: Any = None) -> None:
            nonlocal failed
            if name == "big" and not failed:
                failed = True
                buf.incr_counter("big", 5)
                raise BackendError("fails once")
            backend.increment(name, value, tags)

    buf = MetricsBuffer(EdgeBackend())
    buf.incr_counter("big", I64_MAX - 1)
    buf.flush()
    assert failed
    assert buf.flush_errors == 1
    for _ in range(3):
        buf.flush()
    assert buf.pending() == []
    values = [value for _, name, value, _ in backend.calls if name == "big"]
    assert sum(values) == I64_MAX - 1 + 5
    assert len(values) == 2


#: Every way a flush can start, on a buffer holding counter "c" = 4, at a given recursion headroom.
FLUSH_STARTS: dict[str, Callable[[MetricsBuffer], None]] = {
    "flush": lambda buf: buf.flush(),
    "incr_counter": lambda buf: buf.incr_counter("c", 0),
    "delivery report": lambda buf: buf.delivery_callback("d", None, None).report(None, None),
}


@pytest.mark.parametrize("start", list(FLUSH_STARTS))
@pytest.mark.parametrize("fail", [endless_recursion, "raise"], ids=["recursing", "raising"])
def test_no_recursion_error_escapes_at_any_headroom(start: str, fail: Any) -> None:
    """A backend that recurses to the limit, or raises RecursionError, at every headroom from the
    limit itself up: the error is the backend's, contained like any other, and the data kept."""

    def raise_recursion_error() -> None:
        raise RecursionError("raised by the backend")

    escaped = []
    for headroom in range(40):
        backend = Broken(raise_recursion_error if fail == "raise" else fail)
        buf = MetricsBuffer(backend, frequency_sec=0)
        clock_moved()
        buf.incr_counter("c", 4)  # fails: frequency_sec=0
        clock_moved()
        flush = FLUSH_STARTS[start]
        old = sys.getrecursionlimit()
        lower_recursion_limit(headroom)
        try:
            flush(buf)
        except RecursionError as e:
            escaped.append((headroom, e))
        finally:
            sys.setrecursionlimit(old)
        assert sys.exc_info() == (None, None, None)
        if not escaped or escaped[-1][0] != headroom:
            assert buf.flush_errors == 2, headroom
        backend.fail = None
        buf.flush()
        assert backend.totals()[("increment", "c", ())] == 4, headroom
    # At the very limit, calling the method itself may be refused, as calling any Python
    # function there is; no error may come from inside it.
    assert [h for h, e in escaped if not str(e).startswith("maximum recursion depth exceeded")] == []
    assert [h for h, _ in escaped] in ([], [0])
