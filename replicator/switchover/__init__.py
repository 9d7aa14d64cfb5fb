"""``replicator switchover``: the cutover to the destination, while realtime is streaming.

One module per phase, run in this order, each printed as one line ``step, seconds, result``:

- ``read-only-source``, ``writers`` (with ``--read-only-source``, ``readonly.py``): new source
  sessions are read-only; sessions that can still write are listed (ended with ``--terminate``);
- ``marker`` (``marker.py``): every slot's checkpoint has passed a marker written now;
- ``sequences`` (``finish.py``): every sequence exactly at the source's value;
- ``validate``: constraints left ``NOT VALID`` validated;
- ``verify`` (``--no-verify`` skips it): row for row, as ``replicator verify``;
- ``record``: the destination's state says it was promoted, so the running stream stops by
  itself (exit 0) and later runs refuse to write into it unless ``--fresh``; once the stream has
  stopped, identity columns become ``GENERATED ALWAYS`` where the source has them;
- a switchover run again on a promoted destination runs ``record`` (only what it may not have
  finished) and ``cleanup``: the destination may take the application's writes by then, so its
  sequences and rows are left alone;
- ``cleanup``: the slots and publications dropped (``--drop-slot``), or the commands to do it.

The first step that fails stops the switchover: exit 1 naming it (3 when ``verify`` found
differences), with what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from replicator.catalog import load_catalog
from replicator.connect import connect
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession
from replicator.errors import ReplicatorError
from replicator.filters import select_tables
from replicator.identity import identify
from replicator.job import Job
from replicator.objectplan import plan_objects
from replicator.realtime.setup import plan_slots
from replicator.source.heartbeat import without_heartbeat
from replicator.source.publication import insert_only_publication
from replicator.switchover import finish, marker, readonly
from replicator.switchover.context import Context, Options, StepFailed
from replicator.tableobjects import read_objects

__all__ = ["Options", "run_switchover"]

log = logging.getLogger(__name__)

APP = "replicator/switchover"


def run_switchover(job: Job, options: Options, out: Callable[[str], None] = print) -> int:
    job = identify(job)  # refuses a destination that is the source; names the job
    src = connect(job.source.value, "source", APP, autocommit=True)
    # A switchover run again after --read-only-source still writes its marker (and its ALTERs).
    src.execute("SET default_transaction_read_only = off")
    dst = open_destination(job.destination.value).open_session(APP)
    try:
        ctx = _context(job, options, src, dst)
        steps: list[tuple[str, Callable[[Context], str]]] = []
        if options.read_only_source:
            steps += [("read-only-source", _read_only), ("writers", _writers)]
        promoted = dst.state.switchover(ctx.job.job_id)
        if promoted is not None:
            steps += [("record", lambda c: finish.already_promoted(c, promoted)), ("cleanup", finish.cleanup)]
        else:
            steps += [
                ("marker", _marker),
                ("sequences", finish.sequences),
                ("validate", finish.validate),
                ("verify", finish.verify_rows),
                ("record", finish.record),
                ("cleanup", finish.cleanup),
            ]
        for name, step in steps:
            started = time.monotonic()
            try:
                result = step(ctx)
            except StepFailed as e:
                out(f"{name}, {time.monotonic() - started:.1f}, FAILED: {e.result}")
                for line in e.details:
                    out(f"  {line}")
                out(f"switchover stopped at step {name}: nothing after it was done")
                return e.exit_code
            except (ReplicatorError, psycopg.Error) as e:
                out(f"{name}, {time.monotonic() - started:.1f}, FAILED: {_reason(e)}")
                out(f"switchover stopped at step {name}: nothing after it was done")
                return 1
            out(f"{name}, {time.monotonic() - started:.1f}, {result}")
        return 0
    finally:
        dst.close()
        src.close()


def _context(job: Job, options: Options, src: psycopg.Connection[Any], dst: DestinationSession) -> Context:
    with src.transaction():
        catalog = load_catalog(src)
        tables = without_heartbeat(
            select_tables(catalog, job.filter, job.extractor, job.source.value.database, "snapshot"),
            job.extractor.value.realtime.heartbeat,
            lambda st: (st.table.schema, st.table.name),
        )
        planned = plan_objects(read_objects(src, tables), tables, job.destination.value.deletes == "soft")
    slots = list(job.source.value.slots)
    publications: list[str] = []
    if slots:
        # Each slot's publication and its insert-only twin (made with it, see realtime/setup.py).
        publications = sorted(
            {name for p in plan_slots(job.source, tables) if p.publication
             for name in (p.publication, insert_only_publication(p.publication))}
        )
    dst.state.ensure()
    return Context(job, options, src, dst, tables, planned, slots, publications)


def _reason(e: BaseException) -> str:
    if isinstance(e, psycopg.Error) and e.diag.message_primary:
        return e.diag.message_primary
    return str(e).strip()


# -- the source: read only, writers, marker ---------------------------------------------------


def _read_only(ctx: Context) -> str:
    current = readonly.previous_setting(ctx.src)
    with ctx.dst.transaction():
        before = ctx.dst.state.source_read_only_before(ctx.job.job_id, current)
    try:
        undo = readonly.make_read_only(ctx.src, before)
    except psycopg.errors.InsufficientPrivilege:
        raise StepFailed(readonly.owner_fix(ctx.src)) from None
    return f"ok: new sessions of the source database are read-only; to undo: {undo}"


def _writers(ctx: Context) -> str:
    found = readonly.writers(ctx.src)
    if not found:
        return "ok: no other session can write"
    if not ctx.options.terminate:
        raise StepFailed(
            f"{len(found)} session(s) opened before the database became read-only can still write: stop "
            "them (or pass --terminate) and run switchover again",
            details=[str(w) for w in found],
        )
    left = readonly.terminate(ctx.src, found)
    if left:
        raise StepFailed(
            f"{len(left)} session(s) could not be ended (the user needs pg_signal_backend, or to own them)",
            details=[str(w) for w in left],
        )
    return f"ok: ended {len(found)} session(s) that could still write: " + "; ".join(str(w) for w in found)


def _marker(ctx: Context) -> str:
    if not ctx.slots:
        return "skipped: no replication-slots in the source config (nothing streams)"
    hb = ctx.job.extractor.value.realtime.heartbeat
    ctx.mark = marker.write_marker(ctx.src, hb)
    behind = marker.wait_for(ctx.dst, ctx.job.job_id, ctx.slots, ctx.mark, ctx.options.timeout_s)
    if behind:
        lag = ", ".join(
            f"slot {s} "
            + (
                f"at {c}, {int(ctx.mark.lsn) - int(c):,} bytes behind"
                if c is not None
                else "has no checkpoint"
            )
            for s, c in behind.items()
        )
        hint = (
            ""
            if ctx.mark.carried_by_heartbeat
            else (" (no heartbeat table carries the marker: is realtime running, with heartbeat enabled?)")
        )
        raise StepFailed(
            f"the destination did not reach the marker {ctx.mark.lsn} within {ctx.options.timeout_s:g} s: "
            f"{lag}{hint}; is `replicator run realtime` (or `full`) running? Run switchover again once it "
            "has caught up, or with a larger --timeout-s"
        )
    reached = marker.checkpoints(ctx.dst, ctx.job.job_id, ctx.slots)
    return f"ok: marker {ctx.mark.lsn} reached by " + ", ".join(f"{s} (at {c})" for s, c in reached.items())
