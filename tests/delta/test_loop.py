"""Passes at an interval: changes keep arriving, a signal stops cleanly, one run at a time."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import Database
from tests.delta.conftest import DeltaSetup
from tests.support import run_cli, spawn_cli


def _wait_for(predicate, what: str, child, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class _PassCounter:
    """Counts passes by watching the watermark's ``updated_at`` change (every pass stores one)."""

    def __init__(self, db: Database):
        self.db, self.seen, self.last = db, 0, None

    def __call__(self) -> int:
        if self.db.fetchone("SELECT to_regclass('_replicator.delta_watermarks')") is not None:
            stamp = self.db.fetchone("SELECT max(updated_at) FROM _replicator.delta_watermarks")
            if stamp is not None and stamp != self.last:
                self.seen, self.last = self.seen + 1, stamp
        return self.seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_until_signalled_and_stops_cleanly(
    delta: DeltaSetup, capsys: pytest.CaptureFixture[str], sig: int
) -> None:
    delta.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    delta.extractor = "delta-snapshot:\n  interval-s: 0.3\n"
    child = spawn_cli(*delta.args())
    try:
        passes = _PassCounter(delta.dest)
        _wait_for(lambda: passes() >= 2, "two passes", child)
        delta.source.execute("INSERT INTO t VALUES (2, 'while running'); UPDATE t SET v = 'b' WHERE id = 1")
        _wait_for(
            lambda: delta.dest.fetchone("SELECT count(*) FROM t WHERE v IN ('b', 'while running')") == 2,
            "the change to arrive",
            child,
        )
        # Another run for the same source and destination is refused while this one runs.
        assert run_cli(*delta.args("--once")) == 1
        assert "another replicator run for source" in capsys.readouterr().err
        child.send_signal(sig)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert f"received {signal.Signals(sig).name}: finishing the work in progress, then stopping" in err
    assert "stopped after pass" in err
    assert "delta-snapshot pass 2 complete" in out
    delta.assert_same("t")


LOCK_KEY = 4444
GATE = f"""
CREATE OR REPLACE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NULL; END $$;
CREATE TRIGGER test_gate AFTER UPDATE ON _replicator.delta_watermarks
    FOR EACH ROW EXECUTE FUNCTION public.test_gate();
ALTER TABLE _replicator.delta_watermarks ENABLE ALWAYS TRIGGER test_gate;  -- fires under replica role too
"""


def test_a_pass_whose_source_connections_are_killed_is_retried(delta: DeltaSetup) -> None:
    delta.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')"
    )
    delta.extractor = "delta-snapshot:\n  interval-s: 0.3\n"
    child = spawn_cli(*delta.args())
    holder = None
    try:
        passes = _PassCounter(delta.dest)
        _wait_for(lambda: passes() >= 1, "the first pass", child)
        holder = delta.dest.connect()
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        delta.dest.execute(GATE)
        delta.source.execute("UPDATE t SET v = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2")
        _wait_for(
            lambda: delta.dest.fetchone(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (LOCK_KEY,),
            ),
            "a pass to block at the gate",
            child,
        )
        # The source restarts, as far as this run can tell: every connection it has is gone.
        delta.source.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'replicator/%%' AND datname = current_database()"
        )
        holder.close()  # first: the blocked pass holds a lock DROP TRIGGER needs
        delta.dest.execute("DROP TRIGGER test_gate ON _replicator.delta_watermarks")
        _wait_for(
            lambda: (
                delta.dest.fetchone("SELECT count(*) FROM t") == 1
                and delta.dest.fetchone("SELECT v FROM t") == "changed"
            ),
            "the change and the delete to arrive",
            child,
        )
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        if holder is not None and not holder.closed:
            holder.close()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert "failed, trying again" in err
    delta.assert_same("t")


CHUNK_GATE = f"""
CREATE OR REPLACE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NULL; END $$;
CREATE TRIGGER test_gate AFTER UPDATE ON _replicator.snapshot_chunks
    FOR EACH ROW WHEN (NEW.done_at IS NOT NULL) EXECUTE FUNCTION public.test_gate();
ALTER TABLE _replicator.snapshot_chunks ENABLE ALWAYS TRIGGER test_gate;  -- fires under replica role too
"""


def test_a_signal_during_the_first_snapshot_stops_after_the_chunks_in_flight(delta: DeltaSetup) -> None:
    delta.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); "
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g; ANALYZE t"
    )
    delta.extractor = "delta-snapshot:\n  threads: 1\n  min-job-size-rows: 500\n"
    delta.dest.session().close()  # the state schema, which the gate lives in
    with delta.dest.connect() as conn:
        conn.execute(CHUNK_GATE)
    holder = delta.dest.connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    child = spawn_cli(*delta.args())
    try:
        _wait_for(lambda: _waiting(delta.dest), "the first chunk to wait at the gate", child)
        child.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the signal is handled; then the chunk in flight may commit
        holder.close()
        out, err = child.communicate(timeout=60)
    finally:
        if not holder.closed:
            holder.close()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "snapshot interrupted; every finished chunk is kept: run the same command again to resume" in err
    done = delta.dest.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL")
    assert done == 1
    delta.dest.execute("DROP TRIGGER test_gate ON _replicator.snapshot_chunks")
    delta.source.execute("UPDATE t SET v = 'after the stop' WHERE id % 100 = 0; DELETE FROM t WHERE id <= 10")
    delta.once()
    delta.assert_same("t")


def _waiting(db: Database) -> bool:
    return bool(
        db.fetchone(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (LOCK_KEY,),
        )
    )
