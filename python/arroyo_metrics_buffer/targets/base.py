"""What every target shares: its description (Shape, Target) and the adoption helpers.

A leaf module: it imports nothing of this package but the native buffer, so the target modules
and ``_patch`` can all import it at the top without a cycle.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._native import MetricsBuffer

logger = logging.getLogger("arroyo_metrics_buffer")

#: The instance attribute that holds an instance's native buffer (False: could not make one).
BUFFER_ATTR = "_arroyo_metrics_buffer"


@dataclass(frozen=True)
class Shape:
    """What a target looks like in the installed arroyo."""

    description: str
    #: False when this shape has no buffer to fix (nothing to patch, nothing wrong).
    needs_patch: bool = True
    #: Target-specific switches (e.g. whether callback latency samples are kept).
    latency: bool = False


class Target:
    """One arroyo class: finds it, recognises its shape, and says what to replace."""

    module_name: str
    class_name: str

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.class_name}"

    def locate(self) -> type:
        module = importlib.import_module(self.module_name)
        cls = getattr(module, self.class_name)
        if not isinstance(cls, type):
            raise TypeError(f"{self.name} is not a class")
        return cls

    def detect(self, cls: type, namespace: Mapping[str, Any]) -> Shape | str:
        """The shape, or a sentence saying what does not match. `namespace` is the class's own
        attributes as arroyo defined them (the originals, while patched)."""
        raise NotImplementedError

    def replacements(self, cls: type, shape: Shape) -> dict[str, Any]:
        """Class attributes to set; each must already be defined on `cls` itself."""
        raise NotImplementedError


def names_used(fn: Any) -> set[str]:
    """Every name and string constant a function's code uses, nested code included."""
    code = getattr(fn, "__code__", None)
    out: set[str] = set()
    stack = [code] if isinstance(code, types.CodeType) else []
    while stack:
        c = stack.pop()
        out.update(c.co_names)
        out.update(c.co_varnames)
        for const in c.co_consts:
            if isinstance(const, str):
                out.add(const)
            elif isinstance(const, types.CodeType):
                stack.append(const)
    return out


def params(fn: Any) -> tuple[str, ...] | None:
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return None
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def missing(namespace: Mapping[str, Any], attrs: Iterable[str]) -> list[str]:
    return [a for a in attrs if not callable(namespace.get(a))]


def module_of(cls: type) -> types.ModuleType:
    return sys.modules[cls.__module__]


def frequency_of(cls: type) -> float:
    """arroyo's METRICS_FREQUENCY_SEC of the class's module, read now (tests patch it)."""
    return float(module_of(cls).METRICS_FREQUENCY_SEC)


def take_pending(instance: Any, attribute: str) -> list[Any]:
    """What an instance from before install() had pending in arroyo's dict (its items) or list (its
    values), emptied so that it is carried over once."""
    pending = getattr(instance, attribute, None)
    if not pending:
        return []
    taken = list(pending.items() if isinstance(pending, dict) else pending)
    pending.clear()
    return taken


def defined_by(instance: Any, cls: type, name: str) -> bool:
    """Whether the instance's class gets `name` from `cls` (arroyo's class) rather than from a
    subclass that overrides it."""
    for klass in type(instance).__mro__:
        if name in vars(klass):
            return klass is cls
    return False


def usable_after_fork(lock: Any) -> Any:
    """In a forked child: `lock` if it is free or held by this thread, else a fresh RLock (the
    thread that held it does not exist in the child, so it would never be released)."""
    if lock.acquire(blocking=False):
        lock.release()
        return lock
    return threading.RLock()


#: Makes an instance's native buffer (moving over what it had pending).
Make = Callable[[Any], MetricsBuffer]
#: The instance attributes that put a native buffer's methods on an instance.
Bind = Callable[[Any, MetricsBuffer], Mapping[str, Any]]

_adopt_lock = threading.RLock()


def _after_fork_in_child() -> None:
    global _adopt_lock
    # A half-done adoption is consistent: native_of() sets the buffer before its methods.
    _adopt_lock = usable_after_fork(_adopt_lock)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def native_of(instance: Any, make: Make, bind: Bind) -> MetricsBuffer | None:
    """The instance's native buffer, made on first use for instances that predate install().

    `make` builds it (moving over what the instance had pending); `bind` says which of its methods
    go on the instance. None if it cannot be made: the caller then falls back to arroyo's own
    method.

    Attributes are read and set with getattr/setattr, never through ``vars(instance)``: on CPython
    3.13+ touching ``__dict__`` materialises it, and arroyo's own attribute loads on that instance
    then stay unspecialised (docs/performance.md has the measurement).
    """
    found = getattr(instance, BUFFER_ATTR, None)
    if found is None:
        with _adopt_lock:
            found = getattr(instance, BUFFER_ATTR, None)
            if found is None:
                native: MetricsBuffer | Literal[False]
                try:
                    native = make(instance)
                    bound = bind(instance, native)
                except Exception:
                    logger.warning(
                        "could not give %s a native metrics buffer; it keeps arroyo's own",
                        type(instance).__qualname__,
                        exc_info=True,
                    )
                    native, bound = False, {}
                # The buffer first: a child forked between these steps finds it, and sends whatever
                # is not bound yet to the same buffer through the class's wrappers.
                setattr(instance, BUFFER_ATTR, native)
                for name, method in bound.items():
                    setattr(instance, name, method)
                found = native
    return found or None
