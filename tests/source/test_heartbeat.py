"""The heartbeat against a real server: the table, the timing, and the slot moving on an idle database."""

from __future__ import annotations

import time

import pytest

from replicator.config.extractor import Heartbeat
from replicator.decoding.changes import Change, Commit
from replicator.errors import SourceError
from replicator.source.heartbeat import HeartbeatWriter, ensure_heartbeat_table
from replicator.source.publication import PublishedTable, ensure_publication
from tests.replication import Replication, flush_lsn, read_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_table_is_created_in_the_arcion_shape(replication: Replication) -> None:
    hb = Heartbeat.model_validate({"schema": "ops", "table-name": "beat", "column-name": "ts"})
    replication.db.execute("CREATE SCHEMA ops")
    with replication.db.connect() as conn:
        assert ensure_heartbeat_table(conn, hb) == PublishedTable("ops", "beat")
        ensure_heartbeat_table(conn, hb)  # idempotent
    assert replication.db.fetchall(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), i.indisprimary FROM pg_attribute a "
        "JOIN pg_index i ON i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey) WHERE a.attrelid = "
        "'ops.beat'::regclass"
    ) == [("ts", "bigint", True)]


def test_default_names_and_wrong_column_or_catalog(replication: Replication) -> None:
    with replication.db.connect() as conn:
        assert ensure_heartbeat_table(conn, Heartbeat()) == PublishedTable(
            "public", "replicate_io_cdc_heartbeat"
        )
        assert replication.db.fetchall(
            "SELECT attname FROM pg_attribute WHERE attrelid = "
            "'replicate_io_cdc_heartbeat'::regclass AND attnum > 0"
        ) == [("timestamp",)]
        with pytest.raises(SourceError, match="exists without a column 'ts'.*column-name"):
            ensure_heartbeat_table(conn, Heartbeat.model_validate({"column-name": "ts"}))
        with pytest.raises(SourceError, match="heartbeat.catalog is 'other' but the source database is"):
            ensure_heartbeat_table(conn, Heartbeat.model_validate({"catalog": "other"}))


def test_tick_writes_once_per_interval(replication: Replication) -> None:
    hb = Heartbeat.model_validate({"interval-ms": 5000})
    clock = FakeClock()
    with replication.db.connect() as conn:
        ensure_heartbeat_table(conn, hb)
        writer = HeartbeatWriter(conn, hb, clock=clock)
        before = int(time.time() * 1000)
        assert writer.tick() is True
        first = replication.db.fetchall('SELECT "timestamp" FROM replicate_io_cdc_heartbeat')
        clock.now += 4.9
        assert writer.tick() is False
        clock.now += 0.2
        time.sleep(0.01)
        assert writer.tick() is True
        second = replication.db.fetchall('SELECT "timestamp" FROM replicate_io_cdc_heartbeat')
    assert len(first) == len(second) == 1  # one row, moved forward
    assert before <= first[0][0] < second[0][0] <= int(time.time() * 1000)


def test_heartbeat_moves_the_slot_of_an_idle_database(replication: Replication) -> None:
    hb = Heartbeat()
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    with replication.db.connect() as conn:
        beat_table = ensure_heartbeat_table(conn, hb)
        ensure_publication(conn, "pub", [PublishedTable("public", "t"), beat_table])
    slot = replication.slot("pgoutput")
    created = replication.confirmed_flush(slot)

    with replication.stream(slot, "pgoutput") as stream, replication.db.connect() as conn:
        writer = HeartbeatWriter(conn, hb)
        writer.tick()
        events = read_until(stream, flush_lsn(replication.db))
        stream.confirm(stream.position)  # the caller applied the heartbeat and checkpointed
        deadline = time.monotonic() + 10
        while replication.confirmed_flush(slot) != stream.position and time.monotonic() < deadline:
            stream.read(timeout=0.1)

    [beat] = [e for e in events if isinstance(e, Change)]
    assert beat.relation.table == "replicate_io_cdc_heartbeat"
    commit = [e for e in events if isinstance(e, Commit)][0]
    assert replication.confirmed_flush(slot) >= commit.end_lsn > created


def test_writers_of_several_slots_share_the_one_row(replication: Replication) -> None:
    import threading

    hb = Heartbeat()
    with replication.db.connect() as conn:
        ensure_heartbeat_table(conn, hb)
    conns = [replication.db.connect() for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(conns))

    def write(conn: object) -> None:
        writer = HeartbeatWriter(conn, hb)  # type: ignore[arg-type]
        try:
            start.wait()
            for _ in range(20):  # the first writes race to insert, the next ones to update
                writer.beat()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert not errors, errors
    assert replication.db.fetchone("SELECT count(*) FROM replicate_io_cdc_heartbeat") == 1
