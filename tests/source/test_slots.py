"""Slots against a real server: exported snapshots meet the stream exactly; reuse is validated."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from replicator.decoding.changes import Change
from replicator.errors import SourceError
from replicator.lsn import Lsn
from replicator.source.slots import (
    SnapshotSlot,
    check_slot,
    create_slot,
    drop_slot,
    ensure_slot,
    get_slot,
    wal2json_accepts,
)
from tests.replication import Replication, flush_lsn, read_until


def set_snapshot(name: str) -> sql.Composed:
    return sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(name))


def test_exported_snapshot_and_stream_meet_exactly(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    replication.publish("t")
    replication.db.execute("INSERT INTO t SELECT generate_series(1, 3)")

    with SnapshotSlot.create(replication.cfg, "snap_slot", "pgoutput") as created:
        replication.slots.append(created.slot)
        replication.db.execute("INSERT INTO t VALUES (4)")  # after the snapshot: only the stream has it
        with replication.db.connect() as worker:
            worker.autocommit = False
            worker.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            worker.execute(set_snapshot(created.snapshot_name))
            in_snapshot = [r[0] for r in worker.execute("SELECT id FROM t ORDER BY id")]
            worker.rollback()
        point = created.consistent_point
    # Once the slot's connection is closed the snapshot is gone.
    with replication.db.connect() as late:
        late.autocommit = False
        late.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            late.execute(set_snapshot(created.snapshot_name))

    with replication.stream("snap_slot", "pgoutput", start=point) as stream:
        streamed = [e.new for e in read_until(stream, flush_lsn(replication.db)) if isinstance(e, Change)]
    assert in_snapshot == [1, 2, 3] and streamed == [("4",)]
    assert isinstance(point, Lsn)


def test_ensure_creates_then_reuses_and_validates(replication: Replication) -> None:
    with replication.db.connect() as conn:
        info, created = ensure_slot(conn, "reuse_me", "wal2json")
        replication.slots.append("reuse_me")
        again, created_again = ensure_slot(conn, "reuse_me", "wal2json")
        assert (created, created_again) == (True, False)
        assert again.plugin == "wal2json" and again.database == replication.db.name and not again.active
        assert isinstance(again.confirmed_flush_lsn, Lsn) and again.restart_lsn is not None

        with pytest.raises(SourceError) as wrong:
            ensure_slot(conn, "reuse_me", "pgoutput")
    text = str(wrong.value)
    assert "decodes with wal2json, but replication-slots says pgoutput" in text
    assert "replication-slots: {reuse_me: [wal2json]}" in text
    assert "SELECT pg_drop_replication_slot('reuse_me');" in text


def test_slot_of_another_database_is_refused(replication: Replication) -> None:
    with replication.db.connect() as conn:
        create_slot(conn, "elsewhere", "pgoutput")
        replication.slots.append("elsewhere")
        slot = get_slot(conn, "elsewhere")
    assert slot is not None
    with pytest.raises(SourceError, match="belongs to database .* not 'postgres'"):
        check_slot(slot, "pgoutput", "postgres")


def test_create_without_privilege_says_what_to_grant(replication: Replication) -> None:
    replication.db.execute("DROP ROLE IF EXISTS plain_user; CREATE ROLE plain_user LOGIN PASSWORD 'pw-plain'")
    try:
        with psycopg.connect(
            replication.db.cluster.conninfo(replication.db.name, user="plain_user", password="pw-plain"),
            autocommit=True,
        ) as conn:
            with pytest.raises(SourceError, match="REPLICATION attribute .* rds_replication"):
                create_slot(conn, "not_allowed", "pgoutput")
    finally:
        replication.db.execute("DROP ROLE plain_user")


def test_drop(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int)")
    replication.publish("t")
    slot = replication.slot("pgoutput")
    with replication.stream(slot, "pgoutput"), replication.db.connect() as conn:
        with pytest.raises(SourceError, match="cannot drop replication slot .* is active"):
            drop_slot(conn, slot)
    with replication.db.connect() as conn:
        assert drop_slot(conn, "no_such_slot") is False
        with pytest.raises(SourceError, match="does not exist"):
            drop_slot(conn, "no_such_slot", missing_ok=False)


def test_wal2json_option_probe(replication: Replication) -> None:
    slot = replication.slot("wal2json")
    with replication.db.connect() as conn:
        assert wal2json_accepts(conn, slot, "include-xids") is True
        assert wal2json_accepts(conn, slot, "no-such-option") is False
