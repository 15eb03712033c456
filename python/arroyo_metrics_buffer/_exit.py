"""The last emission at interpreter exit (the native exit hook is in ``src/exit.rs``).

The metric calls still pending are made on a daemon thread, which the hook waits for until its
deadline and then abandons, so that a backend that blocks, or waits on a lock the exiting thread
holds, cannot keep the process from exiting.

A leaf module: it imports nothing of this package (the native module imports it at its own import).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Protocol

#: The GIL's switch interval while the exit hook runs. Other threads' calls return at once from
#: then on, and a thread busy calling them in a loop holds the GIL for a whole interval each time
#: before the hook's thread gets it back: with CPython's default of 5 ms and ten such threads, the
#: hook overran its budget by up to half a second.
EXIT_SWITCH_INTERVAL = 0.0002


def quicken() -> float | None:
    """Shortens the switch interval for the exit hook; returns the one to restore (None: leave it)."""
    try:
        previous = sys.getswitchinterval()
        if previous > EXIT_SWITCH_INTERVAL:
            sys.setswitchinterval(EXIT_SWITCH_INTERVAL)
            return previous
    except BaseException:  # the process is exiting: without it, the hook only takes longer
        pass
    return None


def restore(previous: float | None) -> None:
    """Puts back what `quicken` changed, for what runs after the hook."""
    try:
        if previous is not None:
            sys.setswitchinterval(previous)
    except BaseException:
        pass


#: (backend, method name, positional arguments, keyword arguments or None), as arroyo calls it.
Call = tuple[Any, str, tuple[Any, ...], "dict[str, Any] | None"]


class Calls(Protocol):
    """The native module's calls pending at exit (see ``ExitCalls`` in ``src/exit.rs``)."""

    def __len__(self) -> int: ...
    def next_chunk(self) -> list[Call]: ...
    def stop(self) -> None: ...


class _Emission:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.attempted = 0
        self.made = 0
        self.raised = 0
        self.first_error: str | None = None
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            chunk = self.calls.next_chunk()
            if not chunk:
                return
            for backend, method, args, kwargs in chunk:
                if self.stop:
                    return
                self.attempted += 1
                try:
                    if kwargs is None:
                        getattr(backend, method)(*args)
                    else:
                        getattr(backend, method)(*args, **kwargs)
                except BaseException as e:  # the process is exiting: count it, and go on
                    self.raised += 1
                    if self.first_error is None:
                        self.first_error = describe(e)
                else:
                    self.made += 1


def describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except BaseException:  # a __str__ that raises
        return type(error).__name__


#: The exit emission, once it has begun (there is one per process). A child forked from one of its
#: backend calls goes on with that thread's emission: it stops there, as the values are the
#: parent's, which the parent sends.
_running: list[_Emission] = []


def _stop_in_a_child() -> None:
    for emission in _running:
        emission.stop = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_stop_in_a_child)


def emit(calls: Calls, timeout: float) -> tuple[int, int, int, str | None, str | None]:
    """Makes `calls` in order on a daemon thread, and waits up to `timeout` seconds for it: then
    that thread starts no further call. Returns how many calls were started, how many of those
    returned and how many raised (the difference was still in progress), the first error, and
    what a signal handler raised (KeyboardInterrupt for Ctrl-C) that ended the wait, if one did."""
    emission = _Emission(calls)
    _running.append(emission)
    interrupted: str | None = None
    if len(calls) and timeout > 0:  # no time left (Ctrl-C already ended the hook's wait): start none
        deadline = time.monotonic() + timeout
        thread = threading.Thread(target=emission.run, name="arroyo_metrics_buffer: exit", daemon=True)
        try:
            thread.start()
            # In short waits, so that a signal handled on this thread (Ctrl-C) stops the wait at
            # once, whichever thread the signal was delivered to.
            while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
                thread.join(min(left, 0.05))
        except Exception:  # no thread to be had: stop now
            pass
        except BaseException as e:  # a signal handler raised while waiting (Ctrl-C): stop now
            interrupted = type(e).__qualname__
        emission.stop = True
        calls.stop()
    return emission.attempted, emission.made, emission.raised, emission.first_error, interrupted
