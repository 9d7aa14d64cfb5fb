"""Passes at an interval until told to stop.

SIGTERM or SIGINT asks for a clean stop (``replicator.signals``): the pass under way finishes
(or, between passes, the wait ends) and the run exits 0. A first pass's snapshot, which can be
long, stops like snapshot mode instead: after the chunks in flight, with ``Interrupted`` (exit
130; the next run resumes it). A second signal interrupts at once (every destination write is
a transaction, so that too loses nothing; the next run redoes the unfinished part).
A pass that fails for a reason that may go away (the source restarted, a network blip; see
``retry.may_recover_later``) is tried again after the interval, unless ``--once``.

A failure of one table (its schema cannot be followed, its destination table refuses rows, its
key comparison found a divergence, ...) is that table's: the pass finishes the other tables,
logs an ERROR naming the failed ones and marks them FAILED in its summary. With ``--once`` the
run then exits 1; a running loop goes on and tries them again at every pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from replicator import metrics
from replicator.delta.passes import APP, PassSummary, RunContext, run_pass
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession
from replicator.job import Job
from replicator.retry import Stopped, may_recover_later, retrying
from replicator.signals import stop_on_signals

log = logging.getLogger(__name__)


def run_passes(job: Job, report: Callable[[PassSummary], None]) -> int:
    interval = job.extractor.value.delta_snapshot.interval_s
    fresh = job.fresh  # until a pass has done it
    with stop_on_signals() as stop:
        ctx = RunContext(job, _control(job), stop)
        number = 0

        def one_pass() -> PassSummary:
            nonlocal number
            number += 1
            ctx.control = _alive(job, ctx.control)
            try:
                summary = run_pass(ctx, number, fresh=fresh)
            except Exception:
                metrics.delta_pass_failed()
                raise
            _pass_metrics(ctx, summary)
            return summary

        def worth_another_pass(e: BaseException) -> bool:
            return not job.once and not stop.is_set() and may_recover_later(e)

        def wait(seconds: float) -> None:
            if stop.wait(seconds):
                raise Stopped

        any_failed = False
        try:
            while True:
                try:
                    for attempt in retrying(
                        None, interval, lambda: f"pass {number}", retry_if=worth_another_pass, sleep=wait
                    ):
                        with attempt:
                            summary = one_pass()
                except Stopped:
                    break
                fresh = False
                report(summary)
                if summary.failed:
                    any_failed = True
                    log.error(
                        "pass %d: %d table(s) failed (the others are up to date): %s; %s",
                        number, len(summary.failed), ", ".join(r.table for r in summary.failed),
                        "exiting with status 1" if job.once else "they are tried again at the next pass",
                    )  # fmt: skip
                if job.once or stop.is_set() or stop.wait(interval):
                    break
            if stop.is_set():
                log.info("stopped after pass %d", number)
            return 1 if job.once and any_failed else 0
        finally:
            ctx.control.close()


def _pass_metrics(ctx: RunContext, summary: PassSummary) -> None:
    """Durations, rows and the watermarks the pass saved (read back: one query per pass)."""
    tables = {r.table for r in summary.results}
    marks = {
        f"{schema}.{name}": mark
        for (schema, name), mark in ctx.control.state.load_watermarks(ctx.job.job_id).items()
        if f"{schema}.{name}" in tables
    }
    counts = [metrics.TableCounts(r.table, r.upserted, r.deleted) for r in summary.results]
    metrics.delta_pass_done(summary.seconds, time.time(), counts, marks)


def _control(job: Job) -> DestinationSession:
    """The destination session that holds the job lock for the whole run."""
    control = open_destination(job.destination.value).open_session(APP)
    try:
        control.state.ensure()
        control.state.lock_job(job.job_id, "delta-snapshot")
    except BaseException:
        control.close()
        raise
    return control


def _alive(job: Job, control: DestinationSession) -> DestinationSession:
    """``control``, or a new one if it was lost (taking the job lock again: another run may have it)."""
    if control.ping():
        return control
    control.close()
    return _control(job)
