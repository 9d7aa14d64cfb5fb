"""One delta pass over every selected table, all read in one snapshot of the source.

Order of a pass, and why:

1. Select and check the tables (the catalog is read afresh, so a table added to the source
   and matched by the filter joins at the next pass).
2. Classify each table from the destination's state: *new* (no watermark, or no snapshot
   state for it) gets a full snapshot; *resumed* (a snapshot that an earlier run left
   unfinished) finishes it; *ready* gets a delta.
3. update-key readings, then the horizon (both before the snapshot: see ``updatekey``).
4. Open the pass snapshot (REPEATABLE READ, exported so workers share it) and note its xmin.
5. New tables: store their watermark first (its own commit), then snapshot them in this
   snapshot via ``run_snapshot``. If the run dies midway, the next one resumes the snapshot
   under a later snapshot and keeps this older watermark, which is the safe one.
6. Resumed and ready tables, in parallel: changed rows + watermark in one destination
   transaction per table (``changes``); then deletes, the key ranges of all tables in
   parallel (``deletes``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator import state
from replicator.catalog import Catalog, load_catalog
from replicator.config.extractor import SnapshotConfig
from replicator.connect import connect
from replicator.delta import changes, deletes, updatekey
from replicator.delta.changes import PassSnapshot
from replicator.delta.tables import DeltaTable, check_destination_key, select_delta_tables
from replicator.snapshot.workers import SNAPSHOT_SESSION, Session, run_parallel, session_settings
from replicator.destinations import postgres as dest
from replicator.destinations.compat import check_destination_tables
from replicator.errors import DestinationError
from replicator.job import Job
from replicator.progress import LOG_EVERY_S, make_progress
from replicator.snapshot.runner import SnapshotScope, run_snapshot
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


@dataclass
class PassSummary:
    number: int
    results: list[TableResult] = field(default_factory=list)
    snapshot_rows: int = 0
    seconds: float = 0.0

    @property
    def upserted(self) -> int:
        return sum(r.upserted for r in self.results)

    @property
    def deleted(self) -> int:
        return sum(r.deleted for r in self.results)


@dataclass
class RunContext:
    """What outlives one pass: the job, the locked destination connection, what was said once."""

    job: Job
    control: psycopg.Connection[Any]
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM/SIGINT
    warned_hidden: bool = False


@dataclass(frozen=True)
class _Work:
    """One table's changes in a pass."""

    table: DeltaTable
    target: dest.DestTable
    columns: tuple[str, ...]
    binary: bool
    where: Any  # sql.Composable | None (None: every row)
    mark: state.Watermark
    result: TableResult


APP = "replicator/delta-snapshot"

SOURCE_SETTINGS = {**SNAPSHOT_SESSION, **deletes.SESSION_SETTINGS}


def run_pass(ctx: RunContext, number: int, fresh: bool = False) -> PassSummary:
    job, control = ctx.job, ctx.control
    started = time.monotonic()
    summary = PassSummary(number)
    src = connect(job.source.value, "source", APP, autocommit=True)
    try:
        session_settings(src, SOURCE_SETTINGS)
        with src.transaction():
            catalog = load_catalog(src)
        tables = select_delta_tables(src, job, catalog)
        if fresh:
            # Every table is emptied and copied again: all must fit before any state is forgotten.
            check_destination_tables(control, [t.st for t in tables])
            with control.transaction():
                state.forget_watermarks(control, job.job_id, [t.ident for t in tables])
                state.forget_snapshot(control, job.job_id, [t.ident for t in tables])
        new, resumed, ready = _classify(control, job.job_id, tables)
        is_new = {t.ident for t in new}
        snapshotted = is_new | {t.ident for t in resumed}
        # A snapshot reuses an existing destination table as is, and builds keys only on
        # tables it creates (when they are complete): check what can be checked up front.
        for t in ready + [t for t in new if dest.describe_table(control, *t.ident) is not None]:
            check_destination_key(control, t)
        marks = state.load_watermarks(control, job.job_id)
        readings = {t.ident: updatekey.read_maxima(src, t.st) for t in tables if t.kind == "update-key"}
        horizon = updatekey.read_horizon(src) if readings else None
        _warn_horizon(ctx, horizon)

        snapshot = _open_snapshot(src)
        log.info(
            "pass %d: %d table(s): %d to snapshot, %d to finish, %d by delta",
            number, len(tables), len(new), len(resumed), len(ready),
        )  # fmt: skip
        upcoming = {
            t.ident: changes.next_watermark(
                t, None if t.ident in is_new else marks.get(t.ident), snapshot, readings.get(t.ident), horizon
            )
            for t in tables
        }
        if new:
            with control.transaction():
                for t in new:
                    state.save_watermark(control, job.job_id, *t.ident, upcoming[t.ident])
        if new or resumed:
            summary.snapshot_rows = _snapshot(job, control, snapshot, new + resumed, ctx.stop)
            for t in resumed:
                check_destination_key(control, t)
        soft = job.destination.value.deletes == "soft"
        if soft:
            for t in tables:
                _soft_delete_column(control, t)

        works = []
        for t in tables:
            result = TableResult(t.display, t.kind, snapshotted=t.ident in snapshotted)
            summary.results.append(result)
            if t.ident not in is_new:
                where = changes.changed_rows(t, marks.get(t.ident), snapshot)
                works.append(_work(control, catalog, t, where, upcoming[t.ident], result))
        _apply_all(job, src, snapshot, works, soft)
        src.execute("COMMIT")
    finally:
        src.close()
    summary.seconds = time.monotonic() - started
    return summary


class _Ticker:
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


def _apply_all(
    job: Job, src: psycopg.Connection[Any], snapshot: PassSnapshot, works: list[_Work], soft: bool
) -> None:
    """Changed rows of every table in parallel; then deletes, key range by key range, in parallel.

    Deletes come second so that, for a range without deletes, both sides already hold the
    same keys and the digests agree.
    """
    cfg = job.extractor.value.delta_snapshot
    merging = _Ticker("merging changes")
    run_parallel(
        job, snapshot.name, deletes.SESSION_SETTINGS, works, cfg.threads,
        lambda w: f"merging changed rows of {w.table.display}",
        lambda session, w: _apply(job.job_id, session, w, soft, merging), APP,
    )  # fmt: skip
    compared = {
        w.table.ident: deletes.TableDeletes(
            w.table, w.target, deletes.key_order(src, w.table), w.binary, soft
        )
        for w in works
        if w.table.replicate_deletes
    }
    ranges = [r for d in compared.values() for r in deletes.key_ranges(src, d, cfg.min_job_size_rows)]
    comparing = _Ticker("replicate-deletes")

    def compare(session: Session, r: deletes.KeyRange) -> None:
        deletes.compare_range(*session.connections(), r)
        comparing.add(ranges=1, total_ranges=len(ranges))

    run_parallel(
        job, snapshot.name, deletes.SESSION_SETTINGS, ranges, cfg.threads,
        lambda r: f"comparing keys of {r.deletes.table.display}", compare, APP,
    )  # fmt: skip
    for w in works:
        if w.table.ident in compared:
            w.result.deleted = compared[w.table.ident].removed
        log.info(
            "%s: %s row(s) upserted%s, %s deleted (%s)",
            w.table.display,
            f"{w.result.upserted:,}",
            " (read every row)" if w.result.full_read else "",
            f"{w.result.deleted:,}" if w.table.replicate_deletes else "none",
            w.table.kind,
        )


def _classify(
    control: psycopg.Connection[Any], job_id: str, tables: list[DeltaTable]
) -> tuple[list[DeltaTable], list[DeltaTable], list[DeltaTable]]:
    marks = state.load_watermarks(control, job_id)
    snaps = state.load_snapshot_state(control, job_id)
    new, resumed, ready = [], [], []
    stale = []
    for t in tables:
        snap = snaps.get(t.ident)
        if t.ident not in marks or snap is None:
            # No watermark: any snapshot state was left by another mode, at an unknown instant.
            if snap is not None:
                stale.append(t.ident)
            new.append(t)
        elif not snap.done:
            resumed.append(t)
        else:
            ready.append(t)
    if stale:
        log.info(
            "copying again, since no delta watermark says when they were copied: %s",
            ", ".join(".".join(s) for s in stale),
        )
        with control.transaction():
            state.forget_snapshot(control, job_id, stale)
    return new, resumed, ready


def _warn_horizon(ctx: RunContext, horizon: updatekey.Horizon | None) -> None:
    if horizon is None:
        return
    if horizon.hidden_sessions and not ctx.warned_hidden:
        ctx.warned_hidden = True
        log.warning(
            "%d session(s) of other roles hide when their transactions began (grant pg_read_all_stats, "
            "or pg_monitor which includes it, to the source user): update-key tables then cannot wait "
            "for such a transaction, and a row it commits late with an older update key could be missed",
            horizon.hidden_sessions,
        )
    if horizon.prepared:
        log.info(
            "%d prepared transaction(s) open at the source: update-key watermarks wait for them",
            horizon.prepared,
        )


def _open_snapshot(src: psycopg.Connection[Any]) -> PassSnapshot:
    src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    row = src.execute(
        "SELECT pg_export_snapshot(), pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text "
        "FROM pg_current_snapshot() s"
    ).fetchone()
    assert row is not None
    return PassSnapshot(str(row[0]), int(row[1]), int(row[2]))


def _snapshot(
    job: Job,
    control: psycopg.Connection[Any],
    snapshot: PassSnapshot,
    tables: list[DeltaTable],
    stop: threading.Event,
) -> int:
    cfg = job.extractor.value.delta_snapshot
    settings = SnapshotConfig(
        threads=cfg.threads,
        fetch_size_rows=cfg.fetch_size_rows,
        min_job_size_rows=cfg.min_job_size_rows,
        max_jobs_per_chunk=cfg.max_jobs_per_chunk,
    )
    bar = make_progress("delta-snapshot: first pass", len(tables), job.progress)
    try:
        result = run_snapshot(
            job,
            snapshot.name,
            progress=bar,
            stop=stop,
            scope=SnapshotScope([t.st for t in tables], settings, control),
        )
    finally:
        bar.close()
    return result.rows


def _soft_delete_column(control: psycopg.Connection[Any], t: DeltaTable) -> None:
    target = dest.describe_table(control, *t.ident)
    if target is not None and dest.SOFT_DELETE_COLUMN not in target.columns:
        with control.transaction():
            dest.ensure_soft_delete_column(control, target)


def _work(
    control: psycopg.Connection[Any],
    catalog: Catalog,
    t: DeltaTable,
    where: Any,
    mark: state.Watermark,
    result: TableResult,
) -> _Work:
    target = dest.describe_table(control, *t.ident)
    if target is None:
        raise DestinationError(
            f"destination table {t.display} disappeared; run with --fresh to copy it again"
        )
    binary = binary_safe(catalog, t.st.columns) and all(
        target.columns[c.name].type_sql == c.type_sql for c in t.st.columns
    )
    result.full_read = where is None
    return _Work(t, target, dest.copy_columns(t.st, target), binary, where, mark, result)


def _apply(job_id: str, session: Session, w: _Work, soft: bool, ticker: _Ticker) -> None:
    src, dst = session.connections()
    w.result.upserted = changes.apply_changes(
        src, dst, job_id, w.table, w.target, w.columns, w.binary, w.where, w.mark, soft,
        lambda rows, nbytes: ticker.add(rows=rows),
    )  # fmt: skip
