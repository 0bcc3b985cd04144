"""One progress reporter for every long step: bytes, rate, ETA and ``N/M`` items.

On a TTY it redraws one line in place; anywhere else (``argo logs``, CI, files) it prints a plain
line every ``SYNESIS_PROGRESS_INTERVAL`` seconds, so logs never fill with carriage returns. When
Argo sets ``ARGO_PROGRESS_FILE`` the item count goes there as ``N/M`` for the UI.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from steps import settings
from steps.fsutil import atomic_write_text, human_bytes

_TTY_REDRAW_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Thread-safe byte and item counter that reports itself; use as a context manager."""

    def __init__(
        self,
        label: str,
        *,
        total_bytes: int,
        total_items: int,
        stream: TextIO | None = None,
        interval: float | None = None,
        progress_file: Path | None = None,
    ) -> None:
        self.label = label
        self.total_bytes = total_bytes
        self.total_items = total_items
        self.done_bytes = 0
        self.done_items = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._enabled = not settings.progress_disabled()
        self._interval = (
            _TTY_REDRAW_SECONDS
            if self._tty
            else (interval if interval is not None else settings.progress_interval_seconds())
        )
        self._progress_file = (
            progress_file if progress_file is not None else settings.progress_file()
        )
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_report = self._start
        self._last_items_written: int | None = None

    def __enter__(self) -> Progress:
        self._write_progress_file()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.finish(ok=exc_type is None)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done_bytes += nbytes
            self._maybe_report()

    def item_done(self, count: int = 1) -> None:
        with self._lock:
            self.done_items += count
            self._write_progress_file()
            self._maybe_report()

    def rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self.done_bytes / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        remaining = max(self.total_bytes - self.done_bytes, 0)
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        percent = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return (
            f"{self.label}: {human_bytes(self.done_bytes)} / {human_bytes(self.total_bytes)} "
            f"({percent:.0f}%) {human_bytes(rate)}/s ETA {eta} "
            f"[{self.done_items}/{self.total_items}]"
        )

    def finish(self, *, ok: bool = True) -> None:
        with self._lock:
            self._write_progress_file()
            if not self._enabled:
                return
            elapsed = format_duration(time.monotonic() - self._start)
            status = "done" if ok else "stopped"
            text = f"{self.line()} {status} in {elapsed}"
            self._stream.write(("\r" + text + "\x1b[K\n") if self._tty else text + "\n")
            self._stream.flush()

    def _maybe_report(self) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if now - self._last_report < self._interval:
            return
        self._last_report = now
        if self._tty:
            self._stream.write("\r" + self.line() + "\x1b[K")
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def _write_progress_file(self) -> None:
        if self._progress_file is None or self._last_items_written == self.done_items:
            return
        atomic_write_text(self._progress_file, f"{self.done_items}/{max(self.total_items, 1)}\n")
        self._last_items_written = self.done_items
