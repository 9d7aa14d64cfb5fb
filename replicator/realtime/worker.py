"""The apply side of a slot's pipeline, on its own thread: the destination works while we read.

PostgreSQL's own logical replication decodes in the walsender and applies in a separate worker
process, in parallel. Here the reader thread reads and decodes the stream and hands chunks of
events to an ``ApplyWorker``, which owns the destination connection: it folds, stages, merges
and commits (``Applier``), and publishes what it has committed. Only that ever reaches the
source as confirmed. The queue between them is short (``depth`` chunks of at most
``fetch-size-rows`` events), so memory stays bounded and the reader waits when it is ahead.

Guarantees are the applier's, unchanged: one destination transaction covers whole source
transactions and commits with their checkpoint; on any failure the open transaction is rolled
back and the stream resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from replicator.decoding.changes import Begin, Change, Commit, Event, Truncate
from replicator.lsn import Lsn
from replicator.realtime.apply import Applier

log = logging.getLogger(__name__)


@dataclass
class CommitRules:
    """When the worker commits, at a source transaction boundary with transactions pending."""

    max_open_s: float  # the destination transaction has been open this long
    max_changes: int  # it holds this many changes


@dataclass
class Progress:
    """What the worker has made durable, read by the reader thread (plain attribute reads)."""

    committed: Lsn | None = None  # checkpoint of the last destination commit
    drained: Lsn | None = None  # reader position after the last chunk applied with nothing pending
    transactions: int = 0
    changes: int = 0
    commits: int = 0


_FINISH = object()  # commit what is complete, then end


class ApplyWorker:
    """Applies chunks of events on a thread of its own; see the module docstring."""

    def __init__(self, applier: Applier, rules: CommitRules, name: str, depth: int = 2):
        self.applier = applier
        self.rules = rules
        self.progress = Progress()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._abort = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ApplyWorker:
        self._thread.start()
        return self

    # -- the reader's side -----------------------------------------------------------------

    def put(self, events: Sequence[Event], position: Lsn, idle: bool) -> None:
        """Hand over the events of one read (``idle``: the read found nothing new) and the reader's
        position after it; waits while the queue is full. Raises the worker's error, if any."""
        while True:
            self.check()
            try:
                self._queue.put((events, position, idle), timeout=0.5)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        """Raise, in the reader's thread, whatever ended the worker."""
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive() and self._thread.ident is not None and not self._abort.is_set():
            raise RuntimeError("the apply worker ended unexpectedly")

    def finish(self) -> None:
        """Apply everything handed over, commit it (the reader is at a transaction boundary), end."""
        while self._thread.is_alive():
            self.check()
            try:
                self._queue.put(_FINISH, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without committing; the open destination transaction is rolled back."""
        self._abort.set()
        while True:  # make room, so that a worker waiting for work wakes up
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(_FINISH)
        except queue.Full:
            pass
        if self._thread.ident is not None:
            self._thread.join()

    # -- the worker's thread ---------------------------------------------------------------

    def _run(self) -> None:
        applier = self.applier
        progress = self.progress
        in_txn = False
        position: Lsn | None = None
        try:
            while not self._abort.is_set():
                item = self._queue.get()
                if self._abort.is_set():
                    break
                if item is _FINISH:
                    if in_txn:  # not at a boundary: nothing of the open destination transaction stays
                        applier.rollback()
                        return
                    if applier.pending_transactions:
                        self._commit()
                    progress.drained = position
                    return
                events, position, idle = item  # type: ignore[misc]
                change = applier.change
                for ev in events:
                    t = type(ev)
                    if t is Change or t is Truncate:
                        change(ev)  # type: ignore[arg-type]
                        progress.changes += 1
                    elif t is Begin:
                        in_txn = True
                    elif t is Commit:
                        in_txn = False
                        applier.source_commit(ev.end_lsn)  # type: ignore[union-attr]
                        progress.transactions += 1
                if not in_txn and applier.pending_transactions and (
                    idle
                    or applier.open_seconds >= self.rules.max_open_s
                    or applier.transaction_changes >= self.rules.max_changes
                ):
                    self._commit()
                if not in_txn and not applier.pending_transactions:
                    progress.drained = position  # everything read so far is applied
        except BaseException as e:  # handed to the reader thread by check()
            self._error = e
        finally:
            if self._error is not None or self._abort.is_set():
                applier.rollback()

    def _commit(self) -> None:
        lsn = self.applier.commit()
        if lsn is not None:
            self.progress.committed = lsn
            self.progress.commits += 1
