"""``import arroyo_metrics_buffer.auto`` in a start-up module patches arroyo (see ``install()``)."""

from ._patch import install

install()
