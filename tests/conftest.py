from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    yield Recorder()
