"""Running realtime replication: set up, then one pipeline thread per slot, until stopped or caught up."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator import metrics
from replicator.catalog import Catalog
from replicator.connect import connect, describe, retrying_for
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession, Target
from replicator.errors import ConfigError
from replicator.filters import SelectedTable, check_conditions
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.objectplan import PlannedObjects, plan_objects
from replicator.realtime import ddlsetup
from replicator.realtime.housekeeping import Housekeeping
from replicator.realtime.pipeline import APP, SlotPipeline, SlotStats, current_wal_lsn
from replicator.realtime.positions import (
    Mode,
    ReadOnlyNode,
    SlotStart,
    check_start_positions,
    in_recovery,
    read_only_node_message,
)
from replicator.realtime.setup import (
    SlotPlan,
    check_destination_conditions,
    check_replica_role,
    decide_row_filters,
    identity_match_key,
    identity_warnings,
    plan_slots,
    prepare_destination,
    prepare_source,
    refuse_unreadable_publications,
    select_realtime_tables,
    tables_changed_in_place,
    unlogged_warnings,
)
from replicator.source.rowfilter import RowFilter
from replicator.source.slots import ensure_slot, get_slot
from replicator.source.wal2json_nan import keeps_nan, nan_refusal, nan_risks
from replicator.tableobjects import read_objects

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005  # see _quick_thread_switches
RECORD_LAG_EVERY_S = 5.0  # how often each slot's lag is recorded for `replicator status`


@dataclass
class Prepared:
    plans: list[SlotPlan]
    targets: dict[tuple[str, str], Target]
    heartbeat: bool
    planned: dict[tuple[str, str], PlannedObjects] = field(default_factory=dict)
    starts: dict[str, SlotStart] = field(default_factory=dict)  # each slot's facts at start


def prepare(
    job: Job, create_slots: bool = True, before_destination: Callable[[list[SlotPlan]], None] | None = None
) -> Prepared:
    """Everything up to streaming: tables, publications, slots, destination tables, state.

    One source connection and one destination session do every check and set-up step (each
    new one is a connection and its authentication: start-up time of every run); the full mode
    opens a new destination session after its snapshot, which can take hours."""
    destination = open_destination(job.destination.value)
    with writer_connection(job) as src, destination.open_session(APP) as dst:
        with src.transaction():
            catalog, tables = select_realtime_tables(job, src, with_snapshot=before_destination is not None)
            soft = job.destination.value.deletes == "soft"
            planned = plan_objects(read_objects(src, tables), tables, soft_deletes=soft)
        full = before_destination is not None  # the full mode snapshots before the destination step
        # Where each table is at the slots' checkpoints (schema changes followed: see follow.py).
        stored = ddlsetup.stream_tables(job, src, dst)
        plans = plan_slots(job.source, tables, {relid: t.slot for relid, t in stored.items()})
        # Before anything is written: a stream that would skip changes is refused (positions.py).
        starts = _check_positions(job, src, dst, plans, "full" if full else "realtime")
        for t in tables:
            identity_match_key(t)  # raises if the filter leaves out the columns rows are found by
        _refuse_nan_loss(job, src, plans)
        # Conditions are pasted into the publication (or evaluated at the destination): first they
        # must be one harmless boolean expression (conditions.py), as for the snapshot.
        check_conditions(src, tables)
        row_filters = decide_row_filters(src, plans)
        # Before publications, slots or a snapshot are made.
        check_replica_role(dst, [t for t in tables if not t.table.unlogged], planned)
        if any(not rf.native for rf in row_filters.values()):
            check_destination_conditions(dst, tables, row_filters)
        if full:
            # Before publications or slots are made: every table the snapshot will empty must fit.
            _check_snapshot_targets(job, src, dst, plans, tables)
        for level, message in identity_warnings(tables, tables_changed_in_place(src, tables)):
            log.log(level, message)
        for warning in unlogged_warnings(tables, "full" if full else "realtime"):
            log.warning(warning)
        refuse_unreadable_publications(src, plans, {slot: st.checkpoint for slot, st in starts.items()})
        heartbeat = prepare_source(job, src, plans, row_filters)
        if ddlsetup.announce(src, plans).installed:
            ddlsetup.register_schemas(src, job, plans)
        if create_slots:
            for plan in plans:
                ensure_slot(src, plan.slot, plan.plugin)
        if before_destination is None:
            ddlsetup.as_the_stream_has_them(plans, stored)
            targets = _destination_targets(dst, plans, catalog, planned, row_filters, full)
    if before_destination is not None:
        before_destination(plans)
        ddlsetup.as_the_stream_has_them(plans, stored)
        with destination.open_session(APP) as dst:
            targets = _destination_targets(dst, plans, catalog, planned, row_filters, full)
    return Prepared(plans, targets, heartbeat is not None, planned, starts)


def _destination_targets(
    dst: DestinationSession,
    plans: list[SlotPlan],
    catalog: Catalog,
    planned: dict[tuple[str, str], PlannedObjects],
    row_filters: dict[tuple[str, str], RowFilter],
    full: bool,
) -> dict[tuple[str, str], Target]:
    """The destination's state schema, and its tables made ready: the apply targets."""
    dst.state.ensure()
    # Apply targets: the streamed tables (an UNLOGGED one never sends a change).
    streamed = [t for plan in plans for t in plan.tables if not t.table.unlogged]
    if not full:
        for key in [(t.table.schema, t.table.name) for t in streamed]:
            for note in planned[key].notes if dst.describe(key) is None else ():
                log.warning("%s", note)
    targets = prepare_destination(dst, catalog, streamed, planned, row_filters)
    targets.update(ddlsetup.ghost_targets(dst, plans))
    return targets


def writer_connection(job: Job) -> psycopg.Connection[Any]:
    """A connection to the source once it accepts writes: a failover may briefly leave the endpoint
    on a read-only node, which is waited for within max-retries x retry-wait-duration-ms."""
    cfg = job.source.value
    for attempt in retrying_for(cfg, "waiting for the source to be a writer"):
        with attempt:
            conn = connect(cfg, "source", APP, autocommit=True)
            if in_recovery(conn):
                conn.close()
                raise ReadOnlyNode(read_only_node_message(describe(cfg)))
            return conn
    raise AssertionError("unreachable")


def _refuse_nan_loss(job: Job, src: psycopg.Connection[Any], plans: list[SlotPlan]) -> None:
    """wal2json 2.5 turns NaN and ±Infinity into NULL (source/wal2json_nan.py): refused unless accepted."""
    risks = nan_risks(job.source.value, {p.slot: p.tables for p in plans})
    if not risks:
        return
    if job.source.value.wal2json_nan_becomes_null:
        log.info(
            "%s: wal2json-nan-becomes-null: NaN and ±Infinity in %s replicate as NULL (accepted)",
            job.source.where("wal2json-nan-becomes-null"), ", ".join(r.table for r in risks),
        )
        return
    lossy = [r for r in risks if not keeps_nan(src, r.slot)]
    if lossy:
        raise ConfigError(nan_refusal(job.source, lossy))


def _check_positions(
    job: Job, src: psycopg.Connection[Any], dst: DestinationSession, plans: list[SlotPlan], mode: Mode
) -> dict[str, SlotStart]:
    configured = job.extractor.value.realtime.start_position
    start_lsn = Lsn.parse(configured.start_lsn) if configured and configured.start_lsn else None
    where = job.extractor.where("realtime", "start-position", "start-lsn")
    state = dst.state if dst.state.present() else None
    return check_start_positions(src, state, job.job_id, [p.slot for p in plans], mode, start_lsn, where)


def _check_snapshot_targets(
    job: Job,
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    plans: list[SlotPlan],
    tables: list[SelectedTable],
) -> None:
    """The tables a full run will snapshot: all of a slot that is new, else those not finished."""
    from replicator.snapshot.runner import unfinished_tables  # the full mode's: not on realtime's start-up

    fresh = {key for plan in plans if get_slot(src, plan.slot) is None for key in plan.table_keys}
    pending = {(t.table.schema, t.table.name) for t in unfinished_tables(dst, job.job_id, tables)}
    dst.check_can_take([t for t in tables if (t.table.schema, t.table.name) in fresh | pending])


def stream(job: Job, prepared: Prepared, stop: threading.Event | None = None) -> list[SlotStats]:
    """Run every slot's pipeline; with ``job.once``, until caught up with the source's WAL at start."""
    stop = stop or threading.Event()
    until = current_wal_lsn(job) if job.once else None
    destination = open_destination(job.destination.value)
    sequences = sorted({s.qualified for p in prepared.planned.values() for s in p.objects.all_sequences})
    with destination.open_session(APP) as lock_session, _collector_for_streaming(), _quick_thread_switches():
        lock_session.state.lock_job(job.job_id, "realtime")  # held by this session while we stream
        # One heartbeat writer is enough: the heartbeat table is in every slot's publication.
        pipelines = [
            SlotPipeline(job, plan, prepared.targets, prepared.heartbeat, write_heartbeat=i == 0)
            for i, plan in enumerate(prepared.plans)
        ]
        with Housekeeping(job, sequences, stop), _observed(job, pipelines, lock_session):
            return _run_pipelines(pipelines, stop, until)


def _run_pipelines(
    pipelines: list[SlotPipeline], stop: threading.Event, until: Lsn | None
) -> list[SlotStats]:
    """Each slot in a thread of its own (one: in this thread); the first error stops them all."""
    if len(pipelines) == 1:
        return [pipelines[0].run(stop, until)]
    results: list[SlotStats | None] = [None] * len(pipelines)
    errors: list[BaseException] = []

    def run_one(i: int) -> None:
        try:
            results[i] = pipelines[i].run(stop, until)
        except BaseException as e:  # reported below
            errors.append(e)
            stop.set()

    threads = [
        threading.Thread(target=run_one, args=(i,), name=f"slot-{p.plan.slot}")
        for i, p in enumerate(pipelines)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


@contextmanager
def _observed(job: Job, pipelines: list[SlotPipeline], session: DestinationSession) -> Iterator[None]:
    """While the pipelines stream: their metrics at every scrape, and their lag recorded for
    ``replicator status`` every ``RECORD_LAG_EVERY_S`` on ``session`` (the one holding the job lock,
    otherwise idle), by a thread of its own: the streaming loops never wait for it."""
    untrack = [metrics.track_slot(p.plan.slot, p.lag.sample) for p in pipelines]
    done = threading.Event()

    def record() -> None:
        for p in pipelines:
            through = p.lag.applied_through_now()
            if through is None:
                continue
            try:
                with session.transaction():
                    session.state.save_slot_lag(job.job_id, p.plan.slot, through)
            except psycopg.Error as e:  # only informational: never a reason to stop streaming
                log.debug("cannot record the lag of slot %s: %s", p.plan.slot, e)

    def every_few_seconds() -> None:
        while not done.wait(RECORD_LAG_EVERY_S):
            record()

    recorder = threading.Thread(target=every_few_seconds, name="lag-recorder", daemon=True)
    recorder.start()
    try:
        yield
    finally:
        done.set()
        recorder.join()
        if session.usable:
            record()
        for stop_tracking in untrack:
            stop_tracking()


@contextmanager
def _collector_for_streaming() -> Iterator[None]:
    """Run Python's cyclic garbage collector less often while changes stream.

    Every change makes a few objects (its event, its value tuples) that live for a batch or
    two. With the default thresholds a young collection runs every 700 of them and, as they
    outlive it, full collections keep walking every object the imports created (psycopg,
    pydantic: hundreds of thousands). That was a quarter of our CPU time on a 200k-change
    backlog (3.0-3.2 s -> 2.1-2.2 s with this). Nothing on the hot path makes reference cycles,
    so collecting less often costs no memory to speak of; objects alive now are frozen out of
    collections, and the usual settings come back when streaming ends.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@contextmanager
def _quick_thread_switches() -> Iterator[None]:
    """Let a thread that got its answer from a server take the GIL back within 0.5 ms, not 5.

    Each slot's apply worker sends a statement, waits for the destination with the GIL released,
    and then needs the GIL back while the slot's reader decodes and folds in pure Python. With
    Python's default switch interval (5 ms) every statement of a busy pipeline waited up to 5 ms
    for it, and a destination commit is about ten statements: the destination sat idle behind
    our own GIL, and a commit under load took tens of milliseconds longer than its statements.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def summary(stats: list[SlotStats]) -> str:
    tx = sum(s.transactions for s in stats)
    ch = sum(s.changes for s in stats)
    lsn = max((s.confirmed for s in stats), default=Lsn(0))
    return f"realtime stopped: {tx:,} transactions, {ch:,} changes applied; confirmed up to {lsn}"
