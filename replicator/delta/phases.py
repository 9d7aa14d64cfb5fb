"""When each phase of a pass ended, for a DEBUG line per pass (where a pass's time goes).

Phases are noted from any worker thread (``note``); ``summary`` lists them in the order they
ended, as seconds since the pass began, so overlapping work (a table's key walk beside its
changed rows) shows as interleaved marks.
"""

from __future__ import annotations

import threading
import time


class Phases:
    def __init__(self) -> None:
        self.began = time.monotonic()
        self._marks: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def note(self, what: str) -> None:
        with self._lock:
            self._marks.append((time.monotonic() - self.began, what))

    def summary(self) -> str:
        with self._lock:
            return ", ".join(f"{what} {at:.3f}" for at, what in self._marks)
