"""arroyo's ConfluentProducer.produce() with our per-message wrapper (a partial of a plain function in
place of arroyo's ``__delivery_callback`` closure), on librdkafka's mock cluster: what the user's
callbacks see and what is emitted are the same as stock arroyo's, the producer lives as long, and
the wrapper holds nothing after the delivery."""

from __future__ import annotations

import gc
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest

from helpers import NO_KAFKA

pytest.importorskip("confluent_kafka", reason=NO_KAFKA)
pytest.importorskip("arroyo", reason=NO_KAFKA)

from arroyo.backends.kafka.consumer import ConfluentProducer
from confluent_kafka import KafkaError

from arroyo_metrics_buffer import install
from arroyo_metrics_buffer._native import DeliveryCallback
from arroyo_metrics_buffer.targets.producer import deliver, deliver_with_latency
from helpers import MOCK_CLUSTER, TARGETS, CallLog, FakeClock, backend, producer_has_latency

pytestmark = pytest.mark.usefixtures("uninstalled")

CALLBACK = "_ConfluentProducer__metrics_delivery_callback"
WRAPPER = "_ConfluentProducer__delivery_callback"
TOPIC = "wrapper-topic"

#: (which callback, the error's code or None, the message's value) per user callback call.
Seen = list[tuple[str, int | None, bytes]]


@pytest.fixture
def log() -> Iterator[CallLog]:
    with backend(CallLog()) as log:
        yield log


def user(seen: Seen, name: str) -> Callable[[Any, Any], None]:
    return lambda error, message: seen.append((name, error and error.code(), message.value()))


def outcomes(seen: Seen) -> list[tuple[str, str, bytes]]:
    """What the user's callbacks saw, in an order that does not depend on librdkafka's."""
    purged = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)
    return sorted(
        (name, "delivered" if code is None else "purged" if code in purged else f"error {code}", value)
        for name, code, value in seen
    )


def run_produce_script(log: CallLog) -> tuple[list[tuple[str, str, bytes]], list[Any]]:
    """Deliveries and purges with every way of passing a callback (none, on_delivery=, callback=,
    both), under a clock that moves only between batches, so that latencies are exact."""
    seen: Seen = []
    clock = FakeClock(3000.0)
    with mock.patch("time.time", clock):
        producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "wrapper"}))
        ways: list[dict[str, Any]] = [
            {},
            {"on_delivery": user(seen, "on_delivery")},
            {"callback": user(seen, "callback")},
            {"callback": user(seen, "callback"), "on_delivery": user(seen, "on_delivery")},
            {"on_delivery": None},
        ]
        for i in range(15):
            producer.produce(TOPIC, b"a%d" % i, partition=0, **ways[i % len(ways)])
        clock.now += 0.25
        assert producer.flush(30) == 0
        for i in range(10):
            producer.produce(TOPIC, b"b%d" % i, partition=0, **ways[i % len(ways)])
        producer.purge()
        clock.now += 1.5
        assert producer.flush(30) == 0
        clock.now += 2.0
        assert producer.flush(0) == 0
    return outcomes(seen), log.take().calls


def test_produce_and_deliver_parity_with_stock_arroyo(log: CallLog) -> None:
    stock = run_produce_script(log)
    assert install() == TARGETS
    ours = run_produce_script(log)
    assert ours == stock
    seen, calls = ours
    ways = ["", "on_delivery", "callback", "callback", ""]
    assert seen == sorted(
        [(ways[i % 5], "delivered", b"a%d" % i) for i in range(15) if ways[i % 5]]
        + [(ways[i % 5], "purged", b"b%d" % i) for i in range(10) if ways[i % 5]]
    )
    emitted = CallLog()
    emitted.calls = calls
    assert emitted.statuses() == {"success": 15, "error": 10}
    if producer_has_latency():
        assert sorted(v for v, _ in emitted.named("timing", "arroyo.producer.callback_latency")) == (
            [0.25] * 15 + [1.5] * 10
        )


def test_arroyos_class_gets_the_wrapper_of_its_native_callback() -> None:
    assert install() == TARGETS
    producer = ConfluentProducer(MOCK_CLUSTER)
    callback, wrap = vars(producer)[CALLBACK], vars(producer)[WRAPPER]
    assert isinstance(callback.__self__, DeliveryCallback)
    wrapped = wrap(print, *([1.0] if producer_has_latency() else []))
    assert wrapped.func in (deliver, deliver_with_latency)
    assert wrapped.args[:3] == (callback, print, producer)


def test_a_subclass_overriding_the_metrics_callback_keeps_arroyos_wrapper_calling_it() -> None:
    calls: list[tuple[Any, ...]] = []

    class Counting(ConfluentProducer):
        def _ConfluentProducer__metrics_delivery_callback(self, *args: Any) -> None:
            calls.append(args[:1] + args[2:])

    assert install() == TARGETS
    producer = Counting(MOCK_CLUSTER)
    assert WRAPPER not in vars(producer)
    with mock.patch("time.time", FakeClock(500.0)):
        producer.produce(TOPIC, b"x", partition=0)
        assert producer.flush(30) == 0
    assert calls == [(None, 500.0) if producer_has_latency() else (None,)]


def test_a_subclass_overriding_the_wrapper_keeps_its_override() -> None:
    wrapped: list[Any] = []

    class Wrapping(ConfluentProducer):
        def _ConfluentProducer__delivery_callback(self, user_callback: Any, *rest: Any) -> Any:
            wrapped.append(user_callback)
            return super()._ConfluentProducer__delivery_callback(user_callback, *rest)

    assert install() == TARGETS
    producer = Wrapping(MOCK_CLUSTER)
    assert WRAPPER not in vars(producer)
    seen: Seen = []
    on_delivery = user(seen, "on_delivery")
    producer.produce(TOPIC, b"x", partition=0, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert (wrapped, seen) == ([on_delivery], [("on_delivery", None, b"x")])


def run_raising_user_callback(log: CallLog) -> tuple[list[str], Any]:
    """A user callback that raises: confluent-kafka raises it from flush(); the delivery was counted."""

    def failing(error: Any, message: Any) -> None:
        raise ValueError(f"user callback failed on {message.value()!r}")

    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "raising"}))
    producer.produce(TOPIC, b"x", partition=0, on_delivery=failing)
    producer.produce(TOPIC, b"y", partition=0)
    raised = []
    while True:
        try:
            assert producer.flush(30) == 0
            break
        except ValueError as e:
            raised.append(str(e))
    assert producer.flush(0) == 0
    return raised, log.take().statuses()


def test_a_raising_user_callback_raises_as_in_stock_arroyo_and_its_delivery_counts(log: CallLog) -> None:
    stock = run_raising_user_callback(log)
    assert install() == TARGETS
    assert run_raising_user_callback(log) == stock == (["user callback failed on b'x'"], {"success": 2})


def run_with_a_callback_that_is_not_callable(log: CallLog) -> tuple[str, str, Any]:
    """What flush() raises: a TypeError, or on 3.11 confluent-kafka's own SystemError about it."""
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "not-callable"}))
    producer.produce(TOPIC, b"x", partition=0, callback=42)
    with pytest.raises((TypeError, SystemError)) as raised:
        producer.flush(30)
    assert producer.flush(30) == 0 and producer.flush(0) == 0
    return type(raised.value).__name__, str(raised.value), log.take().statuses()


def test_a_callback_that_is_not_callable_raises_from_the_delivery_as_in_stock_arroyo(log: CallLog) -> None:
    stock = run_with_a_callback_that_is_not_callable(log)
    assert install() == TARGETS
    assert run_with_a_callback_that_is_not_callable(log) == stock
    assert stock[2] == {"success": 1}


def test_the_wrapper_holds_the_user_callback_until_its_delivery_only() -> None:
    assert install() == TARGETS
    producer = ConfluentProducer(MOCK_CLUSTER)
    seen: Seen = []
    on_delivery = user(seen, "on_delivery")
    before = sys.getrefcount(on_delivery)
    for i in range(50):
        producer.produce(TOPIC, b"%d" % i, partition=0, on_delivery=on_delivery)
    assert sys.getrefcount(on_delivery) == before + 50
    assert producer.flush(30) == 0
    assert len(seen) == 50
    assert sys.getrefcount(on_delivery) == before


def test_a_cycle_through_the_user_callback_is_collected() -> None:
    assert install() == TARGETS
    producer = ConfluentProducer(MOCK_CLUSTER)

    class Keeper:
        wrapper: Any = None

        def __call__(self, error: Any, message: Any) -> None:
            pass

    keeper = Keeper()
    keeper.wrapper = producer._ConfluentProducer__delivery_callback(
        keeper, *([1.0] if producer_has_latency() else [])
    )
    collected = []
    weakref.finalize(keeper, lambda: collected.append(True))
    del keeper
    gc.collect()
    assert collected == [True]


def test_an_unknown_wrapper_shape_keeps_arroyos_wrapper() -> None:
    from arroyo_metrics_buffer.targets.producer import COUNTERS, COUNTERS_AND_LATENCY, wraps_like_arroyo

    shape = COUNTERS_AND_LATENCY if producer_has_latency() else COUNTERS
    assert wraps_like_arroyo(ConfluentProducer, shape)

    class Later(ConfluentProducer):
        def _ConfluentProducer__delivery_callback(
            self, user_callback: Any, time_of_produce: float, extra: Any
        ) -> Any:
            return self._ConfluentProducer__metrics_delivery_callback

    class Unrelated(ConfluentProducer):
        def _ConfluentProducer__delivery_callback(self, user_callback: Any, *rest: Any) -> Any:
            return user_callback

    assert not wraps_like_arroyo(Later, shape)
    assert not wraps_like_arroyo(Unrelated, shape)


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "patched"])
def test_a_producer_dropped_with_deliveries_in_flight_lives_until_they_are_served(patched: bool) -> None:
    """arroyo's per-message closure holds the producer, so dropping it does not destroy librdkafka's
    handle (and the messages in it) under the deliveries; the native wrapper holds it the same way."""
    if patched:
        assert install() == TARGETS
    producer = ConfluentProducer(MOCK_CLUSTER)
    producer_ref = weakref.ref(producer)
    seen: Seen = []
    for i in range(20):
        producer.produce(TOPIC, b"%d" % i, partition=0, on_delivery=user(seen, "on_delivery"))
    del producer
    gc.collect()
    alive = producer_ref()
    assert alive is not None
    assert alive.flush(30) == 0
    del alive
    gc.collect()
    assert (len(seen), producer_ref()) == (20, None)


def run_with_a_bare_mock_clock(log: CallLog) -> tuple[str, Any]:
    """Produced while `time.time` is a bare `mock.patch` (a MagicMock, as in many test suites)."""
    producer = ConfluentProducer(MOCK_CLUSTER)
    with mock.patch("time.time"):
        producer.produce(TOPIC, b"x", partition=0)
    outcome = "ok" if producer.flush(30) == 0 and producer.flush(0) == 0 else "not delivered"
    return outcome, log.take().statuses()


def test_a_mock_time_of_produce_raises_nothing_as_in_stock_arroyo(log: CallLog) -> None:
    stock = run_with_a_bare_mock_clock(log)
    assert install() == TARGETS
    assert run_with_a_bare_mock_clock(log) == stock == ("ok", {"success": 1})


def test_flush_has_emitted_what_it_delivered_when_it_returns(log: CallLog) -> None:
    """arroyo's flush() emits first, then flushes the producer, which delivers: those deliveries'
    metrics are emitted before flush() returns (upstream leaves them for a later flush)."""
    assert install() == TARGETS
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "flushing"}))
    for i in range(500):
        producer.produce(TOPIC, b"%d" % i, partition=0)
    assert producer.flush(30) == 0
    assert log.statuses() == {"success": 500}
    if producer_has_latency():
        assert len(log.named("timing", "arroyo.producer.callback_latency")) == 500
    calls = len(log.calls)
    for _ in range(100):
        assert producer.flush(0) == 0
    assert len(log.calls) == calls, "flushes that deliver nothing emit nothing"


def test_a_flush_that_raises_has_emitted_what_it_delivered(log: CallLog) -> None:
    """A user's delivery callback raising makes confluent-kafka's flush() raise, after the
    deliveries it served: their metrics are emitted all the same."""
    assert install() == TARGETS
    producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "raising", "linger.ms": 50}))
    called = [0]

    def callback(error: Any, message: Any) -> None:
        called[0] += 1
        if called[0] == 60:
            raise ValueError("a user callback")

    for i in range(100):
        producer.produce(TOPIC, b"%d" % i, partition=0, callback=callback)
    with pytest.raises(ValueError, match="a user callback"):
        producer.flush(30)
    assert called[0] >= 60
    assert log.statuses() == {"success": called[0]}


def test_a_closed_kafka_producer_has_emitted_every_delivery_when_close_returns(log: CallLog) -> None:
    from arroyo.backends.kafka import KafkaPayload, KafkaProducer
    from arroyo.types import Topic

    from helpers import kafka_producer_emits_produce_status

    if not kafka_producer_emits_produce_status():
        pytest.skip("this arroyo's KafkaProducer does not use ConfluentProducer (before 2.40.3)")
    assert install() == TARGETS
    producer = KafkaProducer(dict(MOCK_CLUSTER, **{"client.id": "closing"}))
    futures = [producer.produce(Topic("closing"), KafkaPayload(None, b"%d" % i, [])) for i in range(2_000)]
    producer.close().result(timeout=60)
    assert all(f.done() and f.exception() is None for f in futures)
    assert log.statuses() == {"success": 2_000}
    assert len(log.named("timing", "arroyo.producer.callback_latency")) == 2_000


def test_a_flush_0_loop_makes_no_more_backend_calls_than_arroyos(
    log: CallLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another thread counts deliveries, a loop of flush(0) that delivers nothing itself
    emits once per flush at most, as arroyo's does: the second emission is only for what that
    flush delivered."""
    import threading

    import arroyo.backends.kafka.consumer as consumer

    monkeypatch.setattr(consumer, "METRICS_FREQUENCY_SEC", 3600)
    assert install() == TARGETS
    # Nothing listens there: the message stays queued, and flush(0) delivers nothing.
    producer = ConfluentProducer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    producer.produce(TOPIC, b"stuck")
    report = getattr(producer, CALLBACK)
    latency = (1.0,) if producer_has_latency() else ()
    reports = 20_000

    def deliveries() -> None:
        for i in range(reports):
            report(None, None, *latency)
            if i % 100 == 0:
                time.sleep(0)  # let the flushing thread run

    thread = threading.Thread(target=deliveries)
    thread.start()
    flushes = 0
    while thread.is_alive():
        # Still queued (librdkafka counts its own requests to the missing broker too).
        assert producer.flush(0) >= 1
        flushes += 1
    thread.join()
    increments = log.named("increment", "arroyo.producer.produce_status")
    assert len(increments) <= flushes
    producer._ConfluentProducer__flush_metrics()
    assert log.statuses() == {"success": reports}
    producer.purge()
    producer.flush(0)
