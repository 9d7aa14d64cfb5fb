"""The transience rule: a failover's read-only node (issue 14), by the server's words, because SQLSTATE
55000 (object not in prerequisite state) also covers errors no retry can cure; races on a catalog row."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from replicator.errors import SourceError
from replicator.retry import is_transient
from tests.conftest import Database


def test_a_permanent_55000_is_not_retried(source_db: Database) -> None:
    with source_db.connect() as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('retry_rule_physical')")
        try:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("SELECT * FROM pg_logical_slot_peek_changes('retry_rule_physical', NULL, NULL)")
        finally:
            conn.execute("SELECT pg_drop_replication_slot('retry_rule_physical')")
    assert caught.value.sqlstate == "55000"
    assert not is_transient(caught.value)


def test_a_read_only_transaction_is_retried(source_db: Database) -> None:
    """What the heartbeat meets on a node still in recovery (25006)."""
    with source_db.connect() as conn:
        conn.execute("CREATE TABLE beat (t bigint)")
        conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("INSERT INTO beat VALUES (1)")
    assert caught.value.sqlstate == "25006"
    assert is_transient(caught.value)


@pytest.mark.parametrize(
    "message",
    [
        "cannot stream slot 's' from the source x: replication slots cannot be used on RO node",  # Aurora
        "cannot stream slot 's' from the source x: logical decoding cannot be used while in recovery",
    ],
)
def test_read_only_node_messages_are_retried(message: str) -> None:
    # What ReplicationStream raises for a FATAL answer to START_REPLICATION: a plain SourceError.
    assert is_transient(SourceError(message))
    wrong_level = "cannot stream slot 's': logical decoding requires wal_level >= logical"
    assert not is_transient(SourceError(wrong_level))


def _after_a_concurrent(db: Database, first: str, second: str) -> psycopg.Error:
    """What ``second`` fails with when it waited for another session's uncommitted ``first``, which
    then commits."""
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute(first)
        failed: list[psycopg.Error] = []

        def run_second() -> None:
            try:
                db.execute(second)
            except psycopg.Error as e:
                failed.append(e)

        waiter = threading.Thread(target=run_second)
        waiter.start()
        deadline = time.monotonic() + 30
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
        while not db.fetchone(waiting, (db.name,)):
            assert time.monotonic() < deadline, "the second statement never waited"
            time.sleep(0.02)
        other.execute("COMMIT")
        waiter.join(30)
    assert failed, f"{second!r} did not fail"
    return failed[0]


def test_a_race_on_a_catalog_row_is_transient(source_db: Database) -> None:
    """Two GRANTs on one table, two CREATE SCHEMA IF NOT EXISTS of one name: the later one fails, and
    trying again works. A duplicate key in a table of ours is no race, and stays permanent."""
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    updated = _after_a_concurrent(source_db, "GRANT SELECT ON t TO PUBLIC", "GRANT INSERT ON t TO PUBLIC")
    assert updated.sqlstate == "XX000" and "tuple concurrently updated" in str(updated)
    assert is_transient(updated)
    created = _after_a_concurrent(source_db, "CREATE SCHEMA s1", "CREATE SCHEMA IF NOT EXISTS s1")
    assert created.sqlstate == "23505" and is_transient(created)
    duplicate = _after_a_concurrent(source_db, "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (1)")
    assert duplicate.sqlstate == "23505" and not is_transient(duplicate)
