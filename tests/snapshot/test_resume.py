"""SIGKILL mid-snapshot, then run again: every row exactly once.

To kill at a known instant, a trigger on our own state table makes a worker wait on an
advisory lock the test holds, inside the transaction that has just copied a chunk's rows.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support import checksum, run_cli, spawn_cli, write

SOURCE = """
CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric);
INSERT INTO big SELECT g, md5(g::text), g / 3.0 FROM generate_series(1, 60000) g;
CREATE TABLE nokey (a integer, b text);
INSERT INTO nokey SELECT g % 100, 'x' || g FROM generate_series(1, 20000) g;
CREATE TABLE parts (id integer, k integer, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE parts_0 PARTITION OF parts FOR VALUES IN (0);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1);
INSERT INTO parts SELECT g, g % 2 FROM generate_series(1, 10000) g;
ANALYZE;
"""
TABLES = [("public", "big"), ("public", "nokey"), ("public", "parts")]
EXTRACTOR = "snapshot:\n  threads: 2\n  min-job-size-rows: 2000\n  max-jobs-per-chunk: 40\n"
LOCK_KEY = 4242

GATE = f"""
CREATE FUNCTION _replicator.test_gate_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.done_at IS NOT NULL AND NEW.chunk_no >= %(after)s THEN
    PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION _replicator.test_gate_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.key_built AND %(at_key)s THEN
    PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER gate BEFORE UPDATE ON _replicator.snapshot_chunks
    FOR EACH ROW EXECUTE FUNCTION _replicator.test_gate_chunk();
CREATE TRIGGER gate BEFORE UPDATE ON _replicator.snapshot_tables
    FOR EACH ROW EXECUTE FUNCTION _replicator.test_gate_table();
-- writer sessions run with session_replication_role = replica: only ALWAYS triggers fire there
ALTER TABLE _replicator.snapshot_chunks ENABLE ALWAYS TRIGGER gate;
ALTER TABLE _replicator.snapshot_tables ENABLE ALWAYS TRIGGER gate;
"""
DROP_GATE = "DROP FUNCTION IF EXISTS _replicator.test_gate_chunk(), _replicator.test_gate_table() CASCADE"


def _args(tmp_path: Path, source_db: Database, dest_db: Database) -> list[str]:
    return [
        "run", "snapshot", "--no-progress",
        "--source", str(source_db.write_config(tmp_path / "source.yaml")),
        "--destination", str(dest_db.write_config(tmp_path / "destination.yaml")),
        "--extractor", str(write(tmp_path / "extractor.yaml", EXTRACTOR)),
    ]


def _kill_at_gate(dest_db: Database, args: list[str], after_chunk: int, at_key: bool = False) -> None:
    """Run the snapshot in a child, wait until a worker blocks at the gate, SIGKILL it."""
    dest_db.session().close()  # the state schema, which the gate lives in
    with dest_db.connect() as setup:
        setup.execute(DROP_GATE)
        setup.execute(GATE.replace("%(after)s", str(after_chunk)).replace("%(at_key)s", str(at_key).lower()))
    holder = dest_db.connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    child = spawn_cli(*args)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            waiting = dest_db.fetchone(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (LOCK_KEY,),
            )
            if waiting:
                break
            assert child.poll() is None, child.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("the snapshot never reached the gate")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        holder.close()
    dest_db.session().close()  # the state schema, which the gate lives in
    with dest_db.connect() as setup:
        setup.execute(DROP_GATE)


def _assert_state_matches_rows(dest_db: Database) -> None:
    """After the kill, what the checkpoints say is exactly what the tables hold."""
    if dest_db.fetchone("SELECT to_regclass('_replicator.snapshot_chunks')") is None:
        return  # killed before the run got as far as creating its state
    for schema, table, rows in dest_db.fetchall(
        "SELECT schema_name, table_name, coalesce(sum(rows), 0) FROM _replicator.snapshot_chunks GROUP BY "
        "1, 2"
    ):
        if dest_db.fetchone("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)) is not None:
            assert checksum(dest_db, schema, table)[0] == rows, table


def _assert_exact(source_db: Database, dest_db: Database) -> None:
    for schema, table in TABLES:
        assert checksum(dest_db, schema, table) == checksum(source_db, schema, table), table
    assert dest_db.fetchone("SELECT count(*) FROM _replicator.snapshot_tables WHERE status <> 'done'") == 0
    assert (
        dest_db.fetchone(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'big'::regclass AND contype = 'p'"
        )
        == 1
    )


@pytest.mark.parametrize("after_chunk", [0, 7, 25])
def test_sigkill_mid_chunk_then_resume_is_exact(
    source_db: Database, dest_db: Database, tmp_path: Path, after_chunk: int
) -> None:
    source_db.execute(SOURCE)
    args = _args(tmp_path, source_db, dest_db)
    _kill_at_gate(dest_db, args, after_chunk)
    done = dest_db.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL")
    total = dest_db.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks")
    assert 0 < total and done < total
    _assert_state_matches_rows(dest_db)
    assert run_cli(*args) == 0
    _assert_exact(source_db, dest_db)


def test_sigkill_while_building_key_then_resume(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(SOURCE)
    args = _args(tmp_path, source_db, dest_db)
    _kill_at_gate(dest_db, args, after_chunk=10_000, at_key=True)
    assert (
        dest_db.fetchone(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = 'big'::regclass"
        )
        == 0
    )
    _assert_state_matches_rows(dest_db)
    assert run_cli(*args) == 0
    _assert_exact(source_db, dest_db)


def test_sigkill_at_random_moments_repeatedly(source_db: Database, dest_db: Database, tmp_path: Path) -> None:
    source_db.execute(SOURCE)
    args = _args(tmp_path, source_db, dest_db)
    rng = random.Random(7)
    for _ in range(4):
        child = spawn_cli(*args)
        time.sleep(rng.uniform(0.3, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        _assert_state_matches_rows(dest_db)
    assert run_cli(*args) == 0
    _assert_exact(source_db, dest_db)


def test_resume_after_source_changed_merges_by_key(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(SOURCE)
    args = _args(tmp_path, source_db, dest_db)
    _kill_at_gate(dest_db, args, after_chunk=5)
    # Updates move rows to new pages, i.e. into chunks not copied yet: appending would duplicate them.
    source_db.execute("UPDATE big SET v = v || '-changed' WHERE id % 3 = 0")
    assert run_cli(*args) == 0
    assert dest_db.fetchone("SELECT count(*) - count(DISTINCT id) FROM big") == 0
    _assert_exact(source_db, dest_db)
