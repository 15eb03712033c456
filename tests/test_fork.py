"""os.fork(): a child's buffers start empty, work, and never hang, whatever the parent's threads held;
a child forked in the middle of install() or uninstall() gets a consistent patch state."""

from __future__ import annotations

import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from arroyo_metrics_buffer import MetricsBuffer, _patch, install, installed, uninstall
from arroyo_metrics_buffer.targets import Shape, Target
from helpers import (
    MOCK_CLUSTER,
    PRODUCE_STATUS,
    Gate,
    Plain,
    backend,
    child_exit_status,
    needs_kafka,
    producer_has_latency,
)

# Forking while other threads run is what these tests are about (CPython 3.12+ warns about it).
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@pytest.fixture
def patched() -> Iterator[None]:
    assert install()
    yield
    uninstall()


def in_child(check: Callable[[], None]) -> None:
    """Runs `check` in a forked child; fails if it raises or hangs."""
    assert child_exit_status(check) == 0, "the child's checks failed (see stderr)"


@needs_kafka
def test_the_child_starts_empty_and_the_parent_keeps_its_values(patched: None) -> None:
    from arroyo.backends.kafka.consumer import ConfluentProducer
    from arroyo.processing.processor import MetricsBuffer as ArroyoMetricsBuffer

    with backend(Plain()) as log:
        buf = ArroyoMetricsBuffer()
        producer = ConfluentProducer(dict(MOCK_CLUSTER, **{"client.id": "fork"}))
        latency = (time.time(),) if producer_has_latency() else ()
        buf.incr_counter("arroyo.consumer.run.count", 7)
        producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency)

        def child() -> None:
            assert vars(buf)["_arroyo_metrics_buffer"].pending() == []
            assert vars(producer)["_arroyo_metrics_buffer"].pending() == []
            buf.incr_counter("arroyo.consumer.run.count", 1)
            buf.flush()
            producer._ConfluentProducer__metrics_delivery_callback(None, None, *latency)
            producer._ConfluentProducer__flush_metrics()
            assert [c[:3] for c in log.calls if c[0] == "increment"] == [
                ("increment", "arroyo.consumer.run.count", 1),
                ("increment", PRODUCE_STATUS, 1),
            ]

        in_child(child)
        buf.flush()
        producer._ConfluentProducer__flush_metrics()
        assert [c for c in log.calls if c[0] == "increment"] == [
            ("increment", "arroyo.consumer.run.count", 7),
            ("increment", PRODUCE_STATUS, 1),
        ]


def test_forking_while_another_thread_hammers_the_lock() -> None:
    log = Plain()
    buf = MetricsBuffer(log, frequency_sec=0.001)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            buf.incr_counter("parent", 1)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for _ in range(30):

            def child() -> None:
                before = len(log.calls)
                assert buf.pending() == []
                buf.incr_counter("child", 2)
                buf.flush()
                assert log.calls[before:] == [("increment", "child", 2)]

            in_child(child)
    finally:
        stop.set()
        thread.join()


def test_forking_while_another_thread_is_emitting() -> None:
    log = Plain()
    gate = Gate(log, "slow")
    buf = MetricsBuffer(gate)
    buf.incr_counter("slow", 1)
    emitter = threading.Thread(target=buf.flush)
    emitter.start()
    assert gate.entered.wait(10)
    try:

        def child() -> None:
            # The parent's emitter does not exist here: this flush must emit, not hand over.
            buf.incr_counter("child", 1)
            buf.flush()
            assert log.calls == [("increment", "child", 1)]

        in_child(child)
    finally:
        gate.release.set()
        emitter.join(10)
    assert log.calls == [("increment", "slow", 1)]


def test_a_child_forked_in_a_backend_call_sends_none_of_the_parents_values() -> None:
    """A backend that forks on its first call (a helper process started on first use): the child
    returns into the parent's emit, which must stop there (the values are the parent's)."""
    read, write = os.pipe()
    forked: list[int] = []
    parent_calls: list[str] = []

    class Forking:
        def increment(self, name: str, value: int = 1, tags: Any = None) -> None:
            if not forked:
                forked.append(os.fork())
            if forked[0] == 0:
                os.write(write, f"{name}\n".encode())
            else:
                parent_calls.append(name)

    buf = MetricsBuffer(Forking(), frequency_sec=3600)
    for i in range(5):
        buf.incr_counter(f"c{i}", 1)
    try:
        buf.flush()
    finally:
        if forked and forked[0] == 0:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(forked[0], 0)
    with os.fdopen(read) as child_calls:
        # The child finishes the backend call it was forked in (the backend's own code), then no more.
        assert (status, child_calls.read().split()) == (0, ["c0"])
    assert parent_calls == ["c0", "c1", "c2", "c3", "c4"]
    assert buf.pending() == []


class Gated(type):
    """A metaclass whose class-attribute writes of "b" wait, once, for `go`: a patch caught
    between two attributes."""

    entered = threading.Event()
    go = threading.Event()

    def __setattr__(cls, name: str, value: Any) -> None:
        if name == "b" and not Gated.entered.is_set():
            Gated.entered.set()
            assert Gated.go.wait(30)
        super().__setattr__(name, value)


class Fake(metaclass=Gated):
    a = "a0"
    b = "b0"


class FakeTarget(Target):
    module_name = "fake"
    class_name = "Fake"

    def locate(self) -> type:
        return Fake

    def detect(self, cls: type, namespace: Mapping[str, Any]) -> Shape | str:
        return Shape("two attributes")

    def replacements(self, cls: type, shape: Shape) -> dict[str, Any]:
        return {"a": "a1", "b": "b1"}


@pytest.fixture
def fake_target(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_patch, "all_targets", lambda: [FakeTarget()])
    monkeypatch.setitem(sys.modules, "arroyo", types.ModuleType("arroyo"))  # install() goes ahead
    Gated.entered.clear()
    Gated.go.clear()
    uninstall()
    yield
    Gated.go.set()
    uninstall()


def attrs() -> tuple[Any, Any]:
    return Fake.__dict__["a"], Fake.__dict__["b"]


@pytest.mark.parametrize("caught_in", ["install", "uninstall"])
def test_a_child_forked_in_the_middle_of_a_patch_sees_it_undone_and_can_redo_it(
    fake_target: None, caught_in: str
) -> None:
    before = ([], ("a0", "b0")) if caught_in == "install" else (["fake.Fake"], ("a1", "b1"))
    if caught_in == "uninstall":
        Gated.entered.set()  # let install() through
        assert install() == ["fake.Fake"]
        Gated.entered.clear()
    thread = threading.Thread(target=install if caught_in == "install" else uninstall)
    thread.start()
    try:
        assert Gated.entered.wait(10)
        assert attrs() == (("a1", "b0") if caught_in == "install" else ("a0", "b1"))

        def child() -> None:
            assert (installed(), attrs()) == before  # the half-done step is undone
            assert install() == ["fake.Fake"]
            assert attrs() == ("a1", "b1")
            uninstall()
            assert (installed(), attrs()) == ([], ("a0", "b0"))

        in_child(child)
    finally:
        Gated.go.set()
        thread.join(10)
    after = (["fake.Fake"], ("a1", "b1")) if caught_in == "install" else ([], ("a0", "b0"))
    assert (installed(), attrs()) == after  # the parent's thread finished its step


@needs_kafka
def test_a_child_forked_while_another_thread_adopts_an_instance_adopts_it_again() -> None:
    from arroyo.processing.processor import MetricsBuffer as ArroyoMetricsBuffer

    entered, go = threading.Event(), threading.Event()

    class SlowToAdopt(ArroyoMetricsBuffer):
        """Its `metrics`, read when it is adopted, makes the adopting thread wait for `go`."""

        adopting = False

        @property  # type: ignore[override]
        def metrics(self) -> Any:
            if self.adopting and not entered.is_set():
                entered.set()
                assert go.wait(30)
            return self._metrics

        @metrics.setter
        def metrics(self, value: Any) -> None:
            self._metrics = value

    with backend(Plain()) as log:
        buf = SlowToAdopt()  # before install(): adopted on first use
        install()
        buf.adopting = True
        thread = threading.Thread(target=buf.incr_counter, args=("c", 2))
        thread.start()
        try:
            assert entered.wait(10)

            def child() -> None:
                buf.incr_counter("c", 4)  # the adoption lock is usable, the adoption redone
                buf.flush()
                assert log.calls == [("increment", "c", 4)]

            in_child(child)
        finally:
            go.set()
            thread.join(10)
            uninstall()
        buf.flush()
    assert log.calls == [("increment", "c", 2)]
