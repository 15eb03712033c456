"""The compiled core of arroyo-metrics-buffer (Rust, PyO3)."""

from collections.abc import Mapping
from numbers import Real
from typing import Any, Literal, SupportsFloat, final

__all__ = [
    "DeliveryCallback",
    "MetricsBuffer",
    "__version__",
    "reset_logging",
]

__version__: str

_PendingKind = Literal["timer", "counter", "sample"]

@final
class MetricsBuffer:
    """A thread-safe, drop-in replacement for ``arroyo.processing.processor.MetricsBuffer``.

    Timers (float sums), counters (int sums) and samples (one timing per call) are kept per metric
    name and tags, in first-appearance order, for one flush window. A flush swaps the window out
    under a lock and calls the backend after releasing it: timers as ``timing(name, value)``, then
    counters as ``increment(name, value)``, then samples one by one as ``timing(name, value)``, with
    ``tags=`` only when there are tags (all three as keywords when ``keyword_args`` is true, as
    arroyo's ``ConfluentProducer`` calls them).

    Every ``incr_*`` / ``record_timing`` call flushes when more than ``frequency_sec`` seconds have
    passed since the last flush, by ``time.time`` as looked up at call time. Exactly one caller
    wins each flush and only one thread emits at a time; ``flush()`` called while another thread
    emits hands its flush to that thread instead of waiting.

    A backend exception never escapes: what was not sent is kept (ahead of newer keys) for the
    next flush, and nothing sent is sent again. The first failure is logged with its traceback to
    the ``arroyo_metrics_buffer`` logger; after that, at most one failure record per
    ``failure_log_interval`` seconds says how many flushes failed, how many calls wait and how
    many samples were dropped, and one line says when the backend works again after such a record
    (a backend that fails and works by turns logs at most twice per interval).
    ``flush_errors`` counts every failure. A backend that calls back into the buffer while it is
    being flushed adds to the next window.

    Names and tags may be any ``str``, lone surrogates included, and are emitted as the same text.
    The buffer keeps a reference to up to 32 untagged names (``str`` objects it was passed more
    than once) until it is dropped, to find them again by identity.

    Reference cycles through the buffer (a backend holding it, its delivery callback or its bound
    ``flush``) are collected by the garbage collector; both classes take weak references.

    At interpreter exit (an ``atexit`` hook registered when this module is imported), the values
    pending in every live buffer are emitted, within a budget of 2 s in all
    (``ARROYO_METRICS_BUFFER_EXIT_TIMEOUT``, in seconds), on a daemon thread that is abandoned at
    the deadline, whatever the backend does; what is not emitted by then is dropped, and one line
    is logged saying how much. From the moment the hook starts, calls on other threads return at
    once without recording, and their flushes stop before their next backend call.

    In a child forked with ``fork()`` (``os.fork`` or native code), every buffer starts empty; the
    parent keeps its values.
    """

    def __new__(
        cls,
        metrics: Any | None = None,
        *,
        frequency_sec: SupportsFloat | None = None,
        max_samples: int | None = None,
        keyword_args: bool | None = None,
        failure_log_interval: SupportsFloat | None = None,
    ) -> MetricsBuffer:
        """``metrics`` is the backend (``None``: arroyo's ``get_metrics()`` now, which needs arroyo
        installed); ``frequency_sec`` (default 1.0) must be a non-negative number; at most
        ``max_samples`` (default 1,000,000) samples are held, and further ones are dropped and
        counted in ``dropped_samples``; while the backend keeps failing, at most one summary is
        logged per ``failure_log_interval`` seconds (default 60, non-negative)."""

    @staticmethod
    def _floor() -> Any:
        """For ``bench`` only: an object whose ``incr_counter``, ``incr_timing`` and ``report`` have
        the recording methods' signatures and do nothing (each figure's floor)."""

    @property
    def metrics(self) -> Any:
        """The backend flushes call (``None`` only once the garbage collector cleared it, in a
        reference cycle being collected)."""

    @property
    def frequency_sec(self) -> float: ...
    @property
    def max_samples(self) -> int: ...
    @property
    def keyword_args(self) -> bool: ...
    @property
    def failure_log_interval(self) -> float: ...
    @property
    def flushes(self) -> int:
        """Windows emitted (or attempted) so far."""

    @property
    def flush_errors(self) -> int:
        """Flushes the backend raised in."""

    @property
    def dropped_samples(self) -> int:
        """Samples dropped because ``max_samples`` were already held."""

    def incr_counter(self, metric: str, delta: int | float, tags: Mapping[str, str] | None = None) -> None:
        """Add ``delta`` to the counter; ``OverflowError`` if a sum of ints would leave the int64
        range. A float delta makes the counter's sum a float, as in arroyo."""

    def incr_timing(self, metric: str, duration: float | Real, tags: Mapping[str, str] | None = None) -> None:
        """Add ``duration`` to the timer."""

    def record_timing(self, metric: str, value: float | Real, tags: Mapping[str, str] | None = None) -> None:
        """Keep one timing sample, emitted on its own."""

    def flush(self) -> None:
        """Emit everything pending now."""

    def pending(self) -> list[tuple[_PendingKind, str, dict[str, str] | None, float, int]]:
        """What the next flush would emit, without flushing: ``(kind, name, tags, value, count)``
        per key in emission order; for samples ``value`` is their sum and ``count`` their number."""

    def delivery_callback(
        self,
        counter: str,
        success_tags: Mapping[str, str] | None,
        error_tags: Mapping[str, str] | None,
        latency: str | None = None,
        latency_tags: Mapping[str, str] | None = None,
    ) -> DeliveryCallback:
        """A callable for confluent-kafka delivery reports that counts ``counter`` under
        ``success_tags`` or ``error_tags`` and, with ``latency``, records a ``latency`` sample of
        ``time.time() - time_of_produce``, both at once, then does the throttled flush."""

@final
class DeliveryCallback:
    """See :meth:`MetricsBuffer.delivery_callback`."""

    @property
    def buffer(self) -> MetricsBuffer: ...
    def report(self, error: object | None, _message: object, time_of_produce: float | None = None) -> None:
        """Count one delivery report (``error`` is None on success)."""

    def __call__(
        self, error: object | None, _message: object, time_of_produce: float | None = None
    ) -> None: ...
    @staticmethod
    def reports_on_this_thread() -> int:
        """How many delivery reports any ``DeliveryCallback`` has counted on the calling thread."""

def reset_logging() -> None:
    """Kept so that code calling it goes on working: the ``arroyo_metrics_buffer`` logger is
    looked up on every record, so there is no cached logger to forget."""
