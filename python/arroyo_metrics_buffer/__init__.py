"""A thread-safe native metrics buffer for arroyo, and the patch that makes arroyo use it.

``import arroyo_metrics_buffer`` never imports arroyo; :func:`install` does.
"""

from ._native import DeliveryCallback, MetricsBuffer, __version__, reset_logging
from ._patch import TargetStatus, install, installed, status, uninstall

__all__ = [
    "DeliveryCallback",
    "MetricsBuffer",
    "TargetStatus",
    "__version__",
    "install",
    "installed",
    "reset_logging",
    "status",
    "uninstall",
]
