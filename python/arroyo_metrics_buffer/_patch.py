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
import threading
from dataclasses import dataclass
from typing import Any

from ._native import __version__
from .targets import Shape, Target, all_targets

logger = logging.getLogger("arroyo_metrics_buffer")

SWITCH = "ARROYO_METRICS_BUFFER"


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


_lock = threading.Lock()
#: name -> (class, {attribute: original value})
_patched: dict[str, tuple[type, dict[str, Any]]] = {}


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
        for target in all_targets():
            _patch_target(target, version)
        names = list(_patched)
        logger.info(
            "arroyo_metrics_buffer %s: patched arroyo %s: %s",
            __version__,
            version,
            ", ".join(names) if names else "nothing",
        )
        return names


def _patch_target(target: Target, version: str) -> None:
    """Patch one target if its shape is known and needs it (else say why not); under _lock."""
    cls, shape = _inspect(target)
    if isinstance(shape, str):
        logger.warning(
            "arroyo_metrics_buffer %s: %s in arroyo %s %s; left unpatched",
            __version__,
            target.name,
            version,
            shape,
        )
        return
    if cls is None or not shape.needs_patch:
        logger.debug("%s in arroyo %s: %s; nothing to patch", target.name, version, shape.description)
        return
    originals: dict[str, Any] = {}
    try:
        for attr, value in target.replacements(cls, shape).items():
            originals[attr] = cls.__dict__[attr]
            setattr(cls, attr, value)
    except Exception:
        logger.warning("arroyo_metrics_buffer: could not patch %s", target.name, exc_info=True)
        for attr, value in originals.items():
            setattr(cls, attr, value)
        return
    _patched[target.name] = (cls, originals)


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
        inspected = [(target, *_inspect(target)) for target in all_targets()]
    out = []
    for target, cls, shape in inspected:
        if isinstance(shape, str):
            out.append(TargetStatus(target.name, None, False, shape))
        else:
            now = target.name in patched and cls is patched[target.name][0]
            out.append(TargetStatus(target.name, shape, now))
    return out
