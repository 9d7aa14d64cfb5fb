"""A slot's pipeline under the one retry rule: what it survives, and what it gives up on."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from replicator.config import load_connection
from replicator.decoding.changes import Event
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.destinations.base import CommitMark
from replicator.destinations.postgres.apply import Writer
from replicator.lsn import Lsn
from replicator.realtime import pipeline
from replicator.source.stream import ReplicationStream
from tests.realtime.conftest import Env


def test_a_slot_still_held_by_another_walsender_is_waited_for(pg_env: Env) -> None:
    """SlotInUse (say, our previous walsender still exiting) is transient: the pipeline waits
    and retries instead of ending the run."""
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'changed' WHERE id = 1")
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml", **{"replication-slots": {pg_env.slot: ["pgoutput"]},
                                       "publication": f"{pg_env.slot}_pub", "max-retries": 30,
                                       "retry-wait-duration-ms": 200, **kw})
    cfg = load_connection(pg_env.source_config(), "source").value
    holder = ReplicationStream.open(cfg, pg_env.slot, PgOutputDecoder([f"{pg_env.slot}_pub"]))
    release = threading.Timer(1.5, holder.close)  # the other consumer lets go after a while
    release.start()
    started = time.monotonic()
    try:
        assert pg_env.run("realtime", "--once") == 0
    finally:
        release.cancel()
        holder.close()
    assert time.monotonic() - started >= 1.5  # it did have to wait
    pg_env.assert_equal("t")


SUMS = "SELECT (SELECT sum(v) FROM a), (SELECT sum(v) FROM b), (SELECT coalesce(sum(delta), 0) FROM h)"


def test_a_group_commit_never_ends_inside_a_source_transaction(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads end anywhere, mid-transaction too. When a read ends inside transaction T2 while T1
    (complete) still waits for a busy worker, and the next read holds no commit, the worker going
    idle must not get T1 with T2's first changes (committed with T1's checkpoint: a reader sees
    part of T2, and a restart from that checkpoint applies those changes twice). Every commit is
    checked from inside its destination transaction: a, b and the keyless history h always sum
    alike at a source transaction boundary."""
    pg_env.source.execute(
        "CREATE TABLE a (id integer PRIMARY KEY, v bigint NOT NULL); INSERT INTO a VALUES (1, 0);"
        "CREATE TABLE b (id integer PRIMARY KEY, v bigint NOT NULL); INSERT INTO b VALUES (1, 0);"
        "CREATE TABLE h (delta bigint NOT NULL)"
    )
    assert pg_env.run("full", "--once") == 0
    with pg_env.source.connect() as conn:
        for delta in range(1, 301):
            with conn.transaction():
                conn.execute("UPDATE a SET v = v + %s", (delta,))
                conn.execute("UPDATE b SET v = v + %s", (delta,))
                conn.execute("INSERT INTO h VALUES (%s)", (delta,))
    # Reads of 2 events (a transaction is Begin, 3 changes, Commit): many end inside a transaction,
    # and some that follow hold no commit; several of them while the worker commits.
    monkeypatch.setattr(pipeline, "READ_EVENTS", 2)
    read = ReplicationStream.read

    def slow_read(self: ReplicationStream, *args: Any, **kwargs: Any) -> list[Event]:
        time.sleep(0.002)  # several reads per destination commit
        return read(self, *args, **kwargs)

    monkeypatch.setattr(ReplicationStream, "read", slow_read)
    seen: list[tuple[object, ...]] = []
    commit = Writer.commit

    def checked_commit(self: Writer, lsn: Lsn) -> CommitMark:
        if self._in_txn:
            self._send_pending()  # what the commit would send first (pipelined.py)
            row = self.conn.execute(SUMS).fetchone()
            assert row is not None
            seen.append(tuple(row))
        time.sleep(0.02)  # a busy worker: complete transactions wait while reads go on
        return commit(self, lsn)

    monkeypatch.setattr(Writer, "commit", checked_commit)
    assert pg_env.run("realtime", "--once") == 0
    assert len(seen) >= 3, seen  # group commits happened
    split = [row for row in seen if len(set(row)) != 1]
    assert split == [], f"committed part of a source transaction: {split[:5]} of {len(seen)} commits"
    pg_env.assert_equal("a", "b", "h")
