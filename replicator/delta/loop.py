"""Passes at an interval until told to stop.

SIGTERM or SIGINT asks for a clean stop: the pass under way finishes (or, between passes, the
wait ends) and the run exits 0. A second signal interrupts at once (every destination write
is a transaction, so that too loses nothing; the next run redoes the unfinished part).
A pass that fails for a reason that may go away (the source restarted, a network blip) is
retried after the interval, unless ``--once``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import psycopg

from replicator import state
from replicator.connect import ConnectError, connect, is_transient
from replicator.delta.passes import PassSummary, RunContext, run_pass
from replicator.delta.workers import APP, SnapshotLost
from replicator.job import Job

log = logging.getLogger(__name__)


class StopRequest:
    """Turns the first SIGTERM/SIGINT into a request, the second into KeyboardInterrupt."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        log.warning(
            "%s: stopping after the pass under way (signal again to stop at once)",
            signal.Signals(signum).name,
        )

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        return self.event.wait(seconds)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_passes(job: Job, report: Callable[[PassSummary], None]) -> int:
    stop = StopRequest()
    ctx = RunContext(job, _control(job))
    interval = job.extractor.value.delta_snapshot.interval_s
    fresh = job.fresh  # until a pass has done it
    try:
        number = 0
        while True:
            number += 1
            try:
                ctx.control = _alive(job, ctx.control)
                summary = run_pass(ctx, number, fresh=fresh)
            except (psycopg.OperationalError, ConnectError, SnapshotLost) as e:
                if job.once or stop.requested or not _transient(e):
                    raise
                log.warning("pass %d failed, trying again in %g s: %s", number, interval, str(e).strip())
                if stop.wait(interval):
                    break
                continue
            fresh = False
            report(summary)
            if job.once or stop.requested or stop.wait(interval):
                break
        if stop.requested:
            log.info("stopped after pass %d", number)
        return 0
    finally:
        stop.restore()
        ctx.control.close()


def _transient(e: BaseException) -> bool:
    return isinstance(e, ConnectError | SnapshotLost) or is_transient(e)


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
