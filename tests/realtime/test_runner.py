"""The runner's process-wide settings while streaming are put back afterwards (runs can share a process)."""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.localpg import LocalCluster, start_cluster
from replicator.realtime.runner import _collector_for_streaming
from tests.conftest import Database, _fresh_db
from tests.realtime.conftest import Env
from tests.support import spawn_cli


def test_collector_settings_come_back_after_streaming_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _collector_for_streaming():
        assert gc.get_threshold()[0] > before[0] and gc.get_freeze_count() > 0
        raise RuntimeError("the stream failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_sighup_stops_a_realtime_run_cleanly(pg_env: Env) -> None:
    pg_env.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)"
    )
    child = spawn_cli(*pg_env.args("realtime"))
    try:
        deadline = time.monotonic() + 90
        while not pg_env.source.fetchone(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (pg_env.slot,)
        ):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        child.send_signal(signal.SIGHUP)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert "received SIGHUP" in err and "realtime stopped:" in out


def test_a_clean_restart_finds_the_slot_at_the_checkpoint_and_does_not_warn(pg_env: Env) -> None:
    """Issue 9 item 9 (and the "another consumer" warning after SIGTERM): positions confirmed to the
    slot while idle are recorded in the checkpoint, so a clean restart finds the slot no further
    than the checkpoint and says nothing; only a real gap may warn."""
    pg_env.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);"
        "CREATE TABLE noise (id serial PRIMARY KEY, v text)"
    )
    filt = pg_env.tmp / "filter.yaml"
    filt.write_text(f"allow:\n  catalog: {pg_env.source.name}\n  schema: public\n  allow:\n    t:\n")
    pg_env.extractor_text = "realtime:\n  heartbeat:\n    enable: false\n"
    args = [*pg_env.args("realtime"), "--filter", str(filt)]
    child = spawn_cli(*args)
    try:
        deadline = time.monotonic() + 90
        while not pg_env.source.fetchone(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (pg_env.slot,)
        ):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        pg_env.source.execute("INSERT INTO t VALUES (11)")
        # Only unpublished writes from here on: the stream's position moves, no change arrives.
        for _ in range(20):
            pg_env.source.execute("INSERT INTO noise (v) SELECT 'x' FROM generate_series(1, 100)")
            time.sleep(0.1)
        time.sleep(1.5)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    confirmed = pg_env.source.fetchone(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
    )
    recorded = pg_env.dest.fetchone("SELECT lsn FROM _replicator.slot_checkpoints")
    assert confirmed <= recorded, (confirmed, recorded)
    again = spawn_cli(*[*pg_env.args("realtime", "--once"), "--filter", str(filt)])
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "another consumer" not in err and "not in the destination" not in err, err
    assert pg_env.dest.fetchone("SELECT count(*) FROM t") == 1  # realtime alone: only what streamed



@pytest.fixture
def lazy_wal_source(cluster_root: Path) -> Iterator[LocalCluster]:
    """A source whose commits sit in the WAL buffers for seconds: asynchronous commits and a WAL
    writer that wakes every 3 s (a `synchronous_commit = off` source keeps them there for up to
    wal_writer_delay)."""
    cluster = start_cluster(
        cluster_root / f"lazy_wal_{os.getpid()}",
        settings={"synchronous_commit": "off", "wal_writer_delay": "3s"},
    )
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_once_brings_a_commit_that_is_still_in_the_wal_buffers(
    lazy_wal_source: LocalCluster, dest_db: Database, tmp_path: Path
) -> None:
    """`run --once` goes on to the end of the WAL *inserted* when it starts: a transaction whose
    commit returned is replicated, even while it is only in the source's WAL buffers (past
    pg_current_wal_lsn(), the write position, where --once used to stop)."""
    source = _fresh_db(lazy_wal_source, "src")
    env = Env(source, dest_db, tmp_path, slot="lazy_slot",
              extractor_text="realtime:\n  heartbeat:\n    enable: false\n")
    source.execute("CREATE TABLE t (id int PRIMARY KEY)")
    assert env.run("full", "--once") == 0
    unwritten = "SELECT pg_current_wal_lsn() < pg_current_wal_insert_lsn()"
    with source.connect() as conn:
        for attempt in range(1, 6):
            # Just after a round of the WAL writer (it has written everything), so that its next
            # round comes seconds later, after the run below has started.
            conn.execute("INSERT INTO t VALUES (%s)", (-attempt,))
            deadline = time.monotonic() + 15
            while conn.execute(unwritten).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the WAL writer never wrote"
                time.sleep(0.005)
            conn.execute("INSERT INTO t VALUES (%s)", (attempt,))
            if conn.execute(unwritten).fetchone()[0]:  # type: ignore[index]
                break  # committed, and only in the WAL buffers
        else:
            pytest.fail("every commit was written out at once: the WAL writer does not wait")
    assert env.run("realtime", "--once") == 0
    assert dest_db.fetchone("SELECT max(id) FROM t") == attempt
