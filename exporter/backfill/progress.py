"""Backfill's progress on stderr: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TextIO

from .plan import PROG


@dataclass
class _AppProgress:
    total: int
    done: int = 0
    failed: int = 0
    last_print: float = 0.0


@dataclass
class Progress:
    """Days done of days asked, per app, on stderr: a bar on a terminal, plain lines otherwise."""

    stream: TextIO
    apps: dict[str, _AppProgress] = field(default_factory=dict)
    tty: bool = False
    every: float = 5.0
    closed: bool = False
    columns: int | None = None  # the terminal's width (asked when None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, app: str, total: int, done: int) -> None:
        self.apps[app] = _AppProgress(total, done)

    def day(self, app: str, day: date, ok: bool, now: float | None = None) -> None:
        with self._lock:
            p = self.apps[app]
            if ok:
                p.done += 1
            else:
                p.failed += 1
            if self.tty:
                self._bar()
                return
            now = time.monotonic() if now is None else now
            finished = p.done + p.failed >= p.total
            if finished or now - p.last_print >= self.every:
                p.last_print = now
                failed = f", {p.failed} failed" if p.failed else ""
                self.stream.write(
                    f"{PROG}: app {app}: {p.done}/{p.total} days{failed} (last {day.isoformat()})\n"
                )
                self.stream.flush()

    def message(self, text: str) -> None:
        with self._lock:
            bar = self.tty and not self.closed
            if bar:
                self.stream.write("\r\033[K")
            self.stream.write(f"{PROG}: {text}\n")
            if bar:
                self._bar()
            self.stream.flush()

    def _bar(self) -> None:
        done = sum(p.done + p.failed for p in self.apps.values())
        total = sum(p.total for p in self.apps.values()) or 1
        bar = 30
        filled = bar * done // total
        apps = " ".join(f"{a} {p.done}/{p.total}" for a, p in self.apps.items())
        line = f"[{'#' * filled}{'.' * (bar - filled)}] {done}/{total} days  {apps}"
        columns = self.columns or shutil.get_terminal_size().columns
        self.stream.write("\r\033[K" + line[: columns - 1])  # one line, or \r cannot redraw it
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line; later messages are plain lines."""
        if self.tty and not self.closed:
            self.closed = True
            self.stream.write("\n")
            self.stream.flush()
