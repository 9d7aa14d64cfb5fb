"""The SQL log reader against a real server: the stream's events, exactly once, advancing only when told."""

from __future__ import annotations

import time

import pytest

from replicator.decoding.changes import Begin, Change, Commit
from replicator.errors import SourceError
from replicator.source.stream import SlotInUse
from tests.replication import Replication, flush_lsn, read_until


def workload(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.db.execute("CREATE TABLE other (id int)")
    replication.publish("t")


def run(replication: Replication, n: int = 3) -> None:
    for i in range(1, n + 1):
        replication.db.execute("INSERT INTO t VALUES (%s, 'v')", (i,))
        replication.db.execute("INSERT INTO other VALUES (%s)", (i,))  # empty transactions for t
    replication.db.execute("UPDATE t SET id = id + 100 WHERE id = 1")
    replication.db.execute("DELETE FROM t WHERE id = 2")
    replication.db.execute("TRUNCATE t")


@pytest.mark.parametrize("plugin", ["pgoutput", "wal2json"])
def test_same_events_as_the_stream(replication: Replication, plugin: str) -> None:
    workload(replication)
    slot = replication.slot(plugin)
    run(replication)

    streamed = replication.events(slot, plugin, ["t"], reader="stream")
    polled = replication.events(slot, plugin, ["t"], reader="sql")

    assert len([e for e in streamed if isinstance(e, Change)]) == 5
    assert polled == streamed


def test_delivers_each_transaction_once_and_advances_only_when_told(replication: Replication) -> None:
    workload(replication)
    slot = replication.slot("pgoutput")
    created = replication.confirmed_flush(slot)
    run(replication, 2)

    with replication.sql_reader(slot, "pgoutput") as reader:
        first = read_until(reader, flush_lsn(replication.db))
        for _ in range(3):  # more polls, nothing confirmed: nothing comes again
            assert reader.read(timeout=0.3) == []
        assert replication.confirmed_flush(slot) == created

        commits = [e for e in first if isinstance(e, Commit)]
        reader.confirm(commits[0].end_lsn)
        reader.read(timeout=0.3)  # the next poll moves the slot
        assert replication.confirmed_flush(slot) == commits[0].end_lsn

        replication.db.execute("INSERT INTO t VALUES (50, 'new')")
        more = read_until(reader, flush_lsn(replication.db))
        assert [e.new for e in more if isinstance(e, Change)] == [("50", "new")]
        reader.confirm(reader.position)
    assert replication.confirmed_flush(slot) == reader.position  # close pushes the last confirm


def test_resumes_from_the_callers_checkpoint(replication: Replication) -> None:
    workload(replication)
    slot = replication.slot("wal2json")
    run(replication, 3)
    with replication.sql_reader(slot, "wal2json", ["t"]) as reader:
        events = read_until(reader, flush_lsn(replication.db))
    checkpoint = [e for e in events if isinstance(e, Commit)][1].end_lsn

    with replication.sql_reader(slot, "wal2json", ["t"], start=checkpoint) as reader:
        resumed = read_until(reader, flush_lsn(replication.db))

    assert resumed == events[6:]
    assert replication.confirmed_flush(slot) == checkpoint  # the checkpoint was confirmed on open


def test_large_transactions_come_in_pieces_and_slow_confirmers_still_progress(
    replication: Replication,
) -> None:
    workload(replication)
    slot = replication.slot("pgoutput")
    replication.db.execute("INSERT INTO t SELECT i, 'x' FROM generate_series(1, 5000) i")
    for i in range(20):
        replication.db.execute("INSERT INTO t VALUES (%s, 'y')", (10_000 + i,))
    target = flush_lsn(replication.db)

    # fetch_rows far below the backlog and no confirm at all: polls must still get past what was seen.
    with replication.sql_reader(slot, "pgoutput", fetch_rows=3) as reader:
        first = reader.read(max_events=1000, timeout=5)
        rest = read_until(reader, target, batch=1000)

    assert type(first[0]) is Begin and len(first) == 1000 and not any(isinstance(e, Commit) for e in first)
    changes = [e for e in first + rest if isinstance(e, Change)]
    assert len(changes) == 5020 and len({c.new for c in changes}) == 5020


def test_missing_slot_is_reported(replication: Replication) -> None:
    workload(replication)
    with pytest.raises(SourceError, match="replication slot 'nope' does not exist on the source 127.0.0.1"):
        replication.sql_reader("nope", "pgoutput")


def test_slot_streamed_elsewhere_is_a_transient_error(replication: Replication) -> None:
    workload(replication)
    slot = replication.slot("pgoutput")
    with replication.stream(slot, "pgoutput"), replication.sql_reader(slot, "pgoutput") as reader:
        with pytest.raises(SlotInUse, match=f"reading slot '{slot}' .* is active for PID") as busy:
            reader.read(timeout=1)
    assert busy.value.transient


def test_read_returns_as_soon_as_the_position_reaches_until(replication: Replication) -> None:
    workload(replication)
    slot = replication.slot("pgoutput")
    replication.db.execute("INSERT INTO t VALUES (1000, 'z')")
    target = flush_lsn(replication.db)
    with replication.sql_reader(slot, "pgoutput") as reader:
        events = []
        started = time.monotonic()
        while reader.position < target:
            events += reader.read(max_events=10_000, timeout=30, until=target)
        assert time.monotonic() - started < 10
        again = time.monotonic()
        assert reader.read(max_events=10_000, timeout=30, until=target) == []
        assert time.monotonic() - again < 1
    assert any(isinstance(e, Change) and e.new and e.new[0] == "1000" for e in events)
