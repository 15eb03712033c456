"""What a failing backend logs: the first failure of a run with its traceback, then at most one
summary per failure_log_interval, then one line when it works again, so that a backend that is
down cannot flood the application's logs; flush_errors counts every failure."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from arroyo_metrics_buffer import MetricsBuffer
from helpers import NO_KAFKA, PRODUCE_STATUS, BackendError, Recorder, clock_moved, needs_kafka

LOGGER = "arroyo_metrics_buffer"


class Switchable(Recorder):
    """A recording backend that raises while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def _record(self, method: str, name: str, value: object, tags: object) -> None:
        if self.down:
            raise BackendError("statsd is down")
        super()._record(method, name, value, tags)  # type: ignore[arg-type]


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        yield caplog


def messages(records: pytest.LogCaptureFixture) -> list[str]:
    """What the buffer logged so far (all of it WARNING records of its logger)."""
    assert {(r.name, r.levelno) for r in records.records} <= {(LOGGER, logging.WARNING)}
    return [r.getMessage() for r in records.records]


def test_a_backend_down_for_ten_thousand_flushes_logs_once(records: pytest.LogCaptureFixture) -> None:
    backend = Switchable()
    buf = MetricsBuffer(backend, frequency_sec=0)
    for _ in range(10_000):
        clock_moved()
        buf.incr_counter("c", 1)
    assert buf.flush_errors == 10_000
    [first] = messages(records)
    assert first.startswith("metrics backend raised during a flush; 1 metric call(s) kept for the next flush")
    assert "(while it keeps failing, this buffer logs one summary every 60 s)" in first
    assert "Traceback (most recent call last)" in first
    assert first.endswith("BackendError: statsd is down")
    backend.down = False
    buf.flush()
    assert backend.calls == [("increment", "c", 10_000, None)]
    assert messages(records)[1:] == [
        f"metrics backend works again after {buf.flush_errors} failed flush(es); what was kept has been emitted"
    ]


def test_with_no_interval_each_later_failure_is_one_summary_line(records: pytest.LogCaptureFixture) -> None:
    backend = Switchable()
    buf = MetricsBuffer(backend, frequency_sec=3600, failure_log_interval=0, max_samples=2)
    buf.incr_counter("c", 1)
    buf.flush()
    buf.record_timing("s", 1.0)
    buf.record_timing("s", 2.0)
    buf.record_timing("s", 3.0)  # beyond max_samples: dropped
    buf.flush()
    buf.flush()
    first, second, third = messages(records)
    assert "Traceback" in first
    summary = (
        r"metrics backend still failing: 1 more failed flush\(es\) in the last [0-9.]+ s; "
        r"(\d+) metric call\(s\) waiting, (\d+) sample\(s\) dropped since the last report; "
        r"the last error: BackendError: statsd is down"
    )
    assert [re.fullmatch(summary, m).groups() for m in (second, third)] == [("3", "1"), ("3", "0")]  # type: ignore[union-attr]
    assert buf.flush_errors == 3


def test_a_backend_that_fails_and_works_by_turns_logs_twice_per_interval(
    records: pytest.LogCaptureFixture,
) -> None:
    backend = Switchable()
    buf = MetricsBuffer(backend, frequency_sec=3600)
    for turn in range(10_000):
        backend.down = turn % 2 == 0
        buf.incr_counter("c", 1)
        buf.flush()
    first, second = messages(records)
    assert first.startswith("metrics backend raised during a flush; 1 metric call(s) kept")
    assert "Traceback (most recent call last)" in first
    assert second == ("metrics backend works again after 1 failed flush(es); what was kept has been emitted")
    assert buf.flush_errors == 5_000
    assert sum(v for _, _, v, _ in backend.calls) == 10_000
    assert len(backend.calls) == 5_000  # each working flush sends what the failed one kept


def test_after_the_interval_a_new_failure_is_told_in_full_or_summarised(
    records: pytest.LogCaptureFixture,
) -> None:
    backend = Switchable()
    buf = MetricsBuffer(backend, frequency_sec=3600, failure_log_interval=0)
    for down in (True, True, False, True, False, False, True):
        backend.down = down
        buf.incr_counter("c", 1)
        buf.flush()
    assert [m.split(";")[0].split(":")[0] for m in messages(records)] == [
        "metrics backend raised during a flush",
        "metrics backend still failing",
        "metrics backend works again after 2 failed flush(es)",
        "metrics backend raised during a flush",
        "metrics backend works again after 1 failed flush(es)",
        "metrics backend raised during a flush",
    ]
    assert backend.calls == [
        ("increment", "c", 3, None),
        ("increment", "c", 2, None),
        ("increment", "c", 1, None),
    ]
    assert buf.flush_errors == 4


def test_the_interval_is_a_non_negative_number_of_seconds() -> None:
    assert MetricsBuffer(Recorder()).failure_log_interval == 60.0
    assert MetricsBuffer(Recorder(), failure_log_interval=2.5).failure_log_interval == 2.5
    with pytest.raises(ValueError, match=r"'failure_log_interval' must be a non-negative number, not -1"):
        MetricsBuffer(Recorder(), failure_log_interval=-1)
    with pytest.raises(TypeError, match=r"'failure_log_interval' must be a real number, not str"):
        MetricsBuffer(Recorder(), failure_log_interval="60")


@needs_kafka
@pytest.mark.usefixtures("uninstalled")
def test_five_thousand_failed_deliveries_through_a_producer_log_once(
    records: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("arroyo", reason=NO_KAFKA)
    import arroyo.backends.kafka.consumer as consumer

    from arroyo_metrics_buffer import install
    from helpers import MOCK_CLUSTER, backend

    backend_down = Switchable()
    with backend(backend_down):
        assert install()
        old, consumer.METRICS_FREQUENCY_SEC = consumer.METRICS_FREQUENCY_SEC, 0
        try:
            producer = consumer.ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "down"}))
            for i in range(5_000):
                producer.produce("failure-log", b"%d" % i, partition=0)
            assert producer.flush(30) == 0
        finally:
            consumer.METRICS_FREQUENCY_SEC = old
        native = vars(producer)["_arroyo_metrics_buffer"]
        assert native.flush_errors > 1_000
        [first] = messages(records)
        assert first.startswith("metrics backend raised during a flush")
        backend_down.down = False
        producer.flush(0)
        assert (
            sum(v for m, n, v, _ in backend_down.calls if m == "increment" and n == PRODUCE_STATUS) == 5_000
        )


class EveryThird(Recorder):
    """A recording backend whose every third call raises: one that fails and works by turns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def _record(self, method: str, name: str, value: object, tags: object) -> None:
        self.seen += 1
        if self.seen % 3 == 0:
            raise BackendError("statsd dropped a packet")
        super()._record(method, name, value, tags)  # type: ignore[arg-type]


@needs_kafka
@pytest.mark.usefixtures("uninstalled")
def test_a_producer_whose_backend_fails_by_turns_logs_twice_and_loses_nothing(
    records: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("arroyo", reason=NO_KAFKA)
    import arroyo.backends.kafka.consumer as consumer

    from arroyo_metrics_buffer import install
    from helpers import MOCK_CLUSTER, backend

    flapping = EveryThird()
    with backend(flapping):
        assert install()
        old, consumer.METRICS_FREQUENCY_SEC = consumer.METRICS_FREQUENCY_SEC, 0
        try:
            producer = consumer.ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "by-turns"}))
            for i in range(5_000):
                producer.produce("failure-log", b"%d" % i, partition=0)
            assert producer.flush(30) == 0
            while vars(producer)["_arroyo_metrics_buffer"].pending():
                producer.flush(0)
        finally:
            consumer.METRICS_FREQUENCY_SEC = old
        native = vars(producer)["_arroyo_metrics_buffer"]
        assert native.flush_errors > 100
        logged = messages(records)
        assert [m.split(";")[0].split(" after")[0] for m in logged] == [
            "metrics backend raised during a flush",
            "metrics backend works again",
        ]
        assert sum(v for m, n, v, _ in flapping.calls if m == "increment" and n == PRODUCE_STATUS) == 5_000
