"""install() / uninstall() on the installed arroyo: parity with stock arroyo, call by call, and the
install life cycle (idempotence, kill switch, unknown shapes, missing arroyo, identity on restore)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from helpers import NO_KAFKA

pytest.importorskip("confluent_kafka", reason=NO_KAFKA)
pytest.importorskip("arroyo", reason=NO_KAFKA)

import arroyo.backends.kafka.consumer as consumer_module
import arroyo.processing.processor as processor_module
from arroyo.backends.kafka.consumer import ConfluentProducer
from arroyo.processing.processor import MetricsBuffer as ArroyoMetricsBuffer
from confluent_kafka import KafkaError

import arroyo_metrics_buffer
from arroyo_metrics_buffer import MetricsBuffer, install, installed, uninstall
from helpers import (
    CALLBACK_LATENCY,
    MOCK_CLUSTER,
    PRODUCE_STATUS,
    TARGETS,
    CallLog,
    FakeClock,
    arroyo_originals,
    backend,
    producer_has_latency,
    run_python,
)

ORIGINALS = arroyo_originals()


pytestmark = pytest.mark.usefixtures("uninstalled")


@pytest.fixture
def log() -> Iterator[CallLog]:
    with backend(CallLog()) as log:
        yield log


def processor_script(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    timings = [
        "arroyo.consumer.poll.time",
        "arroyo.consumer.processing.time",
        "arroyo.consumer.callback.time",
    ]
    counters = ["arroyo.consumer.run.count", "arroyo.consumer.pause", "arroyo.consumer.resume"]
    ops: list[tuple[Any, ...]] = []
    for _ in range(300):
        r = rng.random()
        if r < 0.4:
            ops.append(("incr_timing", rng.choice(timings), rng.random() / 7))
        elif r < 0.8:
            ops.append(("incr_counter", rng.choice(counters), rng.randint(1, 5)))
        elif r < 0.95:
            ops.append(("tick", rng.choice([0.1, 0.3, 0.5, 1.0, 1.5])))
        else:
            ops.append(("flush",))
    return ops


def run_processor_script(ops: list[tuple[Any, ...]], log: CallLog) -> list[Any]:
    clock = FakeClock(1000.0)
    with mock.patch("time.time", clock):
        buf = ArroyoMetricsBuffer()
        for op in ops:
            if op[0] == "tick":
                clock.now += op[1]
            elif op[0] == "flush":
                buf.flush()
            else:
                getattr(buf, op[0])(*op[1:])
        buf.flush()
    return log.take().calls


@pytest.mark.parametrize("seed", range(5))
def test_processor_buffer_parity(log: CallLog, seed: int) -> None:
    ops = processor_script(seed)
    stock = run_processor_script(ops, log)
    assert install() == TARGETS
    ours = run_processor_script(ops, log)
    assert len(stock) > 20
    assert ours == stock


def producer_script(seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    ops: list[tuple[Any, ...]] = []
    for _ in range(300):
        r = rng.random()
        if r < 0.75:
            ops.append(("deliver", rng.random() < 0.3, rng.choice([0.001, 0.25, 2.0])))
        elif r < 0.95:
            ops.append(("tick", rng.choice([0.1, 0.3, 0.5, 1.0, 1.5])))
        else:
            ops.append(("flush",))
    return ops


def run_producer_script(ops: list[tuple[Any, ...]], log: CallLog, client_id: str | None) -> list[Any]:
    latency = producer_has_latency()
    clock = FakeClock(2000.0)
    config = dict(MOCK_CLUSTER, **({"client.id": client_id} if client_id else {}))
    error = KafkaError(KafkaError._MSG_TIMED_OUT)
    with mock.patch("time.time", clock):
        producer = ConfluentProducer(config)
        callback = producer._ConfluentProducer__metrics_delivery_callback
        for op in ops:
            if op[0] == "tick":
                clock.now += op[1]
            elif op[0] == "flush":
                assert producer.flush(0) == 0
            else:
                _, failed, age = op
                args = (error if failed else None, None) + ((clock.now - age,) if latency else ())
                callback(*args)
        assert producer.flush(0) == 0
    return log.take().calls


@pytest.mark.parametrize("client_id", ["parity-producer", None])
@pytest.mark.parametrize("seed", range(3))
def test_confluent_producer_parity(log: CallLog, seed: int, client_id: str | None) -> None:
    ops = producer_script(seed)
    stock = run_producer_script(ops, log, client_id)
    assert install() == TARGETS
    ours = run_producer_script(ops, log, client_id)
    assert len(stock) > 20
    assert ours == stock


def test_real_deliveries_reach_user_callbacks_and_count_once(log: CallLog) -> None:
    assert install() == TARGETS
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "real"}))
    seen: list[tuple[Any, Any]] = []
    for i in range(20):
        producer.produce(
            "parity-topic", f"m{i}".encode(), on_delivery=lambda e, m: seen.append((e, m.value()))
        )
    assert producer.flush(30) == 0
    for _ in range(5):
        producer.produce("parity-topic", b"purged", callback=lambda e, m: seen.append((e, m.value())))
    producer.purge()
    assert producer.flush(30) == 0
    # flush() flushes metrics before librdkafka serves the callbacks, as in arroyo: once more.
    assert producer.flush(0) == 0
    assert sorted(v for e, v in seen if e is None) == sorted(f"m{i}".encode() for i in range(20))
    assert [e.code() for e, v in seen if e is not None] == [KafkaError._PURGE_QUEUE] * 5
    assert log.statuses() == {"success": 20, "error": 5}
    assert log.named("increment", PRODUCE_STATUS)[0][1] == {"status": "success", "producer_name": "real"}
    if producer_has_latency():
        samples = log.named("timing", CALLBACK_LATENCY)
        assert len(samples) == 25
        assert {tuple(t.items()) for _, t in samples} == {(("producer_name", "real"),)}
        assert all(0 <= v < 30 for v, _ in samples)


def test_flush_returns_librdkafkas_result_even_if_the_backend_raises() -> None:
    class Broken:
        def increment(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("statsd is down")

        def timing(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("statsd is down")

        def gauge(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("statsd is down")

    assert install() == TARGETS
    with backend(Broken()):
        # Nothing listens there, so the message stays in librdkafka's queue: flush(0) must say 1.
        producer = ConfluentProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
        callback = producer._ConfluentProducer__metrics_delivery_callback
        callback(None, None, *((0.0,) if producer_has_latency() else ()))
        logging.getLogger("arroyo_metrics_buffer").disabled = True
        try:
            producer.produce("flush-topic", b"x")
            assert producer.flush(0) == 1
            producer.purge()
            assert producer.flush(30) == 0
        finally:
            logging.getLogger("arroyo_metrics_buffer").disabled = False
        native = vars(producer)["_arroyo_metrics_buffer"]
        # Each flush() emits first, as arroyo's; flush(30) also delivered the purged message's
        # report, and emits once more after it. flush(0) delivered nothing, and does not.
        assert native.flush_errors == 3
        assert ("counter", PRODUCE_STATUS) in {(k, n) for k, n, *_ in native.pending()}


def test_arroyos_private_names_keep_working(log: CallLog) -> None:
    assert install() == TARGETS
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "private"}))
    got: list[Any] = []
    if producer_has_latency():
        wrapped = producer._ConfluentProducer__delivery_callback(lambda e, m: got.append((e, m)), 1000.0)
        producer._ConfluentProducer__metrics_delivery_callback(None, "msg", time_of_produce=1000.0)
    else:
        wrapped = producer._ConfluentProducer__delivery_callback(lambda e, m: got.append((e, m)))
        producer._ConfluentProducer__metrics_delivery_callback(None, "msg")
    wrapped(None, "message")
    producer._ConfluentProducer__flush_metrics()
    assert got == [(None, "message")]
    assert log.statuses() == {"success": 2}


def test_install_is_idempotent_and_uninstall_restores_by_identity(caplog: pytest.LogCaptureFixture) -> None:
    version = arroyo_metrics_buffer._patch.arroyo_version()
    patched_line = (
        f"arroyo_metrics_buffer {arroyo_metrics_buffer.__version__}: patched arroyo {version}: "
        + ", ".join(TARGETS)
    )
    with caplog.at_level(logging.INFO, logger="arroyo_metrics_buffer"):
        assert install() == TARGETS
        patched = {key: key[0].__dict__[key[1]] for key in ORIGINALS}
        assert all(patched[key] is not original for key, original in ORIGINALS.items())
        assert install() == TARGETS  # again: nothing patched twice, nothing logged
        assert {key: key[0].__dict__[key[1]] for key in ORIGINALS} == patched
        assert installed() == TARGETS
        uninstall()
        assert all(key[0].__dict__[key[1]] is original for key, original in ORIGINALS.items())
        assert installed() == []
        uninstall()  # again: nothing to do, nothing logged
        assert install() == TARGETS  # after uninstall(), again
        assert all(key[0].__dict__[key[1]].__wrapped__ is original for key, original in ORIGINALS.items())
    assert [r.getMessage() for r in caplog.records] == [
        patched_line,
        "arroyo_metrics_buffer: uninstalled from " + ", ".join(TARGETS),
        patched_line,
    ]


def test_concurrent_installs_patch_once(caplog: pytest.LogCaptureFixture) -> None:
    barrier = threading.Barrier(8)
    results: list[list[str]] = []

    def go() -> None:
        barrier.wait()
        results.append(install())

    threads = [threading.Thread(target=go) for _ in range(8)]
    with caplog.at_level(logging.INFO, logger="arroyo_metrics_buffer"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [TARGETS] * 8
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        f"patched arroyo {arroyo_metrics_buffer._patch.arroyo_version()}: " + ", ".join(TARGETS)
    ]
    # Each patched attribute wraps arroyo's original directly, not another of our wrappers.
    assert all(key[0].__dict__[key[1]].__wrapped__ is original for key, original in ORIGINALS.items())


def test_kill_switch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("ARROYO_METRICS_BUFFER", "off")
    with caplog.at_level(logging.INFO, logger="arroyo_metrics_buffer"):
        assert install() == []
    assert [r.getMessage() for r in caplog.records] == [
        f"arroyo_metrics_buffer {arroyo_metrics_buffer.__version__}: switched off by ARROYO_METRICS_BUFFER=off; nothing patched"
    ]
    assert all(key[0].__dict__[key[1]] is original for key, original in ORIGINALS.items())


def test_an_unknown_shape_is_left_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class ConfluentProducer:  # what a future arroyo might look like
        def __init__(self, configuration: Any) -> None:
            pass

        def _ConfluentProducer__metrics_delivery_callback(self, error: Any, message: Any, extra: Any) -> None:
            pass

        def produce(self) -> None:
            pass

    monkeypatch.setattr(consumer_module, "ConfluentProducer", ConfluentProducer)
    with caplog.at_level(logging.INFO, logger="arroyo_metrics_buffer"):
        assert install() == TARGETS[:1]
    version = arroyo_metrics_buffer._patch.arroyo_version()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"arroyo_metrics_buffer {arroyo_metrics_buffer.__version__}: arroyo.backends.kafka.consumer.ConfluentProducer "
        f"in arroyo {version} has no __flush_metrics and does not emit directly either; left unpatched"
    ]
    # The fake class was not touched.
    assert not hasattr(ConfluentProducer.__dict__["__init__"], "__wrapped__")
    [status] = [s for s in arroyo_metrics_buffer.status() if s.name == TARGETS[1]]
    assert (status.shape, status.patched, status.would_patch) == (None, False, False)


def test_instances_made_before_install_are_adopted_with_what_they_had_pending(log: CallLog) -> None:
    clock = FakeClock(3000.0)
    with mock.patch("time.time", clock):
        buf = ArroyoMetricsBuffer()
        buf.incr_timing("arroyo.consumer.poll.time", 0.5)
        buf.incr_counter("arroyo.consumer.run.count", 2)
        producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "old"}))
        latency = (2999.0,) if producer_has_latency() else ()
        producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency)
        producer._ConfluentProducer__metrics_delivery_callback(KafkaError(1), None, *latency)
        assert log.calls == []
        assert install() == TARGETS
        buf.incr_counter("arroyo.consumer.run.count", 3)
        buf.incr_timing("arroyo.consumer.poll.time", 0.25)
        producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency)
        assert isinstance(vars(buf)["_arroyo_metrics_buffer"], MetricsBuffer)
        assert isinstance(vars(producer)["_arroyo_metrics_buffer"], MetricsBuffer)
        buf.flush()
        producer.flush(0)
    assert log.total("timing", "arroyo.consumer.poll.time") == 0.75
    assert log.total("increment", "arroyo.consumer.run.count") == 5
    assert log.statuses() == {"success": 2, "error": 1}
    if latency:
        assert [v for v, _ in log.named("timing", CALLBACK_LATENCY)] == [1.0, 1.0, 1.0]


def test_instances_made_while_installed_keep_working_after_uninstall(log: CallLog) -> None:
    assert install() == TARGETS
    buf = ArroyoMetricsBuffer()
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "kept"}))
    uninstall()
    buf.incr_counter("arroyo.consumer.run.count", 4)
    buf.flush()
    producer._ConfluentProducer__metrics_delivery_callback(
        None, None, *((1.0,) if producer_has_latency() else ())
    )
    assert producer.flush(0) == 0
    assert log.total("increment", "arroyo.consumer.run.count") == 4
    assert log.statuses() == {"success": 1}
    # New instances are stock arroyo again.
    assert "_arroyo_metrics_buffer" not in vars(ArroyoMetricsBuffer())


def test_the_module_frequency_is_read_when_each_buffer_is_made(log: CallLog) -> None:
    assert install() == TARGETS
    with mock.patch.object(processor_module, "METRICS_FREQUENCY_SEC", 0.0):
        fast = ArroyoMetricsBuffer()
    slow = ArroyoMetricsBuffer()
    assert vars(fast)["_arroyo_metrics_buffer"].frequency_sec == 0.0
    assert vars(slow)["_arroyo_metrics_buffer"].frequency_sec == 1.0
    with mock.patch.object(consumer_module, "METRICS_FREQUENCY_SEC", 0.25):
        producer = ConfluentProducer(MOCK_CLUSTER)
    assert vars(producer)["_arroyo_metrics_buffer"].frequency_sec == 0.25


def test_import_auto_installs() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        "import arroyo_metrics_buffer.auto, arroyo_metrics_buffer as m\n"
        "print(m.installed())"
    )
    assert run_python(code) == repr(TARGETS)


class FlushCounting(ArroyoMetricsBuffer):
    """Overrides only flush(), which arroyo's throttle calls from incr_*()."""

    def __init__(self) -> None:
        self.flushes = 0
        super().__init__()

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class MetricsFlushCounting(ConfluentProducer):
    """Overrides only arroyo's private __flush_metrics(), which its throttle and flush() call."""

    def __init__(self, configuration: Any) -> None:
        self.metric_flushes = 0
        super().__init__(configuration)

    def _ConfluentProducer__flush_metrics(self) -> None:
        self.metric_flushes += 1
        super()._ConfluentProducer__flush_metrics()


def run_overriding_subclasses(log: CallLog) -> tuple[int, int, list[Any]]:
    clock = FakeClock(5000.0)
    latency = (4999.0,) if producer_has_latency() else ()
    with mock.patch("time.time", clock):
        buf = FlushCounting()
        producer = MetricsFlushCounting(dict(MOCK_CLUSTER, **{"client.id": "sub"}))
        for _ in range(10):
            buf.incr_counter("arroyo.consumer.run.count", 1)
            producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency)
            clock.now += 0.4
        assert producer.flush(0) == 0
    return buf.flushes, producer.metric_flushes, log.take().calls


def test_an_overridden_flush_is_what_the_throttle_calls(log: CallLog) -> None:
    stock = run_overriding_subclasses(log)
    assert install() == TARGETS
    assert run_overriding_subclasses(log) == stock
    assert stock[:2] == (3, 4)  # every 1.2 s of 4 s; and flush()


#: Names that Python's str allows and UTF-8 cannot hold as they are (lone surrogates), and others.
TEXTS = ["\ud800", "x\udc00\ud800y", "\udfff", "plain", "caf\u00e9 \U0001f600"]


def run_with_any_text(log: CallLog) -> list[Any]:
    buf = ArroyoMetricsBuffer()
    for text in TEXTS:
        buf.incr_counter(text, 2)
        buf.incr_timing(text, 0.5)
    buf.flush()
    return log.take().calls


def test_any_str_stock_accepts_is_emitted_as_the_same_text(log: CallLog) -> None:
    stock = run_with_any_text(log)
    assert install() == TARGETS
    assert run_with_any_text(log) == stock
    assert [args[0] for _, args, _ in stock] == TEXTS + TEXTS


class ClockError(Exception):
    pass


def run_with_a_raising_clock(log: CallLog) -> tuple[list[str], list[Any]]:
    """Each recording call while `time.time` raises: what it raised, then what a flush emits."""
    latency = (4999.0,) if producer_has_latency() else ()
    buf = ArroyoMetricsBuffer()
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "clock"}))
    calls = [
        lambda: buf.incr_counter("arroyo.consumer.run.count", 2),
        lambda: buf.incr_timing("arroyo.consumer.poll.time", 0.5),
        lambda: producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency),
    ]
    raised = []
    with mock.patch("time.time", side_effect=ClockError("no clock")):
        for call in calls:
            with pytest.raises(ClockError) as error:
                call()
            raised.append(str(error.value))
    buf.flush()
    producer.flush(0)
    return raised, log.take()


def test_a_raising_clock_keeps_the_value_and_raises_as_in_stock(log: CallLog) -> None:
    stock = run_with_a_raising_clock(log)
    assert install() == TARGETS
    ours = run_with_a_raising_clock(log)
    assert (ours[0], ours[1].calls) == (stock[0], stock[1].calls)
    raised, emitted = stock
    assert raised == ["no clock"] * 3
    assert emitted.total("timing", "arroyo.consumer.poll.time") == 0.5
    assert emitted.total("increment", "arroyo.consumer.run.count") == 2
    assert emitted.statuses() == {"success": 1}


def run_with_float_deltas(log: CallLog) -> list[Any]:
    buf = ArroyoMetricsBuffer()
    buf.incr_counter("arroyo.consumer.run.count", 1)
    buf.incr_counter("arroyo.consumer.run.count", 0.5)
    buf.incr_counter("arroyo.consumer.pause", 2.5)
    buf.incr_counter("arroyo.consumer.pause", 1)
    buf.incr_timing("arroyo.consumer.poll.time", 2)
    buf.flush()
    return log.take().calls


def test_float_deltas_and_int_durations_are_summed_and_emitted_as_in_stock(log: CallLog) -> None:
    """arroyo's ``+=`` takes a float delta (the sum becomes a float) and an int duration (added to
    a float sum): the same values, of the same types, reach the backend."""
    stock = run_with_float_deltas(log)
    assert install() == TARGETS
    ours = run_with_float_deltas(log)
    assert ours == stock
    assert [(args, [type(a) for a in args]) for _, args, _ in ours] == [
        (("arroyo.consumer.poll.time", 2.0), [str, float]),
        (("arroyo.consumer.run.count", 1.5), [str, float]),
        (("arroyo.consumer.pause", 3.5), [str, float]),
    ]
