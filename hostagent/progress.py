"""Progress of long work on several items at once: redrawn in place on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


class ProgressBoard:
    """One line per item.  On a TTY the block of lines is redrawn in place (at most every ``redraw`` s);
    elsewhere (a log, the journal) an item's line is written when it ends, and while it runs at most
    every ``every`` s, so a log shows that long work is alive without flooding."""

    def __init__(self, stream: TextIO | None = None, every: float = 10.0, tty: bool | None = None,
                 redraw: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every, self.redraw, self.clock = every, redraw, clock
        self.lines: dict[str, str] = {}
        self._logged: dict[str, float] = {}
        self._drawn = 0
        self._last_draw = -1e9
        self._lock = threading.Lock()
        self.broken = False

    def update(self, item: str, text: str, final: bool = False) -> None:
        with self._lock:
            changed = self.lines.get(item) != text
            self.lines[item] = text
            now = self.clock()
            if self.tty:
                if final or now - self._last_draw >= self.redraw:
                    self._draw(now)
            elif changed and (final or now - self._logged.get(item, -1e9) >= self.every):
                self._logged[item] = now
                self._write(f"{item}: {text}\n")

    def _write(self, text: str) -> None:
        """Progress is for people: a log that cannot be written (a full disk) never stops the work it shows."""
        if self.broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.broken = True

    def _draw(self, now: float) -> None:
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        out += "".join(f"\x1b[K{item}: {text}\n" for item, text in self.lines.items())
        self._write(out)
        self._drawn = len(self.lines)
        self._last_draw = now

    def close(self) -> None:
        with self._lock:
            if self.tty and self.lines:
                self._draw(self.clock())


def describe_transfer(done: int | None, total: int | None, elapsed: float) -> str:
    """``45% of 256 MiB, 12.3 MiB/s, 8 s``; just the elapsed time when the total is unknown."""
    if not total or done is None:
        return f"{elapsed:.0f} s"
    rate = done / elapsed / 2**20 if elapsed > 0 else 0.0
    return f"{100 * done / total:.0f}% of {total / 2**20:.0f} MiB, {rate:.1f} MiB/s, {elapsed:.0f} s"
