"""The destination side of a slot's pipeline, on its own thread: the destination works while we read.

PostgreSQL's own logical replication decodes in the walsender and applies in a separate worker
process, in parallel. Here the slot's thread reads, decodes and folds (``fold.Folder``, which
never touches the destination) and hands what is folded to an ``ApplyWorker``, which owns the
destination session: its ``Applier`` stages, merges and commits, and the worker publishes what it
has committed. Only that ever reaches the source as confirmed. So the destination merges one
unit while the next one is read and folded, and stays busy.

The queue between them is short (a few units of at most ``fetch-size-rows`` changes each), so
memory stays bounded and the reader waits when it is ahead. Items are applied in order:
units, commits (the checkpoint LSN commits with the units before it: whole source transactions
only, as the reader decides), and "drained" marks (everything read up to a stream position is
committed: the source may move there, which keeps idle slots current).

A drained position is written into the checkpoint before it is published, so the source is never
told more than the destination's state records: a later start that finds the slot ahead of the
checkpoint then knows that changes were really skipped (by another consumer, or a recreated
slot), instead of suspecting it after every clean restart. Idle positions cost a destination
commit each, so they are recorded at most every ``RECORD_DRAINED_EVERY_S`` (and always the last
one, at the end); a commit of changes supersedes any position waiting to be recorded.

On any failure the worker stops; the reader raises its error, and the open destination
transaction is rolled back: the stream resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from replicator.decoding.fold import Folded
from replicator.destinations.base import Applier
from replicator.lsn import Lsn

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the worker has made durable, read by the reader thread (plain attribute reads)."""

    committed: Lsn | None = None  # checkpoint of the last destination commit
    drained: Lsn | None = None  # a stream position up to which everything read is committed (and recorded)
    commits: int = 0


_APPLY, _COMMIT, _DRAINED, _DRAINED_LAST, _CALL = 0, 1, 2, 3, 4

# How often an idle stream's position is written into the checkpoint (and then confirmed).
RECORD_DRAINED_EVERY_S = 1.0
_FINISH = None  # everything before it is done: end

_Item = tuple[int, "Folded | Lsn | Callable[[Applier], None]"] | None


class ApplyWorker:
    """Applies folded units and commits on a thread of its own; see the module docstring."""

    def __init__(self, writer: Applier, name: str, depth: int = 4):
        self.writer = writer
        self.progress = Progress()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=depth)
        self._abort = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> ApplyWorker:
        self._thread.start()
        return self

    # -- the reader's side -----------------------------------------------------------------

    def apply(self, folded: Folded) -> None:
        """Stage and merge this unit (inside the open destination transaction). What needs no
        database (formatting rows) is done here, on the reader's thread."""
        self._put((_APPLY, self.writer.prepare(folded)))

    def commit(self, lsn: Lsn) -> None:
        """Commit what was applied, with checkpoint ``lsn`` (the end of a source transaction)."""
        self._put((_COMMIT, lsn))

    def call(self, work: Callable[[Applier], None]) -> None:
        """Run ``work(writer)`` on the worker's thread, in order with the units around it (a schema
        change, a refresh: see ``follow.py``)."""
        self._put((_CALL, work))

    def drained(self, position: Lsn, last: bool = False) -> None:
        """Everything read up to ``position`` has been handed over and committed (or was nothing
        to apply): record ``position`` as the checkpoint and publish it once the worker gets here
        (``last``: at once, the stream ends; otherwise when due, see the module docstring)."""
        self._put((_DRAINED_LAST if last else _DRAINED, position))

    def check(self) -> None:
        """Raise, in the reader's thread, whatever ended the worker."""
        if self._error is not None:
            raise self._error
        if self._thread.ident is not None and not self._thread.is_alive() and not self._abort.is_set():
            raise RuntimeError("the apply worker ended unexpectedly")

    def finish(self) -> None:
        """Wait until everything handed over is done; then end."""
        self._put(_FINISH)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop without committing more; the open destination transaction is rolled back."""
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

    def _put(self, item: _Item) -> None:
        # Waits while the queue is full, watching for the worker's failure.
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- the worker's thread ---------------------------------------------------------------

    def _run(self) -> None:
        writer = self.writer
        progress = self.progress
        pending: Lsn | None = None  # a drained position not recorded yet
        recorded_at = 0.0
        try:
            while not self._abort.is_set():
                try:
                    due = recorded_at + RECORD_DRAINED_EVERY_S
                    wait = None if pending is None else max(0.0, due - time.monotonic())
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    assert pending is not None
                    item = (_DRAINED_LAST, pending)  # idle and due: record it now
                if self._abort.is_set() or item is _FINISH:
                    break
                kind, arg = item
                if isinstance(arg, Folded):
                    pending = None  # the commit that follows records a later position
                    writer.apply(arg)
                elif not isinstance(arg, Lsn):  # _CALL: a schema change, a refresh (within a transaction)
                    pending = None  # the commit that follows records a later position
                    arg(writer)
                elif kind == _COMMIT:
                    pending = None
                    writer.commit(arg)
                    progress.committed = arg
                    progress.commits += 1
                elif arg is not None and arg > max(progress.committed or Lsn(0), progress.drained or Lsn(0)):
                    pending = arg
                    if kind == _DRAINED_LAST or time.monotonic() >= recorded_at + RECORD_DRAINED_EVERY_S:
                        writer.commit(pending)  # nothing is applied: this writes the checkpoint alone
                        progress.drained, pending = pending, None
                        recorded_at = time.monotonic()
        except BaseException as e:  # handed to the reader thread by check()
            self._error = e
        finally:
            # Whatever was applied but not committed does not stay (normally nothing is left).
            writer.rollback()
