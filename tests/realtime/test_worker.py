"""The apply worker on a real destination: applies and commits in order, reports only what it
committed, hands its errors to the reader, rolls back when aborted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from replicator.catalog import Catalog
from replicator.decoding.changes import Change, Column, Op, Relation, ReplicaIdentity
from replicator.decoding.fold import Folded, Folder
from replicator.destinations.base import Target
from replicator.destinations.postgres import PostgresSession
from replicator.lsn import Lsn
from replicator.realtime.worker import ApplyWorker
from tests.conftest import Database


def source_type(oid: int, typmod: int) -> tuple[str, Catalog]:
    """The source's type of a relation column, as the pipeline looks it up (a column whose type the
    destination's no longer holds is retyped: see schemasync.widen_types)."""
    return {20: "bigint", 23: "integer"}.get(oid, "text"), Catalog()

REL = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
    Column("id", 20, -1, True), Column("v", 25, -1, False),
))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def folded(*rows: tuple[str, str]) -> Folded:
    folder = Folder({("public", "t"): ("id",)})
    for r in rows:
        folder.change(Change(Op.INSERT, REL, r, None, Lsn(1), 1, NOW))
    (unit,) = folder.take()
    return unit


@pytest.fixture
def dest(dest_db: Database) -> Iterator[PostgresSession]:
    dest_db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text CHECK (v <> 'bad'))")
    with dest_db.session() as session:
        yield session


def worker(session: PostgresSession) -> ApplyWorker:
    table = session.describe(("public", "t"))
    assert table is not None
    writer = session.applier("job", "slot", {("public", "t"): Target(table, ("id",))},
                             source_type)
    return ApplyWorker(writer, name="test-apply").start()


def rows(db: Database) -> list[tuple[Any, ...]]:
    return db.fetchall("SELECT id, v FROM t ORDER BY id")


def checkpoint(db: Database) -> Any:
    return db.fetchone("SELECT lsn::text FROM _replicator.slot_checkpoints WHERE job = 'job'")


def test_applies_and_commits_in_order(dest: PostgresSession, dest_db: Database) -> None:
    w = worker(dest)
    w.apply(folded(("1", "a"), ("2", "b")))
    w.apply(folded(("3", "c")))  # a large source transaction: two units, one commit
    w.commit(Lsn(200))
    w.drained(Lsn(250))
    w.apply(folded(("4", "d")))  # applied, never committed: rolled back at the end
    w.finish()
    assert rows(dest_db) == [(1, "a"), (2, "b"), (3, "c")]
    # The drained position is recorded in the checkpoint before it is published (issue 9 item 9).
    assert w.progress.committed == Lsn(200) and checkpoint(dest_db) == "0/FA"
    assert w.progress.drained == Lsn(250) and w.progress.commits == 1
    assert dest.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_an_apply_error_reaches_the_reader_and_nothing_of_it_stays(
    dest: PostgresSession, dest_db: Database
) -> None:
    w = worker(dest)
    w.apply(folded(("1", "a")))
    w.commit(Lsn(100))
    w.apply(folded(("2", "b"), ("3", "bad")))
    with pytest.raises(psycopg.errors.CheckViolation):
        for _ in range(100):  # the reader sees the error at its next hand-over (or at finish)
            w.commit(Lsn(200))
            w.drained(Lsn(200))
        w.finish()
    w.abort()
    assert rows(dest_db) == [(1, "a")] and w.progress.committed == Lsn(100)
    assert w.progress.drained is None
    assert dest.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_abort_rolls_back_the_open_transaction(dest: PostgresSession, dest_db: Database) -> None:
    w = worker(dest)
    w.apply(folded(("1", "a")))
    w.abort()
    assert rows(dest_db) == [] and w.progress.committed is None
    assert dest.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_a_drained_position_is_recorded_before_it_is_published(
    dest: PostgresSession, dest_db: Database
) -> None:
    """What the source is told (``progress.drained``) is never ahead of the checkpoint, and idle
    positions are recorded at most once per RECORD_DRAINED_EVERY_S, the last one at the end."""
    w = worker(dest)
    w.drained(Lsn(300))  # the first one: recorded at once
    _until(lambda: w.progress.drained == Lsn(300))
    assert checkpoint(dest_db) == "0/12C"
    w.drained(Lsn(310))  # within the interval: waits for its turn, unpublished until recorded
    time.sleep(0.2)
    assert w.progress.drained == Lsn(300) and checkpoint(dest_db) == "0/12C"
    _until(lambda: w.progress.drained == Lsn(310))  # idle, then due: recorded without a new mark
    assert checkpoint(dest_db) == "0/136"
    w.drained(Lsn(320), last=True)  # the end of a stream: at once
    w.finish()
    assert w.progress.drained == Lsn(320) and checkpoint(dest_db) == "0/140"
    assert w.progress.commits == 0  # positions are not commits of changes


def test_a_commit_of_changes_supersedes_a_waiting_position(dest: PostgresSession, dest_db: Database) -> None:
    w = worker(dest)
    w.drained(Lsn(100))
    w.drained(Lsn(110))  # waits for its turn ...
    w.apply(folded(("1", "a")))  # ... and is dropped: the commit below records a later position
    w.commit(Lsn(150))
    w.finish()
    assert checkpoint(dest_db) == "0/96" and w.progress.committed == Lsn(150)
    assert rows(dest_db) == [(1, "a")]
