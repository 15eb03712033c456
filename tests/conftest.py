from __future__ import annotations

from collections.abc import Iterator

import pytest

from arroyo_metrics_buffer import uninstall
from helpers import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder()


@pytest.fixture
def uninstalled() -> Iterator[None]:
    """Nothing installed before the test, nor after it."""
    uninstall()
    yield
    uninstall()
