"""``replicator verify``: is the destination, row for row, what the source holds?

Read only on both sides. The source is read in one exported snapshot (every worker joins it);
each table is cut into key ranges there (``plan``), and each range is digested by both servers
at once (``compare``), narrowed to the differing rows only where digests differ. While realtime
streams, what the stream is about to resolve is not reported (``live``). Then one line per
table, its differing keys (up to ``--max-rows``), what the schema lacks, and the objects beyond
tables that replicator does not migrate (``report``).

Exit status: 0 equal, 3 different, 1 could not run, 2 bad config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import load_catalog
from replicator.connect import connect
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession
from replicator.errors import Interrupted
from replicator.filters import check_conditions, select_tables
from replicator.identity import source_key, verify_distinct
from replicator.job import Job
from replicator.keyorder import DIGEST_SESSION_SETTINGS
from replicator.objectplan import plan_objects
from replicator.snapshot.plan import select_sql
from replicator.snapshot.workers import (
    SNAPSHOT_SESSION,
    Session,
    begin_in_snapshot,
    run_parallel,
    session_settings,
)
from replicator.source.heartbeat import without_heartbeat
from replicator.tableobjects import read_objects
from replicator.verify import live, report
from replicator.verify.compare import Found, compare_chunk, compare_keyless
from replicator.verify.plan import Chunk, VerifyTable, chunks, verify_table

log = logging.getLogger(__name__)

APP = "replicator/verify"
EQUAL, DIFFERENT = 0, 3
# Identical text forms on both servers, and nothing written by mistake.
SETTINGS = {**DIGEST_SESSION_SETTINGS, "default_transaction_read_only": "on"}


@dataclass
class Outcome:
    """What ``verify`` found: per table, and beyond tables."""

    tables: list[report.TableReport] = field(default_factory=list)
    not_migrated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)

    @property
    def status(self) -> int:
        return EQUAL if self.equal else DIFFERENT


def run_verify(
    job: Job, max_rows: int = 20, timeout_s: float = 60.0, out: Callable[[str], None] = print
) -> int:
    outcome = verify(job, timeout_s=timeout_s)
    for line in report.lines(outcome.tables, outcome.not_migrated, outcome.notes, max_rows, outcome.seconds):
        out(line)
    return outcome.status


def verify(job: Job, timeout_s: float = 60.0, stop: threading.Event | None = None) -> Outcome:
    """Compare every selected table; ``timeout_s`` bounds the waits for a streaming destination."""
    started = time.monotonic()
    facts = verify_distinct(job.source, job.destination)  # refuses a destination that is the source
    job_id = source_key(facts) or job.legacy_job_id
    exporter = connect(job.source.value, "source", APP, autocommit=True)
    control = open_destination(job.destination.value).open_session(APP, settings=SETTINGS)
    try:
        session_settings(exporter, {**SNAPSHOT_SESSION, **SETTINGS})
        streaming = live.streaming(exporter, control, job_id, list(job.source.value.slots))
        at = live.insert_position(exporter)
        begin_in_snapshot(exporter, None)
        row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        snapshot = str(row[0])
        catalog = load_catalog(exporter)
        selected = without_heartbeat(
            select_tables(catalog, job.filter, job.extractor, job.source.value.database, "snapshot"),
            job.extractor.value.realtime.heartbeat,
            lambda st: (st.table.schema, st.table.name),
        )
        check_conditions(exporter, selected)
        tables = [
            verify_table(exporter, st, control.describe((st.table.schema, st.table.name))) for st in selected
        ]
        planned = plan_objects(
            read_objects(exporter, selected), selected, job.destination.value.deletes == "soft"
        )
        outcome = Outcome()
        if streaming:
            behind = live.wait_until_applied(control, streaming, at, timeout_s)
            if behind:
                outcome.notes.append(_behind(behind, at))
        items: list[Chunk | VerifyTable] = []
        counts: dict[tuple[str, str], int] = {}
        for t in tables:
            if t.dest is None:
                counts[(t.st.table.schema, t.st.table.name)] = _count(exporter, t)
            elif t.order is None:
                items.append(t)
            else:
                items.extend(chunks(exporter, t))
        found = _compare_all(job, snapshot, items, stop)
        if streaming and any(f.differences for f in found):
            outcome.notes += _recheck(job, control, streaming, found, timeout_s, stop)
        outcome.tables = report.by_table(tables, found, counts, planned, control)
        outcome.notes += [f"schema: {g}" for g in report.sequence_gaps(exporter, control, planned.values())]
        outcome.not_migrated = report.not_migrated(
            exporter, control, [(s.table.schema, s.table.name) for s in selected]
        )
        exporter.execute("COMMIT")
    finally:
        control.close()
        exporter.close()
    outcome.seconds = time.monotonic() - started
    return outcome


def _compare_all(
    job: Job, snapshot: str, items: list[Chunk | VerifyTable], stop: threading.Event | None
) -> list[Found]:
    """Compare every item in parallel (workers join ``snapshot``), both servers at once."""
    if not items:
        return []
    threads = job.extractor.value.snapshot.threads
    found: list[Found] = []
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify-source") as pool:

        def handle(session: Session, item: Chunk | VerifyTable) -> None:
            src, dst = session.connections()
            result = (
                compare_keyless(pool, src, dst, item)
                if isinstance(item, VerifyTable)
                else compare_chunk(pool, src, dst, item)
            )
            with lock:
                found.append(result)

        def describe(item: Chunk | VerifyTable) -> str:
            return f"comparing {item.display if isinstance(item, VerifyTable) else item.table.display}"

        if not run_parallel(job, snapshot, SETTINGS, items, threads, describe, handle, APP, stop):
            raise Interrupted("verify interrupted")
    return found


def _recheck(
    job: Job,
    control: DestinationSession,
    streaming: live.Live,
    found: list[Found],
    timeout_s: float,
    stop: threading.Event | None,
) -> list[str]:
    """Compare the differing ranges again in new snapshots, once the stream has caught up with
    each (see ``live``). Returns notes."""
    notes: list[str] = []
    deadline = time.monotonic() + timeout_s
    changing = 0
    for _ in range(live.RECHECKS):
        differing = [f for f in found if f.differences]
        if not differing or time.monotonic() >= deadline:
            break
        with connect(job.source.value, "source", APP, autocommit=True) as src:
            session_settings(src, {**SNAPSHOT_SESSION, **SETTINGS})
            at = live.insert_position(src)
            begin_in_snapshot(src, None)
            row = src.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            behind = live.wait_until_applied(control, streaming, at, max(0.0, deadline - time.monotonic()))
            if behind:
                notes.append(_behind(behind, at))
                break
            items: list[Chunk | VerifyTable] = [f.chunk or f.table for f in differing]
            again = {id(_item_of(f)): f for f in _compare_all(job, str(row[0]), items, stop)}
        for f in differing:
            changing += live.narrow(f, again[id(_item_of(f))])
    if changing:
        notes.append(f"{changing} row(s) kept changing at the source while compared: not reported")
    return notes


def _item_of(f: Found) -> Chunk | VerifyTable:
    """The item a result is for (the same object in every round)."""
    return f.chunk or f.table


def _count(src: psycopg.Connection[Any], t: VerifyTable) -> int:
    row = src.execute(select_sql(t.st, [sql.SQL("count(*)")])).fetchone()
    return int(row[0]) if row else 0


def _behind(behind: dict[str, Any], at: Any) -> str:
    slots = ", ".join(f"{s} at {lsn}" for s, lsn in behind.items())
    return (
        f"realtime had not applied the source's changes up to {at} within the time allowed ({slots}): "
        "differences below may be changes still in flight"
    )
