"""install() / uninstall(): make arroyo's metrics buffering use the native MetricsBuffer.

Each patched arroyo class keeps its identity; a few of its attributes are replaced in place (and put
back by identity on uninstall, where they are still ours). An instance created while installed
gets its own native buffer, and its hot methods (those its class has from arroyo, not from a
subclass's override) become that buffer's bound methods on the instance, so arroyo's calls go
straight to native code. Those instances keep working after uninstall(). An instance created before
install() is adopted on first use: its pending dict values move into a new native buffer.

A process may fork at any moment, even while another thread is inside install() or uninstall():
the child gets a usable lock and a consistent state (a target half patched or half restored at the
fork is put back as it was before that step).
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
from .targets.base import usable_after_fork

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
    #: ``ARROYO_METRICS_BUFFER=off``: install() patches nothing.
    switched_off: bool = False

    @property
    def would_patch(self) -> bool:
        return not self.switched_off and self.shape is not None and self.shape.needs_patch


@dataclass
class Patch:
    """A patched target: its class, arroyo's attributes, and ours that replaced them."""

    cls: type
    originals: dict[str, Any]
    ours: dict[str, Any]


@dataclass
class Step:
    """A target being patched ("install") or restored ("uninstall"): each attribute set so far,
    with the value it had before. Done once `_patched` says so (it has the target, or not)."""

    kind: str
    name: str
    cls: type
    before: list[tuple[str, Any]]

    def set(self, attr: str, value: Any) -> None:
        self.before.append((attr, self.cls.__dict__[attr]))
        setattr(self.cls, attr, value)

    def undo(self) -> None:
        for attr, value in reversed(self.before):
            setattr(self.cls, attr, value)


_lock = threading.RLock()
_patched: dict[str, Patch] = {}
#: install() ran to its end (since the last uninstall()).
_complete = False
_step: Step | None = None


def _after_fork_in_child() -> None:
    global _lock, _step
    lock = usable_after_fork(_lock)
    if lock is _lock:
        return  # nobody held it, or this thread did and carries on
    _lock = lock
    step, _step = _step, None
    if step is not None and (step.name in _patched) != (step.kind == "install"):
        step.undo()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def switched_off() -> bool:
    """Whether ``ARROYO_METRICS_BUFFER=off`` makes install() a no-op."""
    return os.environ.get(SWITCH, "").strip().lower() == "off"


def arroyo_version() -> str | None:
    """The installed sentry-arroyo's version. Read from its ``.dist-info`` beside the ``arroyo``
    package, as install() runs at start-up: ``importlib.metadata`` imports some forty modules
    (email, zipfile, ...) and took 27-31 ms on 3.11, 90-180 ms on 3.14. It is the fallback when
    that folder is not found (an installation of another kind)."""
    try:
        arroyo = importlib.import_module("arroyo")
        root = os.path.dirname(os.path.dirname(arroyo.__file__ or ""))
        found = [
            e.path
            for e in os.scandir(root)
            if e.name.lower().startswith("sentry_arroyo-") and e.name.endswith(".dist-info")
        ]
        if len(found) == 1:
            with open(os.path.join(found[0], "METADATA"), encoding="utf-8") as metadata:
                for line in metadata:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break  # the end of the headers
    except Exception:
        pass
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
    patch = _patched.get(target.name)
    originals = patch.originals if patch and patch.cls is cls else {}
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
    global _complete
    with _lock:
        if _patched and _complete:
            return list(_patched)
        if switched_off():
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
            if target.name not in _patched:
                _patch_target(target, version)
        names = list(_patched)
        _complete = True
        logger.info(
            "arroyo_metrics_buffer %s: patched arroyo %s: %s",
            __version__,
            version,
            ", ".join(names) if names else "nothing",
        )
        return names


def _patch_target(target: Target, version: str) -> None:
    """Patch one target if its shape is known and needs it (else say why not); under _lock."""
    global _step
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
    _step = step = Step("install", target.name, cls, [])
    try:
        ours = target.replacements(cls, shape)
        for attr, value in ours.items():
            step.set(attr, value)
    except Exception:
        logger.warning("arroyo_metrics_buffer: could not patch %s", target.name, exc_info=True)
        step.undo()
    else:
        _patched[target.name] = Patch(cls, dict(step.before), ours)
    _step = None


def uninstall() -> None:
    """Put arroyo's original functions back (by identity) where ours are still in place; an
    attribute that another library replaced after install() is left to it, with a warning.
    Instances created while installed keep their native buffers and keep working."""
    global _complete, _step
    with _lock:
        _complete = False
        names = list(_patched)
        for name in names:
            patch = _patched[name]
            _step = step = Step("uninstall", name, patch.cls, [])
            for attr, original in patch.originals.items():
                if patch.cls.__dict__.get(attr) is patch.ours[attr]:
                    step.set(attr, original)
                else:
                    logger.warning(
                        "arroyo_metrics_buffer: %s.%s was replaced after install() by someone else; "
                        "uninstall() leaves it as it is (arroyo's original is not put back)",
                        name,
                        attr,
                    )
            del _patched[name]
            _step = None
        if names:
            logger.info("arroyo_metrics_buffer: uninstalled from %s", ", ".join(names))


def installed() -> list[str]:
    """The dotted names of the targets patched now."""
    with _lock:
        return list(_patched)


def status() -> list[TargetStatus]:
    """Each target: its detected shape, and whether it is patched now / would be by install()."""
    off = switched_off()
    with _lock:
        patched = {name: patch.cls for name, patch in _patched.items()}
        inspected = [(target, *_inspect(target)) for target in all_targets()]
    out = []
    for target, cls, shape in inspected:
        if isinstance(shape, str):
            out.append(TargetStatus(target.name, None, False, shape, switched_off=off))
        else:
            now = target.name in patched and patched[target.name] is cls
            out.append(TargetStatus(target.name, shape, now, switched_off=off))
    return out
