"""A slot's lag as its pipeline sees it: the hooks' bookkeeping, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from replicator.lag import SourceSlot
from replicator.lsn import Lsn
from replicator.realtime.lagtrack import LagTracker
from replicator.realtime.pipeline import SlotStats
from replicator.realtime.worker import Progress


def _source(lsn: int) -> SourceSlot:
    return SourceSlot("s", Lsn(lsn), 123, Lsn(0), True, "reserved", datetime.now(UTC))


def test_a_batch_dates_the_destination_only_once_the_worker_committed_it() -> None:
    stats, progress = SlotStats(), Progress()
    lag = LagTracker("s", stats)
    lag.source = _source(1000)
    old = datetime.now(UTC) - timedelta(seconds=30)
    lag.read(old)
    lag.handed(Lsn(500))
    lag.observe(progress, idle=False)
    assert lag.applied_through is None and not lag.caught_up
    progress.committed, progress.commits = Lsn(500), 1
    lag.observe(progress, idle=False)
    assert lag.applied_through == old and lag.last_commit is not None and lag.commits == 1
    sample = lag.sample()
    assert sample.lag is not None and 29 < (sample.lag.seconds or 0) < 40 and sample.lag.bytes == 500


def test_caught_up_is_zero_and_a_change_after_a_quiet_hour_is_not_an_hour_behind() -> None:
    stats, progress = SlotStats(), Progress()
    lag = LagTracker("s", stats)
    lag.source = _source(1000)
    lag.read(datetime.now(UTC) - timedelta(hours=1))  # the last transaction, an hour ago
    lag.handed(Lsn(1000))
    progress.committed, progress.commits = Lsn(1000), 1
    lag.observe(progress, idle=True)
    sample = lag.sample()
    assert lag.caught_up and sample.lag is not None and sample.lag.seconds == 0
    # A new transaction arrives and is being applied: the destination is seconds old, not an hour.
    lag.read(datetime.now(UTC))
    lag.handed(Lsn(2000))
    lag.source = _source(2000)
    lag.observe(progress, idle=False)
    behind = lag.lag()
    assert behind is not None and behind.seconds is not None and behind.seconds < 5 and behind.bytes == 1000


def test_commits_count_on_across_a_new_worker_and_a_reconnect_forgets_what_was_handed() -> None:
    stats = SlotStats()
    lag = LagTracker("s", stats)
    first = Progress(committed=Lsn(10), commits=3)
    lag.observe(first, idle=False)
    assert lag.commits == 3
    lag.handed(Lsn(20))
    lag.reset()  # the stream failed: the pipeline adds the worker's commits, a new worker starts
    stats.commits += first.commits
    assert lag.commits == 3 and lag.reconnects == 1
    second = Progress()
    lag.observe(second, idle=True)
    assert lag.caught_up and lag.commits == 3
    second.commits = 2
    assert lag.commits == 5
