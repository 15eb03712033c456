"""Stand-in for arroyo's tests/metrics.py (not in the sdist): a backend that records every call."""

from typing import NamedTuple

from arroyo.utils.metrics import Metrics

Number = int | float
Tags = dict[str, str] | None


class Increment(NamedTuple):
    name: str
    value: Number
    tags: Tags


class Gauge(NamedTuple):
    name: str
    value: Number
    tags: Tags


class Timing(NamedTuple):
    name: str
    value: Number
    tags: Tags


MetricCall = Increment | Gauge | Timing


class _TestingMetricsBackend(Metrics):
    def __init__(self) -> None:
        self.calls: list[MetricCall] = []

    def increment(self, name: str, value: Number = 1, tags: Tags = None) -> None:
        self.calls.append(Increment(name, value, tags))

    def gauge(self, name: str, value: Number, tags: Tags = None) -> None:
        self.calls.append(Gauge(name, value, tags))

    def timing(self, name: str, value: Number, tags: Tags = None) -> None:
        self.calls.append(Timing(name, value, tags))


TestingMetricsBackend = _TestingMetricsBackend()
