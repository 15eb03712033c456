"""install() at its edges: a fork while another thread is inside install() leaves the child a
consistent patch; subclasses keep their overrides; arroyo's parameter names work as keywords; and
an attribute another library replaced after install() is left to it."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final
from unittest import mock

import pytest

pytest.importorskip("confluent_kafka", reason="install() patches arroyo, which needs confluent-kafka")

from arroyo.backends.kafka.consumer import ConfluentProducer
from arroyo.processing.processor import MetricsBuffer as ArroyoMetricsBuffer

from arroyo_metrics_buffer import install, installed, uninstall
from helpers import TARGETS, CallLog, FakeClock, arroyo_originals, backend, child_exit_status

LOGGER = "arroyo_metrics_buffer"
ORIGINALS = arroyo_originals()
RUN_COUNT: Final = "arroyo.consumer.run.count"
POLL_TIME: Final = "arroyo.consumer.poll.time"


pytestmark = pytest.mark.usefixtures("uninstalled")


@pytest.fixture
def log() -> Iterator[CallLog]:
    with backend(CallLog()) as log, mock.patch("time.time", FakeClock(1000.0)):
        yield log


class BlockOnInstall(logging.Handler):
    """Holds the installing thread inside install(), which logs under its lock, until released."""

    def __init__(self, installer: Callable[[], int | None]) -> None:
        super().__init__(logging.INFO)
        self.installer, self.pid = installer, os.getpid()
        self.entered, self.unblock = threading.Event(), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() == self.pid and threading.get_ident() == self.installer():
            self.entered.set()
            self.unblock.wait(60)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_another_thread_is_inside_install_does_not_hang() -> None:
    thread = threading.Thread(target=install)
    blocker = BlockOnInstall(lambda: thread.ident)
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(blocker)
    try:
        thread.start()
        assert blocker.entered.wait(30), "install() logged nothing at INFO"

        def child() -> None:
            assert installed() == TARGETS
            assert install() == TARGETS
            uninstall()
            assert installed() == []
            assert install() == TARGETS

        status = child_exit_status(child)
    finally:
        blocker.unblock.set()
        thread.join(30)
        logger.removeHandler(blocker)
        logger.setLevel(level)
    assert status == 0, f"the child exited with {status} (-{int(signal.SIGALRM)}: it hung)"
    assert installed() == TARGETS


class Subclass(ArroyoMetricsBuffer):
    """Overrides incr_counter and flush, recording each call, and calls arroyo's through super()."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def incr_counter(self, metric: Any, delta: int) -> None:
        self.seen.append(("incr_counter", metric, delta))
        super().incr_counter(metric, delta)

    def flush(self) -> None:
        self.seen.append(("flush",))
        super().flush()


def use_subclass() -> list[tuple[Any, ...]]:
    buf = Subclass()
    buf.incr_counter(RUN_COUNT, 2)
    buf.incr_timing(POLL_TIME, 0.5)
    buf.incr_counter(RUN_COUNT, 3)
    buf.flush()
    return buf.seen


def test_a_subclass_keeps_its_overrides_after_install(log: CallLog) -> None:
    seen = [("incr_counter", RUN_COUNT, 2), ("incr_counter", RUN_COUNT, 3), ("flush",)]
    emitted = [("timing", (POLL_TIME, 0.5), ()), ("increment", (RUN_COUNT, 5), ())]
    assert (use_subclass(), log.take().calls) == (seen, emitted)  # stock arroyo
    assert install() == TARGETS
    assert (use_subclass(), log.take().calls) == (seen, emitted)


def keyword_calls(buf: ArroyoMetricsBuffer) -> None:
    buf.incr_counter(metric=RUN_COUNT, delta=1)
    buf.incr_timing(metric=POLL_TIME, duration=0.25)
    buf.incr_counter(metric=RUN_COUNT, delta=2)
    buf.flush()


@pytest.mark.parametrize("created", ["before install()", "after install()"])
def test_keyword_calls_emit_what_stock_arroyo_emits(log: CallLog, created: str) -> None:
    keyword_calls(ArroyoMetricsBuffer())
    stock = log.take().calls
    assert stock == [("timing", (POLL_TIME, 0.25), ()), ("increment", (RUN_COUNT, 3), ())]
    buf = ArroyoMetricsBuffer() if created == "before install()" else None
    assert install() == TARGETS
    keyword_calls(buf or ArroyoMetricsBuffer())
    assert log.take().calls == stock


@pytest.mark.parametrize(
    ("cls", "attr"),
    [(ArroyoMetricsBuffer, "incr_timing"), (ConfluentProducer, "_ConfluentProducer__flush_metrics")],
)
def test_uninstall_leaves_a_later_patch_by_another_library_in_place(
    caplog: pytest.LogCaptureFixture, cls: type, attr: str
) -> None:
    def theirs(self: Any, *args: Any, **kwargs: Any) -> None:
        pass

    assert install() == TARGETS
    setattr(cls, attr, theirs)
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            uninstall()
        now = {key: key[0].__dict__[key[1]] for key in ORIGINALS}
    finally:
        setattr(cls, attr, ORIGINALS[(cls, attr)])
    assert now == {**ORIGINALS, (cls, attr): theirs}
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and attr in warnings[0], warnings
