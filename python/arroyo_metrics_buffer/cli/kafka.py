"""Kafka plumbing for the command line: the mock cluster, reachability, topics, a counting backend."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

MOCK_ADDRESS = re.compile(r"replaced with (\S+)")


class MockCluster:
    """librdkafka's in-process mock cluster (`test.mock.num.brokers`): a real Kafka protocol peer on
    loopback that lives as long as this object; other clients and processes reach it over TCP at
    the address librdkafka logs when it starts."""

    def __init__(self, brokers: int = 1, timeout: float = 10.0) -> None:
        from confluent_kafka import Producer

        found: list[str] = []

        class Grab(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                match = MOCK_ADDRESS.search(record.getMessage())
                if match:
                    found.append(match.group(1))

        log = logging.getLogger("arroyo_metrics_buffer.mock_cluster")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(Grab())
        self._handle = Producer({"test.mock.num.brokers": brokers, "logger": log})
        deadline = time.monotonic() + timeout
        while not found and time.monotonic() < deadline:
            self._handle.poll(0.01)
        if not found:
            raise RuntimeError("librdkafka's mock cluster did not report its address")
        self.bootstrap_servers = found[0]


class MockClusterProcess:
    """A [`MockCluster`] in a process of its own, so that what its brokers spend is not counted in
    this process's CPU time; it lives until `close()`."""

    def __init__(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys\n"
            "from arroyo_metrics_buffer.cli.kafka import MockCluster\n"
            "cluster = MockCluster()\n"
            "print(cluster.bootstrap_servers, flush=True)\n"
            "sys.stdin.read()\n"
        )
        self._child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._child.stdout is not None
        self.bootstrap_servers = self._child.stdout.readline().strip()
        if not self.bootstrap_servers:
            self.close()
            raise RuntimeError("the mock cluster's process did not report its address")

    def close(self) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        try:
            self._child.wait(timeout=10)
        except Exception:
            self._child.kill()
            self._child.wait()


def check_reachable(bootstrap_servers: str, timeout: float = 5.0) -> str | None:
    """None if a Kafka cluster answers at `bootstrap_servers`, else why not."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
        admin.list_topics(timeout=timeout)
    except KafkaException as e:
        return str(e.args[0].str() if e.args and hasattr(e.args[0], "str") else e)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def create_topics(bootstrap_servers: str, names: list[str], mock: bool, timeout: float = 30.0) -> None:
    """Makes sure the topics exist before anyone subscribes. The mock cluster does not serve
    CreateTopics but creates a topic when a producer asks for its metadata; a real cluster gets a
    CreateTopics request (best effort: the topic may exist, or be left to auto-creation)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    if not mock:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        futures = admin.create_topics([NewTopic(n, 4, 1) for n in names], operation_timeout=timeout)
        for future in futures.values():
            try:
                future.result(timeout=timeout)
            except Exception:
                pass
    probe = Producer({"bootstrap.servers": bootstrap_servers})
    deadline = time.monotonic() + timeout
    for name in names:
        while time.monotonic() < deadline:
            topic = probe.list_topics(topic=name, timeout=timeout).topics.get(name)
            if topic is not None and topic.error is None and topic.partitions:
                break
            time.sleep(0.05)


def versions() -> str:
    import confluent_kafka

    version: Any = confluent_kafka.version()  # a str in 2.16, a (str, int) tuple in older releases
    version = version[0] if isinstance(version, tuple) else version
    return f"confluent-kafka {version} (librdkafka {confluent_kafka.libversion()[0]})"


class CountingBackend:
    """An arroyo metrics backend that counts everything, from any thread, and like a statsd client
    also sends each metric as a UDP datagram (to a socket of its own on 127.0.0.1 that nobody
    reads): the send releases the GIL in the middle of arroyo's flush loop, as in production."""

    def __init__(self) -> None:
        self._sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sink.bind(("127.0.0.1", 0))
        self._sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._address = self._sink.getsockname()
        self._lock = threading.Lock()
        self.increments: dict[tuple[str, tuple[tuple[str, str], ...]], int | float] = {}
        self.timings: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.calls = 0

    @staticmethod
    def _key(name: str, tags: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted((tags or {}).items()))

    def _send(self, name: str, value: int | float, kind: str) -> None:
        try:
            self._sender.sendto(f"{name}:{value}|{kind}".encode(), self._address)
        except OSError:
            pass  # a full socket buffer drops datagrams, as UDP does

    def increment(self, name: str, value: int | float = 1, tags: Any = None) -> None:
        with self._lock:
            key = self._key(name, tags)
            self.increments[key] = self.increments.get(key, 0) + value
            self.calls += 1
        self._send(name, value, "c")

    def timing(self, name: str, value: int | float, tags: Any = None) -> None:
        with self._lock:
            self.timings[self._key(name, tags)] += 1
            self.calls += 1
        self._send(name, value, "ms")

    def gauge(self, name: str, value: int | float, tags: Any = None) -> None:
        with self._lock:
            self.calls += 1
        self._send(name, value, "g")

    def increment_total(self, name: str, **tags: str) -> int | float:
        with self._lock:
            return sum(
                v for (n, t), v in self.increments.items() if n == name and set(tags.items()) <= set(t)
            )

    def timing_count(self, name: str, **tags: str) -> int:
        with self._lock:
            return sum(v for (n, t), v in self.timings.items() if n == name and set(tags.items()) <= set(t))
