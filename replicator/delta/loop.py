"""Passes at an interval until told to stop.

SIGTERM or SIGINT asks for a clean stop (``replicator.signals``): the pass under way finishes
(or, between passes, the wait ends) and the run exits 0. A first pass's snapshot, which can be
long, stops like snapshot mode instead: after the chunks in flight, with ``Interrupted`` (exit
130; the next run resumes it). A second signal interrupts at once (every destination write is
a transaction, so that too loses nothing; the next run redoes the unfinished part).
A pass that fails for a reason that may go away (the source restarted, a network blip) is
retried after the interval, unless ``--once``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg

from replicator import state
from replicator.connect import ConnectError, connect, is_transient
from replicator.delta.passes import APP, PassSummary, RunContext, run_pass
from replicator.snapshot.workers import SnapshotLost
from replicator.job import Job
from replicator.signals import stop_on_signals

log = logging.getLogger(__name__)


def run_passes(job: Job, report: Callable[[PassSummary], None]) -> int:
    interval = job.extractor.value.delta_snapshot.interval_s
    fresh = job.fresh  # until a pass has done it
    with stop_on_signals() as stop:
        ctx = RunContext(job, _control(job), stop)
        try:
            number = 0
            while True:
                number += 1
                try:
                    ctx.control = _alive(job, ctx.control)
                    summary = run_pass(ctx, number, fresh=fresh)
                except (psycopg.OperationalError, ConnectError, SnapshotLost) as e:
                    if job.once or stop.is_set() or not _transient(e):
                        raise
                    log.warning("pass %d failed, trying again in %g s: %s", number, interval, str(e).strip())
                    if stop.wait(interval):
                        break
                    continue
                fresh = False
                report(summary)
                if job.once or stop.is_set() or stop.wait(interval):
                    break
            if stop.is_set():
                log.info("stopped after pass %d", number)
            return 0
        finally:
            ctx.control.close()


def _transient(e: BaseException) -> bool:
    if isinstance(e, ConnectError):
        return not e.permanent  # a wrong password stays wrong at the next pass
    return isinstance(e, SnapshotLost) or is_transient(e)


def _control(job: Job) -> psycopg.Connection[Any]:
    """The destination connection that holds the job lock for the whole run."""
    control = connect(job.destination.value, "destination", APP, autocommit=True)
    try:
        state.ensure_schema(control)
        state.lock_job(control, job.job_id, "delta-snapshot")
    except BaseException:
        control.close()
        raise
    return control


def _alive(job: Job, control: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """``control``, or a new one if it was lost (taking the job lock again: another run may have it)."""
    try:
        control.execute("SELECT 1")
        return control
    except psycopg.Error:
        control.close()
        return _control(job)
