"""The snapshot engine: one consistent view of the source, copied chunk by chunk in parallel.

A coordinator transaction on the source exports a snapshot (or imports one, in `full` mode,
from the replication slot); every worker imports it, so all chunks of all tables show the
same instant. Each chunk is relayed as ``COPY TO`` -> ``COPY FROM`` and committed at the
destination together with its checkpoint. Keys, indexes and constraints are built when a
table's last chunk lands, foreign keys once every table is in (``schema.py``).

Resuming: chunks already committed are not copied again, but they were read in an earlier
snapshot, and a chunk's range is only meaningful inside one snapshot: an UPDATE moves a row to
another page (a CTID range) or, changing a split key, to another key range, possibly into a
range that was already finished, which the rest of the copy would then never read. So:

- a table with a key that we created: the remaining chunks are merged by key (never appended:
  no row twice), and every finished range is read again for the rows written since the snapshot
  it was copied in (``xmin`` in the window from that snapshot's ``xmin`` to this one's ``xmax``,
  see ``delta/xmin.py``), merged by key too. Every row of the source, as of the resuming run's
  snapshot, then reaches the destination with its values at that instant. Rows deleted (or
  whose key changed) at the source between the two runs may remain; the `full` mode's stream
  removes them, or use --fresh;
- any other table (no key, or an existing destination table we did not create): copied again
  from the start, emptied first.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator import metrics
from replicator.catalog import Catalog, load_catalog
from replicator.config.extractor import CopySettings
from replicator.connect import connect
from replicator.delta import xmin
from replicator.destinations import open_destination
from replicator.destinations.base import ChunkPlan, ChunkState, DestinationSession, DestTable, TableState
from replicator.errors import DestinationError, Interrupted
from replicator.filters import SelectedTable, check_conditions, select_tables
from replicator.job import Job
from replicator.objectplan import PlannedObjects
from replicator.progress import Progress, make_progress
from replicator.relay import relay_copy
from replicator.snapshot import schema
from replicator.snapshot.plan import copy_out_sql, plan_table
from replicator.snapshot.workers import (
    SNAPSHOT_SESSION,
    Session,
    begin_in_snapshot,
    run_parallel,
    session_settings,
)
from replicator.tableobjects import TableObjects
from replicator.typemap import binary_safe

log = logging.getLogger(__name__)

APP = "replicator/snapshot"


@dataclass
class SnapshotSummary:
    tables: int = 0
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    keyless: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class TableWork:
    """A table still to copy in this run, and how."""

    st: SelectedTable
    table: TableState
    dest: DestTable
    columns: tuple[str, ...]
    binary: bool
    merge: bool
    remaining: int
    objects: TableObjects
    lock: threading.Lock = field(default_factory=threading.Lock)
    rereads: list[ChunkState] = field(default_factory=list)  # finished in other snapshots
    meter: metrics.TableMeter | None = None  # set when its copy starts


@dataclass(frozen=True)
class ChunkJob:
    work: TableWork
    chunk: ChunkPlan
    # A chunk finished by an earlier run: read again for rows written since ``since`` (the xmin of
    # its snapshot; None: unknown, the whole range), merged by key, not marked done again.
    reread: bool = False
    since: int | None = None


@dataclass(frozen=True)
class SnapshotScope:
    """Part of a larger run: copy exactly ``tables`` with ``settings``, under the caller's job lock.

    delta-snapshot uses it for the first pass of its tables: it has selected them already (with
    its own keys and split keys), holds the job lock on ``control`` (a destination session) and
    pins the view with its own exported snapshot.
    """

    tables: list[SelectedTable]
    settings: CopySettings
    control: DestinationSession


def run_snapshot(
    job: Job,
    imported_snapshot: str | None = None,
    progress: Progress | None = None,
    only: Collection[tuple[str, str]] | None = None,
    stop: threading.Event | None = None,
    scope: SnapshotScope | None = None,
) -> SnapshotSummary:
    """Copy every selected table (or the ``only`` ones among them).

    ``imported_snapshot`` pins the view: the `full` mode passes the one its new slot exported.
    When ``stop`` is set, workers finish their chunk and the run raises ``Interrupted``.
    With a ``scope``, copy exactly its tables: selection, ``--fresh``, the state schema and
    the job lock are then the caller's business.
    """
    src_cfg = job.source.value
    exporter = connect(src_cfg, "source", APP, autocommit=True)
    control = scope.control if scope else open_destination(job.destination.value).open_session(APP)
    try:
        snapshot_name = _open_snapshot(exporter, imported_snapshot)
        view = _snapshot_view(exporter)
        catalog = load_catalog(exporter)
        ours: set[tuple[str, str]] = set()  # tables created by an earlier run, whatever --fresh forgets
        if scope is None:
            every = select_tables(catalog, job.filter, job.extractor, src_cfg.database, "snapshot")
            selected = every if only is None else [s for s in every if (s.table.schema, s.table.name) in only]
            check_conditions(exporter, selected)
            # Before the first write, state included: every table this run may empty must fit
            # (with --fresh all of them, before any progress is forgotten).
            control.check_can_take(
                selected if job.fresh else unfinished_tables(control, job.job_id, selected)
            )
            control.state.ensure()
            control.state.lock_job(job.job_id, "snapshot")
            if job.fresh:
                ours = {k for k, ts in control.state.load_snapshot(job.job_id).items() if ts.created_by_us}
                with control.transaction():
                    control.state.forget_snapshot(
                        job.job_id, [(s.table.schema, s.table.name) for s in selected]
                    )
        else:
            every = selected = scope.tables
        planned = schema.plan(job, exporter, every, [(s.table.schema, s.table.name) for s in selected])
        settings = scope.settings if scope else job.extractor.value.snapshot
        run_id = uuid.uuid4().hex
        summary = SnapshotSummary(tables=len(selected))
        works = _prepare(
            exporter, control, catalog, selected, run_id, summary, job.job_id, settings, planned, ours
        )
        summary.keyless = [s.display for s in selected if not s.key]
        if summary.keyless:
            log.warning(
                "no primary key and no row-identifier-key (copied anyway; realtime and delta-snapshot "
                "need one): %s",
                ", ".join(summary.keyless),
            )
        if summary.skipped:
            log.info(
                "already copied by an earlier run (use --fresh to copy again): %s", ", ".join(summary.skipped)
            )
        bar = progress or make_progress("snapshot", len(works), job.progress)
        try:
            _copy_all(
                job, works, snapshot_name, run_id, view, bar, settings.threads, stop or threading.Event()
            )
        finally:
            if progress is None:
                bar.close()
        schema.finish(job, control, exporter, every, planned, settings.threads)
        summary.rows, summary.bytes, summary.seconds = bar.totals.rows, bar.totals.bytes, bar.totals.seconds
        return summary
    finally:
        if scope is None:
            control.close()
        exporter.close()


def unfinished_tables(
    control: DestinationSession, job_id: str, tables: list[SelectedTable]
) -> list[SelectedTable]:
    """The tables whose snapshot is not done according to the destination's state (all, without state)."""
    if not control.state.present():
        return tables
    done = {key for key, ts in control.state.load_snapshot(job_id).items() if ts.done}
    return [t for t in tables if (t.table.schema, t.table.name) not in done]


@dataclass(frozen=True)
class SnapshotView:
    """The snapshot's ``xmin`` and ``xmax`` (64-bit transaction IDs)."""

    xmin: int
    xmax: int


def _snapshot_view(conn: psycopg.Connection[Any]) -> SnapshotView:
    """Of the snapshot ``conn``'s transaction reads in."""
    query = (
        "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() s"
        if conn.info.server_version >= 130000
        else "SELECT txid_snapshot_xmin(s)::text, txid_snapshot_xmax(s)::text FROM txid_current_snapshot() s"
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return SnapshotView(int(row[0]), int(row[1]))


def _open_snapshot(conn: psycopg.Connection[Any], imported: str | None) -> str:
    session_settings(conn, SNAPSHOT_SESSION)
    begin_in_snapshot(conn, imported)
    if imported:
        return imported
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


def _prepare(
    exporter: psycopg.Connection[Any],
    control: DestinationSession,
    catalog: Catalog,
    selected: list[SelectedTable],
    run_id: str,
    summary: SnapshotSummary,
    job_id: str,
    cfg: CopySettings,
    planned: dict[tuple[str, str], PlannedObjects],
    ours: set[tuple[str, str]],
) -> list[TableWork]:
    """Plan new tables (creating or emptying them at the destination) and pick up unfinished ones.

    ``ours``: tables an earlier run created (its state forgotten by --fresh): emptied, they are
    still ours to build keys, indexes and constraints on."""
    existing = control.state.load_snapshot(job_id)
    todo: list[SelectedTable] = []
    plans: dict[tuple[str, str], list[ChunkPlan]] = {}
    for st in selected:
        ts = existing.get((st.table.schema, st.table.name))
        if ts is not None and control.describe((st.table.schema, st.table.name)) is None:
            # Dropped since an earlier run (as an incompatibility message advises): copy it from scratch.
            log.info(
                "%s: the destination table is gone since an earlier run; creating and copying it again",
                st.display,
            )
            with control.transaction():
                control.state.forget_snapshot(job_id, [(st.table.schema, st.table.name)])
            existing.pop((st.table.schema, st.table.name))
            ts = None
        if ts is not None and not ts.done and ts.done_before(run_id) and not (st.key and ts.created_by_us):
            # Finished ranges were read in another snapshot and cannot be trusted (module
            # docstring); without a key to merge by, only a new copy is exact.
            log.warning(
                "%s: resuming under a new snapshot, and the table %s: copying it again from the start",
                st.display, "has no key" if not st.key else "existed before (no key of ours to merge by)",
            )
            with control.transaction():
                control.state.forget_snapshot(job_id, [(st.table.schema, st.table.name)])
            existing.pop((st.table.schema, st.table.name))
            ts = None
        if ts is not None and ts.done:
            summary.skipped.append(st.display)
        else:
            todo.append(st)
            if ts is None:
                # Plan every new table before creating any, so a bad split key stops the run cleanly.
                plans[(st.table.schema, st.table.name)] = plan_table(exporter, st, cfg)
    # Before the first table is created or emptied: one that cannot take its rows stops them all.
    # (Tables finished earlier are not touched, so not checked: a column added at the source since
    # then is the stream's to add.)
    control.check_can_take(todo)
    schema.refuse_triggers(control, todo)
    _create_or_empty(control, catalog, [st for st in todo if _key(st) in plans], plans, job_id, planned, ours)
    existing.update(control.state.load_snapshot(job_id))
    works = []
    for st in todo:
        key = _key(st)
        ts = existing[key]
        found = control.describe(key)
        if found is None:
            raise DestinationError(
                f"destination table {st.display} disappeared since an earlier run; run with --fresh"
            )
        columns = control.copy_columns(st, found)
        binary = binary_safe(catalog, st.columns) and (
            ts.created_by_us or all(found.columns[c.name].type_sql == c.type_sql for c in st.columns)
        )
        # Merging needs the key's unique index, which exists only on tables we created.
        merge = bool(st.key) and ts.done_in_other_runs(run_id) and ts.created_by_us
        objects = planned[key].objects
        if merge and ts.created_by_us and not ts.key_built:
            log.info(
                "%s: resuming under a new snapshot; building its key first so the rest merges by key",
                st.display,
            )
            with control.transaction():
                control.build_key(st, _key_name(objects))
                control.state.mark_key_built(job_id, key)
            ts = control.state.load_snapshot(job_id, only=key)[key]
        rereads = ts.done_before(run_id) if merge else []
        if rereads:
            log.info(
                "%s: resuming under a new snapshot: reading %d finished range(s) again for rows written "
                "since, merged by key", st.display, len(rereads),
            )
        works.append(
            TableWork(
            st, ts, found, columns, binary, merge, len(ts.pending) + len(rereads), rereads=rereads,
            objects=objects,
        )
        )
    return works


def _key(st: SelectedTable) -> tuple[str, str]:
    return (st.table.schema, st.table.name)


def _key_name(objects: TableObjects) -> str | None:
    pk = objects.primary_key
    return pk.name if pk is not None else None


def _create_or_empty(
    control: DestinationSession,
    catalog: Catalog,
    new: list[SelectedTable],
    plans: dict[tuple[str, str], list[ChunkPlan]],
    job_id: str,
    planned: dict[tuple[str, str], PlannedObjects],
    ours: set[tuple[str, str]],
) -> None:
    """Empty the tables that exist, all in one statement (foreign keys among them do not stand in
    the way; others are dropped or refused first, ``schema.clear_the_way``), and create the
    others like the source. Each table's plan is recorded in the transaction that emptied or
    created it."""
    found = {_key(st): control.describe(_key(st)) for st in new}
    emptied = [st for st in new if found[_key(st)] is not None]
    if emptied:
        with control.transaction():
            tables = [found[_key(st)] for st in emptied]
            schema.clear_the_way(job_id, control, [t for t in tables if t is not None], planned, ours)
            for st in emptied:
                table = found[_key(st)]
                assert table is not None
                if control.has_rows(table):
                    log.warning(
                        "%s exists at the destination with rows; emptying it for the snapshot", st.display
                    )
            control.empty_together([t for t in tables if t is not None])
            for st in emptied:
                key = _key(st)
                control.state.record_table_plan(job_id, key, key in ours, st.key, plans[key])
    for st in new:
        key = _key(st)
        if found[key] is not None:
            continue
        with control.transaction():
            notes = control.create_table(catalog, st, planned[key].objects)
            control.state.record_table_plan(job_id, key, True, st.key, plans[key])
        for note in notes:
            log.warning("%s", note)


def _copy_all(
    job: Job,
    works: list[TableWork],
    snapshot_name: str,
    run_id: str,
    view: SnapshotView,
    bar: Progress,
    threads: int,
    stop: threading.Event,
) -> None:
    # Tables whose chunks are all done but which were not finalized (crash at that moment) first;
    # then the largest tables' chunks, so the longest chains of chunks start early.
    items: list[ChunkJob | TableWork] = []
    for w in works:
        bar.add_table(w.st.display, w.st.table.estimated_rows)
        w.meter = metrics.snapshot_table(w.st.display, len(w.table.chunks), len(w.table.chunks) - w.remaining)
        if w.remaining == 0:
            items.append(w)
    for w in sorted(works, key=lambda w: -w.st.table.estimated_rows):
        items.extend(ChunkJob(w, c.plan, reread=True, since=c.snapshot_xmin) for c in w.rereads)
        items.extend(ChunkJob(w, c) for c in w.table.pending)

    def describe(item: ChunkJob | TableWork) -> str:
        if isinstance(item, TableWork):
            return f"finishing {item.st.display}"
        again = " again, rows written since" if item.reread else ""
        return f"copying {item.work.st.display} (chunk {item.chunk.chunk_no}{again})"

    def handle(session: Session, item: ChunkJob | TableWork) -> None:
        if isinstance(item, TableWork):
            _finalize(job, session, item, bar)
        else:
            _copy(job, session, item, run_id, view, bar)

    threads = max(1, min(threads, len(items), _connection_budget(job, threads)))
    if not run_parallel(job, snapshot_name, {}, items, threads, describe, handle, APP, stop):
        raise Interrupted(
            "snapshot interrupted; every finished chunk is kept: run the same command again to resume"
        )


def _connection_budget(job: Job, threads: int) -> int:
    """Workers that fit in ``max-connections`` of both sides (each side also holds two of its own)."""
    budget = min(job.source.value.max_connections, job.destination.value.max_connections) - 2
    if budget < threads:
        log.info("using %d worker(s): max-connections leaves room for no more", max(budget, 1))
    return max(budget, 1)


def _copy(job: Job, session: Session, item: ChunkJob, run_id: str, view: SnapshotView, bar: Progress) -> None:
    w, chunk = item.work, item.chunk
    src, dst = session.connections()
    name = w.st.display
    since: sql.Composable | None = None
    if item.reread and item.since is not None:
        xids = xmin.window(item.since, view.xmax)
        since = xmin.predicate(xids) if xids is not None else None  # None: too old, the whole range
    copy_out = copy_out_sql(w.st, chunk, w.columns, w.binary, since)
    key = (w.st.table.schema, w.st.table.name)

    relayed = 0  # bytes of this attempt, for the metrics once they commit

    def progress(rows: int, nbytes: int) -> None:
        nonlocal relayed
        relayed += nbytes
        bar.advance(name, rows, nbytes)

    with dst.transaction():
        result = dst.load(
            w.dest, w.columns, w.binary, lambda sink: relay_copy(src, copy_out, sink, progress),
            merge_key=w.st.key if w.merge else (),
        )
        if not item.reread:
            dst.state.mark_chunk_done(job.job_id, key, chunk.chunk_no, run_id, result.rows, view.xmin)
    if w.meter is not None and not item.reread:  # a finished range read again is no new chunk
        w.meter.chunk_done(result.rows, relayed)
    with w.lock:
        w.remaining -= 1
        last = w.remaining == 0
    if last:
        _finalize(job, session, w, bar)


def _finalize(job: Job, session: Session, w: TableWork, bar: Progress) -> None:
    """The table's last chunk is in: build its key, indexes and constraints, mark it done (one
    transaction; a crash before its commit finalizes the table again on the next run)."""
    _, dst = session.connections()
    key = (w.st.table.schema, w.st.table.name)
    notes: list[str] = []
    with dst.transaction():
        if w.table.created_by_us and not w.table.key_built and w.st.key:
            dst.build_key(w.st, _key_name(w.objects))
            dst.state.mark_key_built(job.job_id, key)
        if w.table.created_by_us:
            notes = dst.build_objects(w.st, w.objects)
        dst.state.mark_table_done(job.job_id, key)
    for note in notes:
        log.warning("%s", note)
    if w.meter is not None:
        w.meter.finished()
    bar.table_done(w.st.display)
