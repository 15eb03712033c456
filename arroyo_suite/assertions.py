"""Stand-in for arroyo's tests/assertions.py (not in the sdist)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def assert_changes(read: Callable[[], Any], before: Any, after: Any) -> Iterator[None]:
    assert read() == before
    yield
    assert read() == after


@contextmanager
def assert_does_not_change(read: Callable[[], Any], value: Any) -> Iterator[None]:
    assert read() == value
    yield
    assert read() == value
