"""The demo's load: one ConfluentProducer (the pool) that worker threads produce to and poll while
other threads flush it and one purges its queue, and two KafkaProducers that take every
KAFKA_SHARE-th message of each worker. Everything it saw is counted here."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .demo_result import KAFKA_PRODUCERS, KAFKA_SHARE, POOL, PURGE_EVERY, split, thread_shares
from .progress import Progress

QUEUE_FULL_SECONDS = 30


class Load:
    def __init__(self, bootstrap: str, topic: str, messages: int, threads: int) -> None:
        from arroyo.backends.kafka import KafkaProducer
        from arroyo.backends.kafka.consumer import ConfluentProducer

        self.topic = topic
        self.messages, self.threads = messages, threads
        # Messages wait up to 2 ms in the local queue, where the purger fails some of them.
        config = {"bootstrap.servers": bootstrap, "linger.ms": 2}
        self.pool = ConfluentProducer(dict(config, **{"client.id": POOL}))
        self.kafka = {name: KafkaProducer(dict(config, **{"client.id": name})) for name in KAFKA_PRODUCERS}
        self.lock = threading.Lock()
        self.delivered: Counter[str] = Counter()
        self.raised: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.futures: dict[str, list[Any]] = {name: [] for name in KAFKA_PRODUCERS}
        self.produced = [0] * threads
        self.done = threading.Event()

    def on_delivery(self, error: Any, message: Any) -> None:
        with self.lock:
            self.delivered["error" if error is not None else "success"] += 1

    def guarded(self, call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, counting what it raises (but BufferError, which the caller handles)."""
        try:
            return call(*args)
        except BufferError:
            raise
        except Exception as e:
            self.count_raised(type(e).__name__, str(e)[:120])
            return None

    def count_raised(self, kind: str, example: str) -> None:
        with self.lock:
            self.raised[kind] += 1
            self.examples.setdefault(kind, example)

    def worker(self, index: int, count: int) -> None:
        from arroyo.backends.kafka import KafkaPayload
        from arroyo.types import Topic

        for i in range(count):
            if i % KAFKA_SHARE == KAFKA_SHARE - 1:
                name = KAFKA_PRODUCERS[(index + i) % len(KAFKA_PRODUCERS)]
                payload = KafkaPayload(None, b"payload", [])
                future = self.guarded(self.kafka[name].produce, Topic(self.topic), payload)
                with self.lock:
                    self.futures[name].append(future)
            elif self.produce_to_pool():
                self.produced[index] += 1
                self.guarded(self.pool.poll, 0)
            else:
                return

    def produce_to_pool(self) -> bool:
        """Produces one message, serving callbacks while librdkafka's queue is full; False if it
        stays full for QUEUE_FULL_SECONDS (Kafka is gone: the thread stops, and says so)."""
        full_since = None
        while True:
            try:
                self.pool.produce(self.topic, b"payload", on_delivery=self.on_delivery)
                return True
            except BufferError:
                full_since = full_since or time.monotonic()
                if time.monotonic() - full_since > QUEUE_FULL_SECONDS:
                    self.count_raised("QueueFull", f"queue full for {QUEUE_FULL_SECONDS} s")
                    return False
                self.guarded(self.pool.poll, 0.01)

    def flusher(self) -> None:
        while not self.done.is_set():
            self.guarded(self.pool.flush, 0.01)

    def purger(self) -> None:
        # Fails what is still queued every few ms (delivery reports with _PURGE_QUEUE), so that
        # deliveries succeed and fail by turns. (A very short message.timeout.ms does the same on
        # some librdkafka versions and fails everything on others.)
        while not self.done.wait(PURGE_EVERY):
            self.guarded(self.pool.purge, True, False, False)

    def status(self) -> str:
        pool_total, kafka_total = split(self.messages, self.threads)
        with self.lock:
            pool, kafka = sum(self.produced), sum(len(f) for f in self.futures.values())
            return (
                f"pool produced {pool:,}/{pool_total:,}, KafkaProducers {kafka:,}/{kafka_total:,}"
                f"  delivered {sum(self.delivered.values()):,}  exceptions {sum(self.raised.values()):,}"
            )

    def run(self, progress: Progress) -> float:
        """Produces everything and waits for the pool's deliveries; the seconds that took."""
        started = time.monotonic()
        shares = thread_shares(self.messages, self.threads)
        workers = [threading.Thread(target=self.worker, args=(i, n)) for i, n in enumerate(shares)]
        helpers = [threading.Thread(target=self.flusher) for _ in workers] + [
            threading.Thread(target=self.purger)
        ]
        for t in workers + helpers:
            t.start()
        while any(t.is_alive() for t in workers):
            progress.show(self.status())
            time.sleep(0.05)
        self.done.set()
        for t in helpers:
            t.join()
        deadline = time.monotonic() + 60
        while len(self.pool) and time.monotonic() < deadline:
            progress.show(self.status())
            self.guarded(self.pool.flush, 1)
        seconds = time.monotonic() - started
        self.guarded(self.pool.flush, 0)  # flush() does the metrics before librdkafka's callbacks: once more
        progress.show(self.status(), final=True)
        return seconds

    def close(self) -> dict[str, dict[str, int]]:
        """Closes the KafkaProducers: how many of each one's futures succeeded, failed or hung."""
        outcomes = {name: settle(fs) for name, fs in self.futures.items()}
        for producer in self.kafka.values():
            self.close_kafka_producer(producer)
        return outcomes

    def close_kafka_producer(self, producer: Any) -> None:
        self.guarded(lambda: producer.close().result(timeout=60))
        # Like the pool: close() flushes metrics before the last callbacks.
        self.guarded(producer._KafkaProducer__producer.flush, 0)


def settle(futures: list[Any], timeout: float = 60) -> dict[str, int]:
    """Waits for KafkaProducer futures: how many succeeded, failed, or never resolved."""
    import concurrent.futures

    real = [f for f in futures if f is not None]
    concurrent.futures.wait(real, timeout=timeout)
    out = {"success": 0, "error": 0, "unresolved": len(futures) - len(real)}
    for f in real:
        if not f.done():
            out["unresolved"] += 1
        elif f.exception() is not None:
            out["error"] += 1
        else:
            out["success"] += 1
    return out
