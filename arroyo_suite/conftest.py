"""Stand-in for arroyo's tests/conftest.py (not in the sdist), plus: install() first when
ARROYO_SUITE_PATCHED=1, and fail the run if the patch did not take."""

import os
from collections.abc import Iterator

import pytest
from arroyo.utils.metrics import configure_metrics

from tests.metrics import TestingMetricsBackend

PATCHED = os.environ.get("ARROYO_SUITE_PATCHED") == "1"


def pytest_configure(config: pytest.Config) -> None:
    configure_metrics(TestingMetricsBackend)
    if PATCHED:
        import arroyo_metrics_buffer

        patched = arroyo_metrics_buffer.install()
        if not patched:
            raise pytest.UsageError("arroyo_metrics_buffer.install() patched nothing")


def pytest_report_header() -> str:
    if not PATCHED:
        return "arroyo_metrics_buffer: not installed (stock arroyo)"
    import arroyo_metrics_buffer

    return "arroyo_metrics_buffer: installed on " + ", ".join(arroyo_metrics_buffer.installed())


@pytest.fixture(autouse=True)
def clear_metrics_state() -> Iterator[None]:
    yield
    TestingMetricsBackend.calls.clear()
