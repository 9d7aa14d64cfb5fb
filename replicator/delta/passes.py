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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog, load_catalog
from replicator.connect import connect
from replicator.delta import changes, columns, deletes, updatekey
from replicator.delta.changes import PassSnapshot
from replicator.delta.phases import Phases
from replicator.delta.tables import DeltaTable, check_destination_key, select_delta_tables
from replicator.delta.work import Changes, TableResult, apply_all, binary_copy
from replicator.destinations.base import DestinationSession, Watermark
from replicator.errors import DestinationError, Interrupted, ReplicatorError
from replicator.job import Job
from replicator.progress import make_progress
from replicator.retry import first_line
from replicator.snapshot.runner import SnapshotScope, run_snapshot
from replicator.snapshot.workers import SNAPSHOT_SESSION, session_settings

log = logging.getLogger(__name__)


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

    @property
    def failed(self) -> list[TableResult]:
        return [r for r in self.results if r.error is not None]


@dataclass
class RunContext:
    """What outlives one pass: the job, the locked destination connection, what was said once."""

    job: Job
    control: DestinationSession
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM/SIGINT
    warned_hidden: bool = False


APP = "replicator/delta-snapshot"

SOURCE_SETTINGS = {**SNAPSHOT_SESSION, **deletes.SESSION_SETTINGS}




def run_pass(ctx: RunContext, number: int, fresh: bool = False) -> PassSummary:
    job, control = ctx.job, ctx.control
    started = time.monotonic()
    summary = PassSummary(number)
    phases = Phases()
    src = connect(job.source.value, "source", APP, autocommit=True)
    try:
        session_settings(src, SOURCE_SETTINGS)
        phases.note("connected")
        with src.transaction():
            catalog = load_catalog(src)
        phases.note("catalog")
        tables = select_delta_tables(src, job, catalog)
        phases.note("selected")
        if fresh:
            # Every table is emptied and copied again: all must fit before any state is forgotten.
            control.check_can_take([t.st for t in tables])
            with control.transaction():
                control.state.forget_watermarks(job.job_id, [t.ident for t in tables])
                control.state.forget_snapshot(job.job_id, [t.ident for t in tables])
        new, resumed, ready = _classify(control, job.job_id, tables)
        results = {t.ident: TableResult(t.display, t.kind) for t in tables}
        summary.results.extend(results.values())
        marks = control.state.load_watermarks(job.job_id)
        plans = {}
        for t in ready:  # the source's columns as the destination must follow them (delta/columns.py)
            with _own_failure(results[t.ident]):
                plans[t.ident] = _columns_plan(control, t, marks.get(t.ident))
        # A snapshot reuses an existing destination table as is, and builds keys only on
        # tables it creates (when they are complete): check what can be checked up front.
        for t in ready + [t for t in new if control.describe(t.ident) is not None]:
            with _own_failure(results[t.ident]):
                if t.ident not in plans or not plans[t.ident].key_touched:
                    check_destination_key(control, t)
        readings = {}
        for t in tables:
            if t.kind == "update-key" and results[t.ident].error is None:
                with _own_failure(results[t.ident]):
                    readings[t.ident] = updatekey.read_maxima(src, t.st)
        horizon = updatekey.read_horizon(src) if readings else None
        phases.note("checked")
        _warn_horizon(ctx, horizon)
        tables = [t for t in tables if results[t.ident].error is None]
        ok = [t.ident for t in tables]
        new, resumed, ready = ([t for t in ts if t.ident in ok] for ts in (new, resumed, ready))
        is_new = {t.ident for t in new}
        for t in new + resumed:
            results[t.ident].snapshotted = True

        snapshot = _open_snapshot(src)
        phases.note("snapshot")
        log.info(
            "pass %d: %d table(s): %d to snapshot, %d to finish, %d by delta",
            number, len(tables), len(new), len(resumed), len(ready),
        )  # fmt: skip
        upcoming = {}
        for t in tables:
            previous = None if t.ident in is_new else marks.get(t.ident)
            mark = changes.next_watermark(t, previous, snapshot, readings.get(t.ident), horizon)
            upcoming[t.ident] = columns.remember(mark, t)  # the columns this pass copies, for the next
        if new:
            with control.transaction():
                for t in new:
                    control.state.save_watermark(job.job_id, t.ident, upcoming[t.ident])
        if new or resumed:
            try:
                summary.snapshot_rows = _snapshot(job, control, snapshot, new + resumed, ctx.stop)
            except (ReplicatorError, psycopg.Error) as e:
                if isinstance(e, Interrupted):
                    raise
                # The tables it had to copy are named in the error; the others go on.
                for t in new + resumed:
                    results[t.ident].error = e
                log.error("pass %d: the first copy of new tables failed, the others go on: %s", number, e)
            for t in new + resumed:
                with _own_failure(results[t.ident]):
                    if results[t.ident].error is None:
                        check_destination_key(control, t)
                        if t in new and (found := control.describe(t.ident)) is not None:
                            control.ready_for_changes(found)  # for the next pass's changes (and deletes)
        works = []
        for t in tables:
            if t.ident in is_new or results[t.ident].error is not None:
                continue
            with _own_failure(results[t.ident]):
                where = changes.changed_rows(t, marks.get(t.ident), snapshot)
                works.append(
                    _work(control, catalog, t, where, upcoming[t.ident], results[t.ident], plans.get(t.ident))
                )
        phases.note("planned")
        apply_all(job, src, control, snapshot.name, works, APP, phases)
        src.execute("COMMIT")
    finally:
        src.close()
    summary.seconds = time.monotonic() - started
    log.debug("pass %d phases (s since it began): %s", number, phases.summary())
    return summary


def _classify(
    control: DestinationSession, job_id: str, tables: list[DeltaTable]
) -> tuple[list[DeltaTable], list[DeltaTable], list[DeltaTable]]:
    marks = control.state.load_watermarks(job_id)
    snaps = control.state.load_snapshot(job_id)
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
            control.state.forget_snapshot(job_id, stale)
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
    control: DestinationSession,
    snapshot: PassSnapshot,
    tables: list[DeltaTable],
    stop: threading.Event,
) -> int:
    settings = job.extractor.value.delta_snapshot  # its CopySettings: how the first pass copies
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


def _columns_plan(control: DestinationSession, t: DeltaTable, mark: Watermark | None) -> columns.ColumnPlan:
    target = control.describe(t.ident)
    if target is None:
        raise DestinationError(
            f"destination table {t.display} disappeared; run with --fresh to copy it again"
        )
    return columns.plan(t, target, mark)


@contextmanager
def _own_failure(result: TableResult) -> Iterator[None]:
    """A failure here is this table's alone: it is recorded, logged, and the pass goes on."""
    try:
        yield
    except (ReplicatorError, psycopg.Error) as e:
        if isinstance(e, Interrupted):
            raise
        result.error = e
        log.error("%s: this pass failed for this table, the others go on: %s", result.table, first_line(e))


def _work(
    control: DestinationSession,
    catalog: Catalog,
    t: DeltaTable,
    where: sql.Composable | None,
    mark: Watermark,
    result: TableResult,
    plan: columns.ColumnPlan | None,
) -> Changes:
    target = control.describe(t.ident)
    if target is None:
        raise DestinationError(
            f"destination table {t.display} disappeared; run with --fresh to copy it again"
        )
    target = control.ready_for_changes(target)
    if plan is not None and plan.changes:
        if plan.read_every_row:
            where = None
        result.full_read = where is None
        # Columns and types are known once the columns are altered, in the table's transaction.
        return Changes(
            t, target, (), False, where, mark, result,
            alter=plan.changes, catalog=catalog, skip_deletes=plan.key_touched,
        )  # fmt: skip
    result.full_read = where is None
    return Changes(
        t, target, control.copy_columns(t.st, target), binary_copy(catalog, t, target), where, mark, result
    )
