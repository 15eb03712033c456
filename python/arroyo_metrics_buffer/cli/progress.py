"""Progress lines on stderr that never look like a hang: each says how long the run has taken,
and a line that has not changed says so instead of repeating itself."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(
        self, label: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.started = clock()
        self.last = -1e9
        self.text = ""
        self.changed = self.started

    def show(self, text: str, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.last = now
        if text != self.text:
            self.text, self.changed = text, now
        line = f"{self.label} [{now - self.started:.0f} s]: {text}"
        if not final and now - self.changed >= 2.0:
            line += f"  (unchanged for {now - self.changed:.0f} s; still waiting)"
        if self.tty:
            self.stream.write(f"\r\033[K  {line}" + ("\n" if final else ""))
        else:
            self.stream.write(f"  {line}\n")
        self.stream.flush()
