"""pgoutput decoding against a real server: exact text values, old tuples, TOAST, truncate, relation
changes."""

from __future__ import annotations

import struct

import pytest

from replicator.decoding import pgoutput
from replicator.decoding.changes import (
    UNCHANGED_TOAST,
    Begin,
    Change,
    Commit,
    DecodeError,
    Op,
    ReplicaIdentity,
    Truncate,
)
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.source.stream import ReplicationStream
from tests.decoding import types
from tests.replication import Replication, flush_lsn, read_until

BIG = "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200)"  # ~100 KB, incompressible


@pytest.fixture(autouse=True, params=["native", "python"])
def row_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C row decoder and read loop (when built) and with the pure-Python
    ones."""
    if request.param == "native":
        if pgoutput.NATIVE is None:
            pytest.skip("replicator._pgoutput is not built (python setup.py build_ext --inplace)")
    else:
        monkeypatch.setattr(pgoutput, "row_change", pgoutput.row_change_py)
        monkeypatch.setattr(pgoutput, "row_message", pgoutput.row_message_py)
        monkeypatch.setattr(PgOutputDecoder, "native_pump", lambda self: None)
    return str(request.param)


def changes(events: list) -> list[Change]:
    return [e for e in events if isinstance(e, Change)]


def test_values_are_the_types_text_output(replication: Replication) -> None:
    types.create(replication.db)
    replication.publish("kinds")
    slot = replication.slot("pgoutput")
    types.insert(replication.db, [types.ROW_1, types.ROW_2, types.ROW_3])
    replication.db.execute("INSERT INTO kinds (id, num, f4, f8) VALUES (4, 'NaN', '-Infinity', 'NaN')")

    got = [c.new for c in changes(replication.events(slot, "pgoutput"))]

    cols = ", ".join(f'"{c}"' for c in types.COLUMNS)
    assert got == types.text_rows(replication.db, f"SELECT {cols} FROM kinds ORDER BY id")
    assert got[0][types.COLUMNS.index("num")] == "12345678901234567890.000000000000000000001"
    assert got[0][types.COLUMNS.index("by")] == "\\x00ff5c0a"
    assert got[3][types.COLUMNS.index("num")] == "NaN"


def test_transactions_frame_changes_with_xid_lsns_and_commit_time(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    with replication.db.connect() as conn:
        with conn.transaction():
            xid = conn.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
            conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
            before = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]

    events = replication.events(slot, "pgoutput")

    assert [type(e) for e in events] == [Begin, Change, Change, Commit]
    begin, first, second, commit = events
    assert begin.xid == commit.xid == first.xid == xid
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert first.lsn < second.lsn < commit.commit_lsn
    assert begin.commit_time == first.commit_time == commit.commit_time >= before
    assert first.relation.names == ("id", "v") and first.relation.key_names() == ("id",)
    assert first.relation.replica_identity is ReplicaIdentity.DEFAULT


def test_update_of_key_carries_old_key_and_plain_update_none(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    replication.db.execute("INSERT INTO t VALUES (1, 'a')")
    replication.db.execute("UPDATE t SET v = 'b'")
    replication.db.execute("UPDATE t SET id = 2")
    replication.db.execute("DELETE FROM t")

    ins, upd, move, dele = changes(replication.events(slot, "pgoutput"))

    assert (upd.op, upd.new, upd.old) == (Op.UPDATE, ("1", "b"), None)
    assert (move.op, move.new, move.old) == (Op.UPDATE, ("2", "b"), ("1", None))
    assert move.key() == ("1",)
    assert (dele.op, dele.new, dele.old) == (Op.DELETE, None, ("2", None))


def test_unchanged_toast_value_is_marked_not_sent(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, n int, big text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    replication.db.execute(f"INSERT INTO t SELECT 1, 0, ({BIG})")
    replication.db.execute("UPDATE t SET n = 1")
    big = replication.db.fetchone("SELECT big FROM t")

    ins, upd = changes(replication.events(slot, "pgoutput"))

    assert len(big) > 100_000 and ins.new == ("1", "0", big)
    assert upd.new == ("1", "1", UNCHANGED_TOAST)


def test_replica_identity_full_sends_whole_old_row(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (a int, b text, big text); ALTER TABLE t REPLICA IDENTITY FULL")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    replication.db.execute(f"INSERT INTO t SELECT 1, 'x', ({BIG})")
    replication.db.execute("UPDATE t SET b = 'y'")
    big = replication.db.fetchone("SELECT big FROM t")
    replication.db.execute("DELETE FROM t")

    ins, upd, dele = changes(replication.events(slot, "pgoutput"))

    assert upd.relation.replica_identity is ReplicaIdentity.FULL
    assert all(c.is_key for c in upd.relation.columns)
    assert upd.old == ("1", "x", big)
    assert upd.new == ("1", "y", UNCHANGED_TOAST)
    assert dele.old == ("1", "y", big)


def test_truncate_carries_relations_and_options(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE a (id serial PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY REFERENCES a)"
    )
    replication.publish("a", "b")
    slot = replication.slot("pgoutput")
    replication.db.execute("TRUNCATE a, b")
    replication.db.execute("TRUNCATE a RESTART IDENTITY CASCADE")

    truncates = [e for e in replication.events(slot, "pgoutput") if isinstance(e, Truncate)]

    assert [sorted(r.table for r in t.relations) for t in truncates] == [["a", "b"], ["a", "b"]]
    assert [(t.cascade, t.restart_identity) for t in truncates] == [(False, False), (True, True)]
    assert truncates[0].op is Op.TRUNCATE


def test_added_column_changes_the_relation_mid_stream(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    replication.db.execute("INSERT INTO t VALUES (1)")
    replication.db.execute("ALTER TABLE t ADD COLUMN note varchar(10) DEFAULT 'n'")
    replication.db.execute("INSERT INTO t VALUES (2)")

    first, second = changes(replication.events(slot, "pgoutput"))

    assert first.relation.names == ("id",) and first.new == ("1",)
    assert second.relation.names == ("id", "note") and second.new == ("2", "n")
    assert second.relation.columns[1].typmod == 14  # varchar(10): 10 + 4 bytes of header
    assert second.relation.oid == first.relation.oid


def test_protocol_version_2_decodes_the_same(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    replication.db.execute("INSERT INTO t VALUES (1, 'a')")
    target = flush_lsn(replication.db)

    with ReplicationStream.open(replication.cfg, slot, PgOutputDecoder(["pub"], proto_version=2)) as s:
        v2 = read_until(s, target)
    assert v2 == replication.events(slot, "pgoutput")


def test_malformed_messages_raise_decode_error() -> None:
    decoder = PgOutputDecoder(["pub"])
    with pytest.raises(DecodeError, match="unexpected pgoutput message 'Z'"):
        decoder.decode(b"Z", 0)
    with pytest.raises(DecodeError, match="before its Relation message"):
        decoder.decode(b"I" + struct.pack(">I", 99) + b"N\x00\x00", 0)
    with pytest.raises(DecodeError, match="malformed pgoutput 'B'"):
        decoder.decode(b"B\x00", 0)
    with pytest.raises(ValueError, match="protocol version 4"):
        PgOutputDecoder(["pub"], proto_version=4)


def test_publication_names_are_quoted_identifiers() -> None:
    assert PgOutputDecoder(['Pub "x"', "b"]).options() == {
        "proto_version": "1",
        "publication_names": '"Pub ""x""","b"',
    }
