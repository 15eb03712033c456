from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest


class BackendError(Exception):
    pass


class Recorder:
    """A metrics backend that records every call, notices overlapping calls and can fail."""

    def __init__(self, fail_every: int = 0) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, str] | None]] = []
        self.fail_every = fail_every
        self.attempts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def _record(self, method: str, name: str, value: Any, tags: Mapping[str, str] | None) -> None:
        with self._lock:
            self.attempts += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fail = self.fail_every and self.attempts % self.fail_every == 0
        try:
            if fail:
                raise BackendError(f"call {self.attempts} fails")
            self.calls.append((method, name, value, None if tags is None else dict(tags)))
        finally:
            with self._lock:
                self.in_flight -= 1

    def increment(self, name: str, value: int = 1, tags: Mapping[str, str] | None = None) -> None:
        self._record("increment", name, value, tags)

    def timing(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("timing", name, value, tags)

    def gauge(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        self._record("gauge", name, value, tags)

    def totals(self) -> Counter[tuple[str, str, tuple[tuple[str, str], ...]]]:
        out: Counter[tuple[str, str, tuple[tuple[str, str], ...]]] = Counter()
        for method, name, value, tags in self.calls:
            out[(method, name, tuple(sorted((tags or {}).items())))] += value
        return out


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder()
