"""The apply worker on a real destination: commits only whole source transactions, reports only
what it committed, hands its errors to the reader, rolls back when aborted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from replicator import state
from replicator.decoding.changes import Begin, Change, Column, Commit, Event, Op, Relation, ReplicaIdentity
from replicator.destinations.postgres import describe_table
from replicator.lsn import Lsn
from replicator.realtime.apply import Applier, Target
from replicator.realtime.worker import ApplyWorker, CommitRules
from tests.conftest import Database

REL = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
    Column("id", 20, -1, True), Column("v", 25, -1, False),
))
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def txn(xid: int, end: int, *rows: tuple[str, str]) -> list[Event]:
    return [Begin(xid, Lsn(end - 1), NOW),
            *(Change(Op.INSERT, REL, r, None, Lsn(end - 1), xid, NOW) for r in rows),
            Commit(xid, Lsn(end - 1), Lsn(end), NOW)]


@pytest.fixture
def dest(dest_db: Database) -> Iterator[psycopg.Connection[Any]]:
    dest_db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text CHECK (v <> 'bad'))")
    with dest_db.connect() as conn:
        state.ensure_schema(conn)
        yield conn


def worker(conn: psycopg.Connection[Any], max_changes: int = 1000) -> ApplyWorker:
    table = describe_table(conn, "public", "t")
    assert table is not None
    applier = Applier(conn, "job", "slot", {("public", "t"): Target(table, ("id",))}, lambda oid, typmod: "text")
    return ApplyWorker(applier, CommitRules(max_open_s=60, max_changes=max_changes), name="test-apply").start()


def rows(db: Database) -> list[tuple[Any, ...]]:
    return db.fetchall("SELECT id, v FROM t ORDER BY id")


def checkpoint(db: Database) -> Any:
    return db.fetchone("SELECT lsn::text FROM _replicator.slot_checkpoints WHERE job = 'job'")


def test_finish_commits_what_was_handed_over(dest: psycopg.Connection[Any], dest_db: Database) -> None:
    w = worker(dest)
    w.put(txn(1, 100, ("1", "a"), ("2", "b")), Lsn(100), idle=False)
    w.put(txn(2, 200, ("3", "c")), Lsn(200), idle=False)
    w.finish()
    assert rows(dest_db) == [(1, "a"), (2, "b"), (3, "c")]
    assert w.progress.committed == Lsn(200) and checkpoint(dest_db) == "0/C8"
    assert w.progress.drained == Lsn(200) and w.progress.changes == 3 and w.progress.transactions == 2


def test_a_transaction_split_over_reads_commits_only_when_whole(dest: psycopg.Connection[Any], dest_db: Database) -> None:
    w = worker(dest)
    events = txn(1, 100, ("1", "a"), ("2", "b"))
    w.put(events[:2], Lsn(0), idle=False)
    w.put([], Lsn(0), idle=True)  # the stream goes quiet in the middle of the transaction
    w.put(events[2:3], Lsn(0), idle=False)
    w.put([], Lsn(0), idle=True)
    w.put([], Lsn(0), idle=True)  # the queue is short: these wait until the ones before are applied
    assert w.progress.committed is None and rows(dest_db) == []
    w.put(events[3:], Lsn(100), idle=True)
    w.finish()
    assert w.progress.committed == Lsn(100) and rows(dest_db) == [(1, "a"), (2, "b")]


def test_commits_every_max_changes_at_transaction_boundaries(dest: psycopg.Connection[Any], dest_db: Database) -> None:
    w = worker(dest, max_changes=2)
    w.put(txn(1, 100, ("1", "a")), Lsn(100), idle=False)  # 1 change: stays open
    w.put(txn(2, 200, ("2", "b"), ("3", "c")), Lsn(200), idle=False)  # 3: commits
    w.put(txn(3, 300, ("4", "d")), Lsn(300), idle=False)  # 1: stays open, until finish
    w.finish()
    assert w.progress.commits == 2 and w.progress.committed == Lsn(300)


def test_an_apply_error_reaches_the_reader_and_nothing_of_it_stays(dest: psycopg.Connection[Any], dest_db: Database) -> None:
    w = worker(dest)
    w.put(txn(1, 100, ("1", "a")), Lsn(100), idle=True)
    w.put(txn(2, 200, ("2", "b"), ("3", "bad")), Lsn(200), idle=True)
    with pytest.raises(psycopg.errors.CheckViolation):
        for _ in range(100):  # the reader sees the error at its next hand-over (or at finish)
            w.put([], Lsn(200), idle=True)
        w.finish()
    w.abort()
    assert rows(dest_db) == [(1, "a")] and w.progress.committed == Lsn(100)
    assert dest.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_abort_rolls_back_the_open_transaction(dest: psycopg.Connection[Any], dest_db: Database) -> None:
    w = worker(dest)
    w.put(txn(1, 100, ("1", "a")), Lsn(100), idle=False)  # applied, not committed (not idle, few changes)
    w.put(txn(2, 200, ("2", "b"))[:2], Lsn(100), idle=False)
    w.abort()
    assert rows(dest_db) == [] and w.progress.committed is None
    assert dest.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
