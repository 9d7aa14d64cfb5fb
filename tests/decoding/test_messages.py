"""Logical decoding messages (pg_logical_emit_message) through both decoders: the same events.

pgoutput runs with the C read loop (which hands every non-row message back to Python) and
without it; wal2json decodes its ``M`` actions. All three must give identical ``Message`` events,
in order with the transaction's changes.
"""

from __future__ import annotations

import pytest

from replicator.decoding import pgoutput
from replicator.decoding.changes import Begin, Change, Commit, Event, Message
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.lsn import Lsn
from replicator.source.stream import ReplicationStream
from tests.replication import Replication, flush_lsn, read_until

CONTENT = '{"tag": "ALTER TABLE", "note": "é\\n\\"quoted\\" \\\\ tab\t"}'


def _emit(replication: Replication) -> tuple[Lsn, Lsn, int]:
    with replication.db.connect() as conn:
        with conn.transaction():
            xid = conn.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO t VALUES (1, 'before')")
            in_txn = conn.execute(
                "SELECT pg_logical_emit_message(true, 'replicator.ddl', %s::text)", (CONTENT,)
            ).fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO t VALUES (2, 'after')")
        outside = conn.execute("SELECT pg_logical_emit_message(false, 'other', 'plain')").fetchone()[0]  # type: ignore[index]
        with conn.transaction():  # a transaction with nothing but a message (no published change)
            conn.execute("SELECT pg_logical_emit_message(true, 'replicator.ddl', 'alone')")
        # Rolled back: its message never arrives.
        conn.execute("BEGIN; SELECT pg_logical_emit_message(true, 'replicator.ddl', 'rolled back'); ROLLBACK")
    return Lsn(in_txn), Lsn(outside), int(xid)


def _read(replication: Replication, slot: str, plugin: str) -> list[Event]:
    target = flush_lsn(replication.db)
    if plugin == "pgoutput":
        decoder = PgOutputDecoder([replication.publication], messages=True)
        with ReplicationStream.open(replication.cfg, slot, decoder) as stream:
            return read_until(stream, target)
    with replication.stream(slot, plugin, ["t"]) as stream:
        return read_until(stream, target)


@pytest.mark.parametrize("plugin", ["pgoutput-native", "pgoutput-python", "wal2json"])
def test_messages_arrive_in_order_with_the_changes(
    replication: Replication, plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if plugin == "pgoutput-python":
        monkeypatch.setattr(PgOutputDecoder, "native_pump", lambda self: None)
    elif plugin == "pgoutput-native" and pgoutput.NATIVE is None:
        pytest.skip("replicator._pgoutput is not built")
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.publish("t")
    slot = replication.slot(plugin.split("-")[0])
    in_txn, outside, xid = _emit(replication)

    events = _read(replication, slot, plugin.split("-")[0])

    shapes = [type(e).__name__ for e in events]
    assert shapes == [
        "Begin",
        "Change",
        "Message",
        "Change",
        "Commit",
        "Message",
        "Begin",
        "Message",
        "Commit",
    ], shapes
    first = events[2]
    assert first == Message("replicator.ddl", CONTENT.encode(), True, in_txn, xid)
    assert isinstance(events[1], Change) and isinstance(events[3], Change)
    assert events[1].lsn < first.lsn <= events[3].lsn  # a message's LSN is the end of its record
    assert events[5] == Message("other", b"plain", False, outside, 0)
    alone = events[7]
    assert isinstance(alone, Message) and alone.content == b"alone" and alone.transactional
    begin, commit = events[6], events[8]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert alone.xid == begin.xid and alone.lsn <= commit.commit_lsn


def test_pgoutput_asks_for_messages_only_when_told(replication: Replication) -> None:
    assert "messages" not in PgOutputDecoder(["p"]).options()
    assert PgOutputDecoder(["p"], messages=True).options()["messages"] == "true"
