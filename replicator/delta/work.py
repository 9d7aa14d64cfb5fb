"""The tables' work in a pass, on the worker pool: changed rows, deletes, and one table's failure
kept to that table.

Each table with a key the walk can compare (``walk``) is two items: its *walk* (both key sets
in key order -> the gone keys) and its *changes* (changed rows merged, then the gone keys
deleted, then the watermark, in one destination transaction). Walks are queued first: a
changes item waits for its table's walk, and every walk has been taken by a worker by the time
any changes item is, so with any number of threads nothing waits for an item nobody runs.
Other tables' deletes go by key ranges (``deletes``) once every table's changes are in.

A table whose work fails (after the retries ``replicator.retry`` allows) fails alone: its
transaction rolls back (the table stays as the last pass left it, watermark included), the
error is logged with the table's name, and the other tables go on. The pass then reports the
failed tables (``PassSummary.failed``), and ``loop`` says what that means for the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog
from replicator.delta import buckets, changes, deletes, walk
from replicator.delta.phases import Phases
from replicator.delta.tables import DeltaTable
from replicator.destinations.base import ColumnChanges, DestinationSession, DestTable, Watermark
from replicator.errors import Interrupted
from replicator.job import Job
from replicator.keyorder import KeyOrder
from replicator.progress import LOG_EVERY_S
from replicator.retry import first_line
from replicator.snapshot.workers import Session, run_parallel
from replicator.typemap import binary_safe

log = logging.getLogger(__name__)


@dataclass
class TableResult:
    table: str
    kind: str
    snapshotted: bool = False
    upserted: int = 0  # rows read past the watermark and merged (changed, or re-checked)
    deleted: int = 0
    full_read: bool = False
    error: BaseException | None = None  # this table's pass failed (the others went on)
    deletes_by: str = ""  # "walk" | "buckets" | "ranges" | ""


@dataclass
class Walk:
    """One table's key walk, and where its changes item waits for the gone keys."""

    table: DeltaTable
    target: DestTable
    order: KeyOrder
    kinds: str
    shift: int | None = None  # compare key buckets first (``buckets``); None: walk every key
    done: threading.Event = field(default_factory=threading.Event)
    gone: walk.GoneKeys | None = None
    error: BaseException | None = None

    def finish(self, gone: walk.GoneKeys | None, error: BaseException | None = None) -> None:
        self.gone, self.error = gone, error
        self.done.set()

    def wait(self, halt: threading.Event) -> walk.GoneKeys:
        while not self.done.wait(0.2):
            if halt.is_set():
                raise Interrupted(f"{self.table.display}: the pass stopped before its keys were compared")
        if self.error is not None:
            raise self.error
        assert self.gone is not None
        return self.gone


@dataclass(frozen=True)
class Changes:
    """One table's changed rows in a pass."""

    table: DeltaTable
    target: DestTable
    columns: tuple[str, ...]
    binary: bool
    where: sql.Composable | None  # None: every row
    mark: Watermark
    result: TableResult
    walk: Walk | None = None
    alter: ColumnChanges | None = None  # the source's columns changed: applied first, same transaction
    catalog: Catalog | None = None  # for ``alter``: the source's types
    skip_deletes: bool = False  # the key's columns changed: deletes wait for the next pass


class Ticker:
    """Says how a long phase is going, every few seconds, from whichever worker is due."""

    def __init__(self, what: str):
        self.what = what
        self.rows = 0
        self.ranges = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, rows: int = 0, ranges: int = 0, total_ranges: int = 0) -> None:
        with self._lock:
            self.rows += rows
            self.ranges += ranges
            now = time.monotonic()
            if now - self._last < LOG_EVERY_S:
                return
            self._last = now
        if total_ranges:
            log.info("%s: %d of %d key ranges compared", self.what, self.ranges, total_ranges)
        else:
            log.info("%s: %s changed rows merged so far", self.what, f"{self.rows:,}")


Item = Walk | Changes | deletes.KeyRange

_DELETES_BY = {
    "walk": ", deletes by one key walk",
    "buckets": ", deletes by key buckets",
    "ranges": ", deletes by key ranges",
}


def apply_all(
    job: Job,
    src: psycopg.Connection[Any],
    control: DestinationSession,
    snapshot_name: str,
    works: list[Changes],
    app: str,
    phases: Phases | None = None,
) -> None:
    """Every table's changes and deletes (see the module docstring); failures land in the results."""
    cfg = job.extractor.value.delta_snapshot
    phases = phases or Phases()
    encodings = (walk.source_text_encoding(src), control.text_key_encoding())
    plan: list[Changes] = []
    for w in works:
        if w.table.replicate_deletes and w.skip_deletes:
            log.info("%s: its key columns changed: deletes are looked for in the next pass", w.table.display)
        elif w.table.replicate_deletes:
            order = deletes.key_order(src, w.table)
            kinds = walk.walk_kinds(w.table, w.target, order, *encodings)
            if kinds is not None:
                shift = (
                    buckets.choose_shift(src, w.table, order) if buckets.bucketable(order, w.target) else None
                )
                w = replace(w, walk=Walk(w.table, w.target, order, kinds, shift))
                w.result.deletes_by = "walk" if shift is None else "buckets"
            else:
                w.result.deletes_by = "ranges"
        plan.append(w)
    works[:] = plan
    by_table = {w.table.ident: w.result for w in works}
    phases.note("walks planned")
    halt = threading.Event()
    merging = Ticker("merging changes")

    def table_of(item: Item) -> DeltaTable:
        return item.deletes.table if isinstance(item, deletes.KeyRange) else item.table

    def failed(item: Item, e: Exception) -> bool:
        if isinstance(e, Interrupted):
            return False
        if isinstance(item, Walk):
            item.finish(None, e)
        result = by_table[table_of(item).ident]
        if result.error is None:
            result.error = e
            log.error(
                "%s: this pass failed for this table, the others go on: %s", result.table, first_line(e)
            )
        return True

    def handle(session: Session, item: Item) -> None:
        if isinstance(item, Walk):
            src_conn, dst = session.connections()
            phases.note(f"{item.table.display}: walk connected")
            began = time.monotonic()
            if item.shift is not None:
                gone = buckets.find_gone(
                    src_conn, dst, item.table, item.target, item.order, item.shift, item.kinds
                )
            else:
                gone = walk.find_gone(src_conn, dst, item.table, item.target, item.order, item.kinds)
            w = gone.walked
            log.debug(
                "%s: keys walked in %.2f s: %s at the source, %s at the destination, %s gone",
                item.table.display, time.monotonic() - began,
                f"{w.source_keys:,}", f"{w.destination_keys:,}", f"{w.gone:,}",
            )  # fmt: skip
            phases.note(f"{item.table.display}: walked")
            item.finish(gone)
        elif isinstance(item, Changes):
            _apply(job.job_id, session, item, merging, halt, phases)
        else:
            deletes.compare_range(*session.connections(), item)
            comparing.add(ranges=1, total_ranges=len(ranges))

    def describe(item: Item) -> str:
        if isinstance(item, Walk):
            return f"comparing the keys of {item.table.display}"
        if isinstance(item, Changes):
            return f"merging changed rows of {item.table.display}"
        return f"comparing keys of {item.deletes.table.display}"

    walks: list[Item] = [w.walk for w in works if w.walk is not None]
    try:
        run_parallel(
            job, snapshot_name, deletes.SESSION_SETTINGS, [*walks, *works], cfg.threads, describe, handle,
            app, halt, failed,
        )  # fmt: skip
        phases.note("workers done")
        by_ranges = {
            w.table.ident: deletes.TableDeletes(w.table, w.target, deletes.key_order(src, w.table), w.binary)
            for w in works
            if w.result.deletes_by == "ranges" and w.result.error is None
        }
        ranges = [r for d in by_ranges.values() for r in deletes.key_ranges(src, d, cfg.min_job_size_rows)]
        comparing = Ticker("replicate-deletes")
        run_parallel(
            job, snapshot_name, deletes.SESSION_SETTINGS, list(ranges), cfg.threads, describe, handle,
            app, halt, failed,
        )  # fmt: skip
        for ident, d in by_ranges.items():
            by_table[ident].deleted = d.removed
    finally:
        for w in works:
            if w.walk is not None and w.walk.gone is not None:
                w.walk.gone.close()
    for w in works:
        if w.result.error is None:
            log.info(
                "%s: %s row(s) upserted%s, %s deleted (%s%s)",
                w.table.display,
                f"{w.result.upserted:,}",
                " (read every row)" if w.result.full_read else "",
                f"{w.result.deleted:,}" if w.table.replicate_deletes else "none",
                w.table.kind,
                _DELETES_BY.get(w.result.deletes_by, ""),
            )


def binary_copy(catalog: Catalog, t: DeltaTable, target: DestTable) -> bool:
    """Whether the rows may move as binary COPY: safe types, and the same types on both sides."""
    types = {name: c.type_sql for name, c in target.columns.items()}
    return binary_safe(catalog, t.st.columns) and all(types.get(c.name) == c.type_sql for c in t.st.columns)


def _apply(
    job_id: str, session: Session, w: Changes, ticker: Ticker, halt: threading.Event, phases: Phases
) -> None:
    src, dst = session.connections()
    phases.note(f"{w.table.display}: changes connected")
    then: Callable[[int], None] | None = None
    if w.walk is not None:
        table_walk = w.walk

        def then(merged: int) -> None:
            phases.note(f"{w.table.display}: merged")
            waited = time.monotonic()
            gone = table_walk.wait(halt)
            deleting = time.monotonic()
            w.result.deleted = walk.remove_gone(dst, w.table, target, table_walk.order, gone, merged)
            phases.note(f"{w.table.display}: deleted")
            log.debug(
                "%s: %s changed row(s) merged in %.2f s, then waited %.2f s for the walk, deleted in %.2f s",
                w.table.display, f"{merged:,}", waited - began, deleting - waited,
                time.monotonic() - deleting,
            )  # fmt: skip

    target, columns, binary = w.target, w.columns, w.binary
    began = time.monotonic()
    with dst.transaction():
        if w.alter:
            assert w.catalog is not None
            if w.walk is not None:
                # The walk reads the destination's keys on another connection: ALTER TABLE would wait
                # for it, and it for this transaction's end.
                w.walk.wait(halt)
            target = dst.alter_columns(w.target, w.catalog, w.alter)
            columns = dst.copy_columns(w.table.st, target)
            binary = binary_copy(w.catalog, w.table, target)
            log.info("%s: following the source's columns: %s", w.table.display, w.alter.describe())
        w.result.upserted = changes.apply_changes(
            src, dst, job_id, w.table, target, columns, binary, w.where, w.mark,
            lambda rows, nbytes: ticker.add(rows=rows), then,
        )  # fmt: skip
    phases.note(f"{w.table.display}: committed")
