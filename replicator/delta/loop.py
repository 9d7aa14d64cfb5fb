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

import psycopg

from replicator import metrics
from replicator.delta.passes import APP, PassSummary, RunContext, run_pass
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession
from replicator.job import Job
from replicator.retry import Stopped, first_line, may_recover_later, retrying
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
                tidied = _vacuum_written(ctx, summary)
                if summary.failed:
                    any_failed = True
                    log.error(
                        "pass %d: %d table(s) failed (the others are up to date): %s; %s",
                        number, len(summary.failed), ", ".join(r.table for r in summary.failed),
                        "exiting with status 1" if job.once else "they are tried again at the next pass",
                    )  # fmt: skip
                if job.once or stop.is_set() or stop.wait(max(0.0, interval - tidied)):
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


def _vacuum_written(ctx: RunContext, summary: PassSummary) -> float:
    """Vacuum the destination tables the pass wrote, once it has committed; returns the seconds spent.

    A pass finds deletes by reading both sides' keys in key order (``delta/walk.py``). At the
    destination that is an index-only scan, which visits the table for every key on a page not
    marked all-visible, and a pass leaves about one such page per changed row: without a vacuum
    the next pass reads most of the table again. The vacuum runs here, after the commit (the
    rows are visible; nothing waits for it but the next pass, and it counts against the
    interval), on the control session, and only on what the pass wrote. A failure is only
    logged: the next pass is slower, not wrong.
    """
    if not summary.written or ctx.stop.is_set():
        return 0.0
    began = time.monotonic()
    for table in summary.written:
        try:
            ctx.control.vacuum_for_key_reads(table)
        except psycopg.Error as e:
            log.warning(
                "%s: VACUUM after the pass failed (the next pass reads its keys more slowly): %s",
                ".".join(table), first_line(e),
            )  # fmt: skip
            if ctx.control.ping():
                continue
            break
    seconds = time.monotonic() - began
    log.info("pass %d: %d destination table(s) vacuumed in %.2f s", summary.number, len(summary.written),
             seconds)  # fmt: skip
    return seconds


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
