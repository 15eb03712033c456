"""The registry of patched arroyo classes: one module per class, over the leaf module ``base``."""

from __future__ import annotations

from .base import BUFFER_ATTR, Shape, Target
from .processor import ProcessorMetricsBufferTarget
from .producer import ConfluentProducerTarget


def all_targets() -> list[Target]:
    """Every target, in the order install() patches them (fresh objects: targets keep no state)."""
    return [ProcessorMetricsBufferTarget(), ConfluentProducerTarget()]


__all__ = [
    "BUFFER_ATTR",
    "ConfluentProducerTarget",
    "ProcessorMetricsBufferTarget",
    "Shape",
    "Target",
    "all_targets",
]
