"""A slot's apply lag and counters as its pipeline sees them, for metrics, the progress line and
``replicator status`` (``replicator.lag`` has the definition).

The pipeline calls a few hooks, each once per read, per source transaction or per batch, never
per change: ``read`` (the commit time of the last transaction read), ``handed`` (a batch's
checkpoint was handed to the apply worker), ``observe`` (after each read: what the worker has
committed, and whether the stream is caught up) and ``sample_source_if_due`` (the source's WAL
position, every ``SAMPLE_EVERY_S``). Everything else (``sample`` for a scrape, ``lag`` for the
progress line, ``applied_through_now`` for the record ``status`` reads) only reads what the
hooks left, from any thread.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from replicator.lag import ApplyLag, SourceSlot, apply_lag, read_source_slots
from replicator.lsn import Lsn
from replicator.metrics import SlotSample

if TYPE_CHECKING:
    from replicator.realtime.pipeline import SlotStats
    from replicator.realtime.worker import Progress

SAMPLE_EVERY_S = 2.0  # how often the source's WAL position is asked for (one small query)


class LagTracker:
    def __init__(self, slot: str, stats: SlotStats, clock: Any = time.monotonic):
        self.slot = slot
        self.stats = stats
        self.clock = clock
        self.reconnects = 0
        self.caught_up = False
        # Everything the source committed before this is at the destination: the commit time of
        # the last transaction committed there, or the last moment the stream was caught up.
        self.applied_through: datetime | None = None
        self.last_commit: float | None = None  # Unix time of the last destination commit seen
        self.source: SourceSlot | None = None
        self._read_through: datetime | None = None
        self._dated: deque[tuple[Lsn, datetime | None]] = deque()  # handed, not committed yet
        self._progress: Progress | None = None
        self._commits_base = 0
        self._seen_commits = 0
        self._sampled_at: float | None = None

    # -- the pipeline's hooks (its thread) ----------------------------------------------------

    def read(self, commit_time: datetime) -> None:
        """The last source transaction of a read committed at ``commit_time``."""
        self._read_through = commit_time

    def handed(self, lsn: Lsn) -> None:
        """A batch ending with the last transaction read goes to the worker, checkpoint ``lsn``."""
        self._dated.append((lsn, self._read_through))

    def observe(self, progress: Progress, idle: bool) -> None:
        """After a read: ``progress`` is the current worker's; ``idle``: the read found nothing
        more and nothing read waits to be handed over."""
        if progress is not self._progress:  # a new worker (after a reconnect): its commits start at 0
            self._progress, self._commits_base, self._seen_commits = progress, self.stats.commits, 0
        committed = progress.committed
        dated = self._dated
        through = self.applied_through
        while dated and committed is not None and dated[0][0] <= committed:
            _, when = dated.popleft()
            if when is not None and (through is None or when > through):
                through = when
        self.applied_through = through
        if progress.commits != self._seen_commits:
            self._seen_commits = progress.commits
            self.last_commit = time.time()
        self.caught_up = idle and not dated
        if self.caught_up:
            # Everything committed so far is at the destination: if changes arrive now, the
            # destination is only as old as this moment, not as the last transaction applied.
            self.applied_through = datetime.now(UTC)

    def reset(self) -> None:
        """The stream resumes from its checkpoint: what was handed over is read again."""
        self.reconnects += 1
        self._dated.clear()
        self.caught_up = False

    def sample_source_if_due(self, conn: psycopg.Connection[Any]) -> None:
        now = self.clock()
        if self._sampled_at is not None and now - self._sampled_at < SAMPLE_EVERY_S:
            return
        self._sampled_at = now
        self.source = read_source_slots(conn, [self.slot]).get(self.slot)

    # -- readers (any thread) -----------------------------------------------------------------

    @property
    def commits(self) -> int:
        progress = self._progress
        return self._commits_base + (progress.commits if progress is not None else 0)

    @property
    def applied_lsn(self) -> Lsn:
        progress = self._progress
        if progress is None:
            return Lsn(0)
        return max(progress.committed or Lsn(0), progress.drained or Lsn(0))

    def applied_through_now(self) -> datetime | None:
        """Until when the destination holds everything the source committed, as of now."""
        return datetime.now(UTC) if self.caught_up else self.applied_through

    def lag(self) -> ApplyLag | None:
        """None until the source's position has been read once."""
        source = self.source
        if source is None:
            return None
        applied = self.applied_lsn
        return apply_lag(
            # The source was asked up to SAMPLE_EVERY_S ago: never count it behind what is applied.
            source_lsn=max(source.source_lsn, applied), applied_lsn=applied,
            applied_through=self.applied_through, now=datetime.now(UTC), caught_up=self.caught_up,
        )  # fmt: skip

    def sample(self) -> SlotSample:
        source = self.source
        return SlotSample(
            lag=self.lag(),
            retained_wal_bytes=source.retained_bytes if source is not None else None,
            changes=self.stats.changes,
            transactions=self.stats.transactions,
            commits=self.commits,
            reconnects=self.reconnects,
            last_commit=self.last_commit,
            applied_through=self.applied_through_now(),
        )
