"""`bench`'s memory figures, each measured in fresh interpreters (memory a process has used is not
reliably given back, so stock and patched never share one):

- the resident memory one flush window takes: 1,000,000 latency samples (delivery reports of a
  ConfluentProducer) and 10,000 distinct counters (a StreamProcessor's MetricsBuffer), recorded
  without a flush;
- the peak resident memory of a process producing at full speed for a while to the mock cluster,
  which runs in a process of its own.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
from typing import Any

from .bench_kafka import figure
from .kafka import MockClusterProcess

PRELUDE = """
import gc, json, os, sys, threading, time
import arroyo.backends.kafka.consumer as consumer
import arroyo.processing.processor as processor
from arroyo.utils.metrics import configure_metrics
import arroyo_metrics_buffer

class Null:
    def increment(self, *args, **kwargs): pass
    def timing(self, *args, **kwargs): pass
    def gauge(self, *args, **kwargs): pass

configure_metrics(Null(), force=True)
if sys.argv[1] == "patched":
    assert arroyo_metrics_buffer.install()

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak_resident():
    # VmHWM, this process image's own high-water mark. Not ru_maxrss: Linux carries that over from
    # before exec(), so it is never less than what the parent held when it started this child.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""

WINDOW = """
consumer.METRICS_FREQUENCY_SEC = processor.METRICS_FREQUENCY_SEC = 1e9  # one window, no flush
producer = consumer.ConfluentProducer({"test.mock.num.brokers": 1, "client.id": "memory", "log_level": 0})
buffer = processor.MetricsBuffer()
report = getattr(producer, "_ConfluentProducer__metrics_delivery_callback")
# Before arroyo 2.40.3 a delivery report has no time of produce (and makes no latency sample).
import inspect
latency = "time_of_produce" in inspect.signature(report).parameters
args = (None, None, time.time()) if latency else (None, None)
names = [f"arroyo.bench.counter.{i}" for i in range(10_000)]
gc.collect()
before = resident()
for _ in range(1_000_000):
    report(*args)
for name in names:
    buffer.incr_counter(name, 1)
gc.collect()
print(json.dumps(resident() - before))
"""

PEAK = """
seconds = float(sys.argv[2])
producer = consumer.ConfluentProducer(
    {"bootstrap.servers": sys.argv[3], "client.id": "memory", "linger.ms": 5, "log_level": 3}
)
done = threading.Event()

def poll():
    while not done.is_set():
        producer.poll(0.01)

poller = threading.Thread(target=poll)
poller.start()
delivered = [0]

def on_delivery(error, message):
    delivered[0] += 1

deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        producer.produce("memory", b"payload", on_delivery=on_delivery)
    except BufferError:
        time.sleep(0.001)
producer.flush(60)
done.set()
poller.join()
print(json.dumps([peak_resident(), delivered[0]]))
"""


def child(script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench: a memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def memory(rounds: int, seconds: float) -> list[dict[str, Any]]:
    """The window figure (the medians of `rounds` children per side, in ABBA order) and the peak
    figure (one child per side, producing for `seconds`), in MB."""
    window: dict[str, list[float]] = {"stock": [], "patched": []}
    for i in range(rounds):
        for side in ("stock", "patched") if i % 2 == 0 else ("patched", "stock"):
            window[side].append(child(WINDOW, side) / 1e6)
    # The cluster in a process of its own: an in-process mock cluster keeps what it is sent, and
    # its log, not the producer, then set the peak (the same to the page on both sides).
    cluster = MockClusterProcess()
    try:
        peak = {
            side: child(PEAK, side, str(seconds), cluster.bootstrap_servers) for side in ("stock", "patched")
        }
    finally:
        cluster.close()
    return [
        figure(
            "memory of one window: 1,000,000 samples, 10,000 counters",
            "MB",
            statistics.median(window["stock"]),
            statistics.median(window["patched"]),
        ),
        figure(
            f"peak memory producing at full speed for {seconds:g} s",
            "MB",
            peak["stock"][0] / 1e6,
            peak["patched"][0] / 1e6,
        )
        | {"messages": {side: peak[side][1] for side in peak}},
    ]
