"""A progress bar on stderr: rich's when it is installed, else a one-line one (plain lines off a TTY)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._tty = sys.stderr.isatty()
        self._run = ""
        self._last_label = ""
        self._last_draw = 0.0
        self._rich: Any = None
        self._task: Any = None
        if enabled and self._tty:
            try:
                from rich.progress import (  # type: ignore[import-not-found,unused-ignore]
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
                from rich.progress import Progress as RichProgress  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                pass
            else:
                self._rich = RichProgress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True,
                )
                self._rich.start()
                self._task = self._rich.add_task("", total=1)

    def run(self, index: int, total: int) -> None:
        self._run = f"[{min(index + 1, total)}/{total}] "

    def update(self, label: str, done: float, total: float) -> None:
        if not self.enabled:
            return
        text = self._run + label
        if self._rich is not None:
            self._rich.update(self._task, description=text, completed=done, total=max(total, 1))
            return
        if not self._tty:
            if label != self._last_label:
                print(text, file=sys.stderr, flush=True)
                self._last_label = label
            return
        now = time.monotonic()
        if label == self._last_label and now - self._last_draw < 0.1 and done < total:
            return
        self._last_label, self._last_draw = label, now
        width = 30
        filled = int(width * min(1.0, done / total)) if total else width
        bar = "#" * filled + "-" * (width - filled)
        count = f"{done:.0f}/{total:.0f}" if total >= 2 else f"{100 * done / total:.0f}%" if total else ""
        sys.stderr.write(f"\r\x1b[K{text} [{bar}] {count}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled and self._tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
