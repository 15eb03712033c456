"""install() / uninstall(): make arroyo's metrics buffering use the native MetricsBuffer.

Each patched arroyo class keeps its identity; a few of its attributes are replaced in place (and put
back by identity on uninstall). An instance created while installed gets its own native buffer, and
its hot methods become that buffer's bound methods in its ``__dict__``, so arroyo's calls go
straight to native code. Those instances keep working after uninstall(). An instance created before
install() is adopted on first use: its pending dict values move into a new native buffer.
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
from typing import Any

from ._native import MetricsBuffer, __version__

logger = logging.getLogger("arroyo_metrics_buffer")

SWITCH = "ARROYO_METRICS_BUFFER"
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


@dataclass(frozen=True)
class TargetStatus:
    name: str
    #: The detected shape, or None when unknown / not importable.
    shape: Shape | None
    patched: bool
    #: Why the shape is unknown or the target could not be found.
    problem: str | None = None

    @property
    def would_patch(self) -> bool:
        return self.shape is not None and self.shape.needs_patch


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
    pending = vars(instance).get(attribute)
    if not pending:
        return []
    taken = list(pending.items() if isinstance(pending, dict) else pending)
    pending.clear()
    return taken


_adopt_lock = threading.RLock()


def native_of(
    instance: Any, make: Callable[[Any], MetricsBuffer], bind: Callable[[Any, MetricsBuffer], None]
) -> MetricsBuffer | None:
    """The instance's native buffer, made on first use for instances that predate install().

    `make` builds it (moving over what the instance had pending); `bind` puts its methods on the
    instance. None if it cannot be made: the caller then falls back to arroyo's own method.
    """
    found = vars(instance).get(BUFFER_ATTR)
    if found is None:
        with _adopt_lock:
            found = vars(instance).get(BUFFER_ATTR)
            if found is None:
                try:
                    found = make(instance)
                    bind(instance, found)
                except Exception:
                    logger.warning(
                        "could not give %s a native metrics buffer; it keeps arroyo's own",
                        type(instance).__qualname__,
                        exc_info=True,
                    )
                    found = False
                vars(instance)[BUFFER_ATTR] = found
    return found or None


_lock = threading.Lock()
#: name -> (class, {attribute: original value})
_patched: dict[str, tuple[type, dict[str, Any]]] = {}


def _targets() -> list[Target]:
    from .processor import ProcessorMetricsBufferTarget
    from .producer import ConfluentProducerTarget

    return [ProcessorMetricsBufferTarget(), ConfluentProducerTarget()]


def arroyo_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("sentry-arroyo")
    except Exception:
        return None


def _inspect(target: Target) -> tuple[type | None, Shape | str]:
    try:
        cls = target.locate()
    except Exception as e:
        return None, f"cannot be imported: {type(e).__name__}: {e}"
    patched = _patched.get(target.name)
    originals = patched[1] if patched and patched[0] is cls else {}
    try:
        return cls, target.detect(cls, {**cls.__dict__, **originals})
    except Exception as e:
        return cls, f"could not be inspected: {type(e).__name__}: {e}"


def install() -> list[str]:
    """Patch every supported target of the installed arroyo; return the dotted names patched.

    Idempotent and thread-safe. Never raises because of what arroyo looks like: a target whose shape
    is unknown is left alone with a warning. ``ARROYO_METRICS_BUFFER=off`` in the environment turns
    it into a no-op.
    """
    with _lock:
        if _patched:
            return list(_patched)
        if os.environ.get(SWITCH, "").strip().lower() == "off":
            logger.info(
                "arroyo_metrics_buffer %s: switched off by %s=off; nothing patched", __version__, SWITCH
            )
            return []
        try:
            importlib.import_module("arroyo")
        except ImportError:
            logger.info("arroyo_metrics_buffer %s: arroyo is not installed; nothing to patch", __version__)
            return []
        version = arroyo_version() or "(unknown version)"
        for target in _targets():
            cls, shape = _inspect(target)
            if isinstance(shape, str):
                logger.warning(
                    "arroyo_metrics_buffer %s: %s in arroyo %s %s; left unpatched",
                    __version__,
                    target.name,
                    version,
                    shape,
                )
                continue
            if cls is None or not shape.needs_patch:
                logger.debug("%s in arroyo %s: %s; nothing to patch", target.name, version, shape.description)
                continue
            originals: dict[str, Any] = {}
            try:
                for attr, value in target.replacements(cls, shape).items():
                    originals[attr] = cls.__dict__[attr]
                    setattr(cls, attr, value)
            except Exception:
                logger.warning("arroyo_metrics_buffer: could not patch %s", target.name, exc_info=True)
                for attr, value in originals.items():
                    setattr(cls, attr, value)
                continue
            _patched[target.name] = (cls, originals)
        names = list(_patched)
        logger.info(
            "arroyo_metrics_buffer %s: patched arroyo %s: %s",
            __version__,
            version,
            ", ".join(names) if names else "nothing",
        )
        return names


def uninstall() -> None:
    """Put arroyo's original functions back (by identity). Instances created while installed keep
    their native buffers and keep working."""
    with _lock:
        for cls, originals in _patched.values():
            for attr, value in originals.items():
                setattr(cls, attr, value)
        if _patched:
            logger.info("arroyo_metrics_buffer: uninstalled from %s", ", ".join(_patched))
        _patched.clear()


def installed() -> list[str]:
    """The dotted names of the targets patched now."""
    with _lock:
        return list(_patched)


def status() -> list[TargetStatus]:
    """Each target: its detected shape, and whether it is patched now / would be by install()."""
    with _lock:
        patched = dict(_patched)
        inspected = [(target, *_inspect(target)) for target in _targets()]
    out = []
    for target, cls, shape in inspected:
        if isinstance(shape, str):
            out.append(TargetStatus(target.name, None, False, shape))
        else:
            now = target.name in patched and cls is patched[target.name][0]
            out.append(TargetStatus(target.name, shape, now))
    return out
