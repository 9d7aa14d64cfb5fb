"""The replication stream against a real server: incremental reads, keepalives, feedback, disconnects."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from replicator.connect import connect
from replicator.decoding.changes import Begin, Change, Commit, DecodeError
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.errors import SourceError
from replicator.lsn import Lsn
from replicator.source.stream import ReplicationLost, ReplicationStream, SlotInUse
from tests.replication import Replication, flush_lsn, read_until


@pytest.fixture(autouse=True, params=["C read loop", "psycopg read loop"])
def read_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """pgoutput streams are read by the C loop of replicator._pgoutput when it is built; every
    test here also runs with the loop that reads through psycopg (what other decoders use)."""
    if request.param == "C read loop":
        if PgOutputDecoder(["pub"]).native_pump() is None:
            pytest.skip("the C read loop is not in use here (python -m replicator.native says why)")
    else:
        monkeypatch.setattr(PgOutputDecoder, "native_pump", lambda self: None)
    return str(request.param)


def three_transactions(replication: Replication) -> str:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    for i in (1, 2, 3):
        replication.db.execute("INSERT INTO t VALUES (%s)", (i,))
    return slot


def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_large_transaction_streams_incrementally_in_bounded_memory(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    rows = 200_000
    replication.db.execute("INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, %s) i", (rows,))
    target = flush_lsn(replication.db)

    seen = 0
    batches = []
    tracemalloc.start()
    try:
        with replication.stream(slot, "pgoutput") as stream:
            while stream.position < target:
                events = stream.read(max_events=10_000, timeout=0.5)
                if events:  # the first ones come once the server has decoded the commit
                    batches.append([type(e) for e in events])
                seen += sum(1 for e in events if type(e) is Change)
                del events  # a caller applies a batch, then lets it go
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == rows
    assert batches[0][0] is Begin and Commit not in batches[0]  # events came before the commit did
    assert max(len(b) for b in batches) <= 10_000 + 1
    # All 200,000 rows held at once would take well over 100 MB (each ~500 bytes as Python objects).
    assert peak < 40 * 1024 * 1024, f"peak traced memory {peak / 2**20:.1f} MB"


def test_keepalives_are_answered_while_idle(replication: Replication) -> None:
    slot = three_transactions(replication)
    other = replication.slot("pgoutput")

    def stream_with_short_timeout(name: str) -> ReplicationStream:
        conn = connect(replication.cfg, "source", autocommit=True, replication=True)
        conn.execute("SET wal_sender_timeout = '1s'")  # user-settable since PostgreSQL 12
        # Periodic status updates far apart: only answers to the server's keepalives keep it alive.
        return ReplicationStream(conn, name, PgOutputDecoder(["pub"]), status_interval_s=600)

    with stream_with_short_timeout(slot) as answered, stream_with_short_timeout(other) as ignored:
        pid = replication.db.fetchone(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        until = time.monotonic() + 4
        while time.monotonic() < until:
            answered.read(timeout=0.3)
        assert (
            replication.db.fetchone(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            == pid
        )
        # The control: the server dropped the stream nobody read for 4 s (> wal_sender_timeout).
        assert not replication.db.fetchone(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (other,)
        )
        with pytest.raises(ReplicationLost, match="server closed the connection"):
            ignored.read(timeout=1)


def test_feedback_moves_the_slot_only_as_far_as_told(replication: Replication) -> None:
    slot = three_transactions(replication)
    created = replication.confirmed_flush(slot)

    with replication.stream(slot, "pgoutput", status_interval_s=0.1) as stream:
        commits = [e for e in read_until(stream, flush_lsn(replication.db)) if isinstance(e, Commit)]
        for _ in range(5):
            stream.read(timeout=0.2)  # keepalives and status updates go back and forth
        assert replication.confirmed_flush(slot) == created  # nothing confirmed, nothing moved

        stream.confirm(commits[0].end_lsn)
        wait_for(lambda: replication.confirmed_flush(slot) == commits[0].end_lsn)
        stream.read(timeout=0.5)
        assert replication.confirmed_flush(slot) == commits[0].end_lsn

        stream.confirm(Lsn(created))  # going back is ignored
        stream.confirm(stream.position)
        assert stream.confirmed == stream.position >= commits[2].end_lsn
        wait_for(lambda: replication.confirmed_flush(slot) == stream.position)


def test_terminated_walsender_is_transient_and_resumes_from_checkpoint(replication: Replication) -> None:
    slot = three_transactions(replication)
    with replication.stream(slot, "pgoutput") as stream:
        events = read_until(stream, flush_lsn(replication.db))
        checkpoint = [e for e in events if isinstance(e, Commit)][0].end_lsn  # the first one was applied
        stream.confirm(checkpoint)
        pid = replication.db.fetchone(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        replication.db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(ReplicationLost) as lost:
            for _ in range(20):
                stream.read(timeout=0.5)
    assert lost.value.transient and isinstance(lost.value, SourceError)
    assert "terminating connection due to administrator command" in str(lost.value)
    assert "reconnect and resume" in str(lost.value)

    wait_for(
        lambda: (
            not replication.db.fetchone(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
        )
    )
    with replication.stream(slot, "pgoutput", start=checkpoint) as stream:
        resumed = read_until(stream, flush_lsn(replication.db))
    assert [e.new for e in resumed if isinstance(e, Change)] == [("2",), ("3",)]
    assert resumed == events[3:]


def test_read_returns_when_idle(replication: Replication) -> None:
    slot = three_transactions(replication)
    with replication.stream(slot, "pgoutput") as stream:
        read_until(stream, flush_lsn(replication.db))
        started = time.monotonic()
        assert stream.read(timeout=0.3) == []
        assert time.monotonic() - started < 2


def test_unusable_slots_are_reported(replication: Replication) -> None:
    slot = three_transactions(replication)
    with pytest.raises(
        SourceError, match="cannot stream slot 'nope' from the source 127.0.0.1.*does not exist"
    ):
        replication.stream("nope", "pgoutput")
    with replication.stream(slot, "pgoutput"):
        with pytest.raises(SlotInUse, match="is active for PID") as busy:
            replication.stream(slot, "pgoutput")
    assert busy.value.transient  # our previous walsender may just not have exited yet


def test_errors_that_retrying_cannot_fix_are_not_transient(replication: Replication) -> None:
    slot = three_transactions(replication)
    replication.db.execute("DROP PUBLICATION pub")
    replication.db.execute("INSERT INTO t VALUES (4)")  # decoded with a catalog that has no "pub"
    with replication.stream(slot, "pgoutput") as stream, pytest.raises(SourceError) as failed:
        for _ in range(20):
            stream.read(timeout=0.5)
    assert not isinstance(failed.value, ReplicationLost) and not getattr(failed.value, "transient", False)
    assert 'publication "pub" does not exist' in str(failed.value)


def test_read_returns_as_soon_as_the_position_reaches_until(replication: Replication) -> None:
    slot = three_transactions(replication)
    target = flush_lsn(replication.db)
    with replication.stream(slot, "pgoutput") as stream:
        started = time.monotonic()
        events = []
        while stream.position < target:
            events += stream.read(max_events=10_000, timeout=30, until=target)
        took = time.monotonic() - started
        # Already there: returns at once, without waiting out the timeout.
        again = time.monotonic()
        assert stream.read(max_events=10_000, timeout=30, until=target) == []
        assert time.monotonic() - again < 1
    assert sum(1 for e in events if type(e) is Change) == 3
    assert took < 10, f"took {took:.1f}s: read() waited for its timeout"


def test_a_row_message_the_c_loop_cannot_decode_is_handed_back_and_reported(replication: Replication) -> None:
    slot = three_transactions(replication)
    decoder = PgOutputDecoder(["pub"])
    decoder._handlers[ord("R")] = lambda buf, lsn: ()  # type: ignore[assignment]  # forget every Relation
    with ReplicationStream.open(replication.cfg, slot, decoder) as stream:
        with pytest.raises(DecodeError, match=r"change for relation \d+ before its Relation message"):
            read_until(stream, flush_lsn(replication.db))


def test_both_read_loops_give_the_same_events(replication: Replication) -> None:
    """The C loop decodes Begin and Commit too (xid, LSNs, commit time) and keeps the decoder's
    transaction state; the psycopg loop decodes them in Python: the same events either way."""
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    with replication.db.connect() as conn:
        for i in range(1, 40):
            with conn.transaction():
                conn.execute("INSERT INTO t VALUES (%s, 'a')", (i,))
                conn.execute("UPDATE t SET v = 'b' WHERE id = %s", (i // 2,))
    target = flush_lsn(replication.db)

    def events(native: bool) -> tuple[list[object], Lsn]:
        decoder = PgOutputDecoder(["pub"])
        if not native:
            decoder.native_pump = lambda: None  # type: ignore[method-assign]
        with ReplicationStream.open(replication.cfg, slot, decoder) as stream:
            got = read_until(stream, target, batch=7)  # small reads: the state carries across them
            assert not decoder.in_transaction
            return got, stream.position

    c_events, c_position = events(True)
    py_events, py_position = events(False)
    assert c_events == py_events and c_position == py_position
    assert sum(type(e) is Commit for e in c_events) == 39
    begins = [e for e in c_events if type(e) is Begin]
    commits = [e for e in c_events if type(e) is Commit]
    assert [b.final_lsn for b in begins] == [c.commit_lsn for c in commits]
    assert all(
        b.commit_time == c.commit_time and b.xid == c.xid for b, c in zip(begins, commits, strict=True)
    )
