"""Progress of long work: a live display on a terminal, periodic plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import TaskID

log = logging.getLogger("replicator.progress")

LOG_EVERY_S = 5.0


@dataclass
class Totals:
    """What was moved; thread-safe counters shared by every worker."""

    rows: int = 0
    bytes: int = 0
    tables_done: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Progress(Protocol):
    totals: Totals

    def add_table(self, name: str, estimated_rows: int) -> None: ...
    def advance(self, name: str, rows: int, nbytes: int) -> None: ...
    def table_done(self, name: str) -> None: ...
    def close(self) -> None: ...


def make_progress(what: str, tables: int, live: bool | None = None) -> Progress:
    """A live display when ``live`` (default: when stderr is a terminal), else log lines."""
    if live is None:
        live = sys.stderr.isatty()
    return LiveProgress(what, tables) if live else LogProgress(what, tables)


class LogProgress:
    def __init__(self, what: str, tables: int):
        self.what = what
        self.tables = tables
        self.totals = Totals()
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._last_log = time.monotonic()

    def add_table(self, name: str, estimated_rows: int) -> None:
        with self._lock:
            self._rows[name] = 0

    def advance(self, name: str, rows: int, nbytes: int) -> None:
        with self._lock:
            self._rows[name] = self._rows.get(name, 0) + rows
            self.totals.rows += rows
            self.totals.bytes += nbytes
            now = time.monotonic()
            due = now - self._last_log >= LOG_EVERY_S
            if due:
                self._last_log = now
        if due:
            t = self.totals
            log.info(
                "%s: %d/%d tables done, %s rows, %.1f MB, %s rows/s",
                self.what, t.tables_done, self.tables, f"{t.rows:,}", t.bytes / 1e6, f"{t.rows_per_s:,.0f}",
            )

    def table_done(self, name: str) -> None:
        with self._lock:
            self.totals.tables_done += 1
            rows = self._rows.get(name, 0)
        log.info("%s: %s done (%s rows this run)", self.what, name, f"{rows:,}")

    def close(self) -> None:
        pass


class LiveProgress:
    def __init__(self, what: str, tables: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self.what = what
        self.totals = Totals()
        self._lock = threading.Lock()
        self._bar = RichProgress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._overall = self._bar.add_task(f"[bold]{what}: tables", total=tables, rate="")
        self._tasks: dict[str, TaskID] = {}
        self._table_rows: dict[str, int] = {}
        self._bar.start()

    def add_table(self, name: str, estimated_rows: int) -> None:
        with self._lock:
            self._tasks[name] = self._bar.add_task(f"  {name}", total=max(estimated_rows, 1), rate="")

    def advance(self, name: str, rows: int, nbytes: int) -> None:
        with self._lock:
            self.totals.rows += rows
            self.totals.bytes += nbytes
            rate = f"{self.totals.rows_per_s:,.0f} rows/s"
            task = self._tasks.get(name)
            self._table_rows[name] = self._table_rows.get(name, 0) + rows
        if task is not None:
            self._bar.advance(task, rows)
        self._bar.update(self._overall, rate=rate)

    def table_done(self, name: str) -> None:
        with self._lock:
            self.totals.tables_done += 1
            task = self._tasks.get(name)
            done = max(self._table_rows.get(name, 0), 1)
        if task is not None:
            self._bar.update(task, total=done, completed=done, visible=False)
        self._bar.advance(self._overall, 1)

    def close(self) -> None:
        self._bar.stop()
