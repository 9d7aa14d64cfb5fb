"""The destination side of a slot's pipeline, on its own thread: the destination works while we read.

PostgreSQL's own logical replication decodes in the walsender and applies in a separate worker
process, in parallel. Here the slot's thread reads, decodes and folds (``fold.Folder``, which
never touches the destination) and hands what is folded to an ``ApplyWorker``, which owns the
destination session: its ``Applier`` stages, merges and commits. So the destination merges one
batch while the next one is read and folded, and stays busy.

Group commit. The reader hands a batch over when the worker is idle (``busy`` is False), and
keeps folding while it is busy: what arrived while the last commit ran goes in the next one, so
batches grow only while a backlog exists, and an idle worker gets every transaction as soon as
the stream has nothing more ready. ``wake_fd`` becomes readable when the worker goes idle (and
when it has something new to confirm), so a reader waiting on the stream's socket wakes up for
it too. The queue between them is short (``depth`` items of at most ``fetch-size-rows`` changes
each), so memory stays bounded and the reader waits when it is that far ahead. Items are applied
in order: units, commits (the checkpoint LSN commits with the units before it: whole source
transactions only, as the reader decides), and "drained" marks (everything read up to a stream
position is committed: the source may move there, which keeps idle slots current).

A drained position is written into the checkpoint before it is published, so the source is never
told more than the destination's state records: a later start that finds the slot ahead of the
checkpoint then knows that changes were really skipped (by another consumer, or a recreated
slot), instead of suspecting it after every clean restart. Idle positions cost a destination
commit each, so they are recorded at most every ``RECORD_DRAINED_EVERY_S`` (and always the last
one, at the end); a commit of changes supersedes any position waiting to be recorded.

Durability (what the source may be told). The writer commits with ``synchronous_commit = off``
(batching makes that cheap, and a crash of the destination loses rows and checkpoint together),
so a commit is visible before it is durable. Each commit returns its place in the destination's
WAL (``CommitMark``); a checkpoint or drained position is published in ``progress`` (what the
reader confirms to the source) only once the destination's flush position has passed it, as
PostgreSQL's own apply worker does. Commits in a row learn the flush position for free; an
idle worker asks for it every ``durable_poll_s``; ``finish()`` makes everything durable at once.
Every position published is one this worker committed (drained ones too, recorded as the
checkpoint): by the time its commit is flushed, so is whatever an earlier run left unflushed.

On any failure the worker stops; the reader raises its error, and the open destination
transaction is rolled back: the stream resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from replicator.decoding.fold import Folded
from replicator.destinations.base import Applier, CommitMark
from replicator.lsn import Lsn

log = logging.getLogger(__name__)

DURABLE_POLL_S = 0.05  # how often an idle worker asks how far the destination has flushed
# How often an idle stream's position is written into the checkpoint (and then confirmed).
RECORD_DRAINED_EVERY_S = 1.0


@dataclass
class Progress:
    """What the worker has done, read by the reader thread (plain attribute reads)."""

    committed: Lsn | None = None  # checkpoint of the last destination commit that is durable
    drained: Lsn | None = None  # a stream position up to which everything read is committed, recorded
    # as the checkpoint, and durable
    applied: Lsn | None = None  # checkpoint of the last destination commit (visible, maybe not durable)
    commits: int = 0


_APPLY, _COMMIT, _DRAINED, _DRAINED_LAST, _CALL = 0, 1, 2, 3, 4
_FINISH = None  # everything before it is done: end

_Item = tuple[int, "Folded | Lsn | Callable[[Applier], None]"] | None


class ApplyWorker:
    """Applies folded units and commits on a thread of its own; see the module docstring."""

    def __init__(self, writer: Applier, name: str, depth: int = 2, durable_poll_s: float = DURABLE_POLL_S):
        self.writer = writer
        self.progress = Progress()
        self.durable_poll_s = durable_poll_s
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=depth)
        self._abort = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._outstanding = 0  # items handed over and not done
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # (destination position, is a checkpoint, source position): published once durable.
        self._unflushed: deque[tuple[int, bool, Lsn]] = deque()
        self._flushed = 0  # the destination's flush position, as last heard

    def start(self) -> ApplyWorker:
        self._thread.start()
        return self

    # -- the reader's side -----------------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """Readable when the worker went idle or has new durable progress (see the module docstring)."""
        return self._wake_r

    @property
    def busy(self) -> bool:
        """Whether anything handed over is not done yet."""
        return self._outstanding > 0

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
        and that is durable (``last``: recorded at once, the stream ends; otherwise when due, see
        the module docstring)."""
        self._put((_DRAINED_LAST if last else _DRAINED, position))

    def check(self) -> None:
        """Raise, in the reader's thread, whatever ended the worker."""
        if self._error is not None:
            raise self._error
        if self._thread.ident is not None and not self._thread.is_alive() and not self._abort.is_set():
            raise RuntimeError("the apply worker ended unexpectedly")

    def finish(self) -> None:
        """Wait until everything handed over is done and durable; then end."""
        self._put(_FINISH)
        self._thread.join()
        self._close_pipe()
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
        self._close_pipe()

    def offer_drained(self, position: Lsn) -> bool:
        """``drained(position)`` if the queue has room, else nothing (False): a position is only
        worth recording, never worth waiting for. A reader blocked here behind a stuck
        destination would stop its heartbeat, WAL watch and source sampling (the lag in bytes)."""
        self.check()
        with self._lock:
            self._outstanding += 1
        try:
            self._queue.put_nowait((_DRAINED, position))
        except queue.Full:
            with self._lock:
                self._outstanding -= 1
            return False
        return True

    def _put(self, item: _Item) -> None:
        # Waits while the queue is full, watching for the worker's failure.
        with self._lock:
            self._outstanding += 1
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # -- the worker's thread ---------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # full (the reader has not looked yet) or closed: a wake-up is pending anyway

    def _done(self) -> None:
        with self._lock:
            self._outstanding -= 1
            idle = self._outstanding == 0
        if idle:
            self._wake()

    def _run(self) -> None:
        writer = self.writer
        progress = self.progress
        pending: Lsn | None = None  # a drained position not recorded yet
        recorded = Lsn(0)  # the last checkpoint written (by a commit of changes or a position)
        recorded_at = 0.0
        try:
            while not self._abort.is_set():
                waits = []
                if pending is not None:
                    waits.append(max(0.0, recorded_at + RECORD_DRAINED_EVERY_S - time.monotonic()))
                if self._unflushed:
                    waits.append(self.durable_poll_s)
                try:
                    item = self._queue.get(timeout=min(waits) if waits else None)
                    handed = True
                except queue.Empty:
                    if pending is None or time.monotonic() < recorded_at + RECORD_DRAINED_EVERY_S:
                        self._published(writer.durability().flushed)
                        continue
                    item, handed = (_DRAINED_LAST, pending), False  # idle and due: record it now
                if self._abort.is_set():
                    break
                if item is _FINISH:
                    if self._unflushed:
                        self._published(writer.sync())
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
                    self._committed(writer.commit(arg), True, arg)
                    recorded = arg
                    progress.commits += 1
                elif arg > recorded:
                    pending = arg
                    progress.applied = arg
                    if kind == _DRAINED_LAST or time.monotonic() >= recorded_at + RECORD_DRAINED_EVERY_S:
                        # Nothing is applied: this writes the checkpoint alone.
                        self._committed(writer.commit(pending), False, pending)
                        recorded, pending = pending, None
                        recorded_at = time.monotonic()
                if handed:
                    self._done()
        except BaseException as e:  # handed to the reader thread by check()
            self._error = e
        finally:
            # Whatever was applied but not committed does not stay (normally nothing is left).
            writer.rollback()
            self._wake()

    def _committed(self, mark: CommitMark, changes: bool, lsn: Lsn) -> None:
        self._unflushed.append((mark.at, changes, lsn))
        self.progress.applied = lsn
        self._published(mark.flushed)

    def _published(self, flushed: int | None) -> None:
        """Publish what the destination's flush position ``flushed`` (None: nothing new heard)
        has made durable."""
        if flushed is not None and flushed > self._flushed:
            self._flushed = flushed
        unflushed = self._unflushed
        progress = self.progress
        moved = False
        while unflushed and unflushed[0][0] <= self._flushed:
            _, checkpoint, lsn = unflushed.popleft()
            if checkpoint:
                progress.committed = lsn
            else:
                progress.drained = lsn
            moved = True
        if moved:
            self._wake()

