"""The transience rule for a failover's read-only node (issue 14): by the server's words, because
SQLSTATE 55000 (object not in prerequisite state) also covers errors no retry can cure."""

from __future__ import annotations

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
