"""SIGKILL in the middle of a delta pass, then run again: nothing lost, nothing duplicated.

To kill at a known instant, a test-only trigger makes the run wait on an advisory lock the
test holds: on our watermark table (inside the transaction that has just merged a table's
changed rows), on a destination table's DELETE (inside the same transaction), or on the snapshot
chunk table (inside the first pass's snapshot).
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.conftest import Database
from tests.delta.conftest import DeltaSetup
from tests.support import checksum, spawn_cli

LOCK_KEY = 4343

SOURCE = """
CREATE TABLE items (id integer PRIMARY KEY, v text);
INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 3000) g;
CREATE TABLE events (id integer PRIMARY KEY, v text, updated_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO events SELECT g, 'v' || g FROM generate_series(1, 3000) g;
ANALYZE;
"""
TABLES = ("items", "events")
EXTRACTOR = """delta-snapshot:
  threads: 2
  min-job-size-rows: 400
  per-table-config:
  - schema: public
    tables:
      events:
        update-key: updated_at
"""

WAIT = f"""
CREATE OR REPLACE FUNCTION public.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NULL; END $$;
"""
# Writer sessions run with session_replication_role = replica: the gates are ALWAYS triggers.
GATE_WATERMARK = (
    "CREATE TRIGGER test_gate AFTER UPDATE ON _replicator.delta_watermarks "
    "FOR EACH ROW EXECUTE FUNCTION public.test_gate(); "
    "ALTER TABLE _replicator.delta_watermarks ENABLE ALWAYS TRIGGER test_gate"
)
GATE_DELETE = (
    "CREATE TRIGGER test_gate AFTER DELETE ON public.items "
    "FOR EACH STATEMENT EXECUTE FUNCTION public.test_gate(); "
    "ALTER TABLE public.items ENABLE ALWAYS TRIGGER test_gate"
)
GATE_CHUNK = """CREATE TRIGGER test_gate AFTER UPDATE ON _replicator.snapshot_chunks FOR EACH ROW
    WHEN (NEW.done_at IS NOT NULL AND NEW.chunk_no >= 2) EXECUTE FUNCTION public.test_gate();
    ALTER TABLE _replicator.snapshot_chunks ENABLE ALWAYS TRIGGER test_gate"""
UNGATE = """DROP TRIGGER IF EXISTS test_gate ON _replicator.delta_watermarks;
DROP TRIGGER IF EXISTS test_gate ON _replicator.snapshot_chunks;
DROP TRIGGER IF EXISTS test_gate ON public.items"""

CHANGES = """
UPDATE items SET v = v || '+' WHERE id % 7 = {k};
DELETE FROM items WHERE id % 97 = {k};
INSERT INTO items SELECT 10000 * ({k} + 1) + g, 'new' FROM generate_series(1, 20) g;
UPDATE events SET v = v || '+' WHERE id % 11 = {k};
DELETE FROM events WHERE id % 89 = {k};
INSERT INTO events (id, v) SELECT 10000 * ({k} + 1) + g, 'new' FROM generate_series(1, 20) g;
"""


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    delta.source.execute(SOURCE)
    delta.extractor = EXTRACTOR
    return delta


def _kill_at_gate(setup: DeltaSetup, gate: str) -> None:
    """Run one pass in a child, wait until it blocks at ``gate``, SIGKILL it, remove the gate."""
    setup.dest.session().close()  # the state schema, which the gates live in
    with setup.dest.connect() as conn:
        conn.execute(UNGATE)
        conn.execute(WAIT)
        conn.execute(gate)
    holder = setup.dest.connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    child = spawn_cli(*setup.args("--once"))
    try:
        deadline = time.monotonic() + 60
        while not _waiting(setup.dest):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the pass never reached the gate"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        holder.close()
    setup.dest.execute(UNGATE)


def _waiting(db: Database) -> bool:
    return bool(
        db.fetchone(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (LOCK_KEY,),
        )
    )


def _snapshot_of_destination(db: Database) -> dict[str, object]:
    return {
        **{t: checksum(db, "public", t) for t in TABLES},
        "marks": db.fetchall(
            "SELECT table_name, kind, watermark FROM _replicator.delta_watermarks ORDER BY 1"
        ),
    }


def test_kill_while_merging_changes_leaves_the_last_pass_intact(setup: DeltaSetup) -> None:
    setup.once()
    setup.source.execute(CHANGES.format(k=1))
    before = _snapshot_of_destination(setup.dest)
    _kill_at_gate(setup, GATE_WATERMARK)
    # Rows and watermark commit together: the killed pass left neither.
    assert _snapshot_of_destination(setup.dest) == before
    setup.source.execute(CHANGES.format(k=2))
    setup.once()
    setup.assert_same(*TABLES)


def test_kill_while_deleting_leaves_the_table_as_the_last_pass_left_it(setup: DeltaSetup) -> None:
    setup.once()
    setup.source.execute(CHANGES.format(k=3))
    mark = "SELECT watermark FROM _replicator.delta_watermarks WHERE table_name = 'items'"
    before = checksum(setup.dest, "public", "items"), setup.dest.fetchone(mark)
    _kill_at_gate(setup, GATE_DELETE)
    # A table's deletes commit with its changed rows and its watermark: none of them is there.
    assert (checksum(setup.dest, "public", "items"), setup.dest.fetchone(mark)) == before
    assert setup.dest.fetchone("SELECT count(*) FROM items WHERE v = 'new'") == 0
    assert setup.dest.fetchone("SELECT count(*) FROM items WHERE id % 97 = 3") > 0
    setup.once()
    setup.assert_same(*TABLES)


def test_kill_during_the_first_snapshot_then_changes_then_rerun(setup: DeltaSetup) -> None:
    _kill_at_gate(setup, GATE_CHUNK)
    done = setup.dest.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL")
    total = setup.dest.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks")
    assert 1 <= done < total  # killed with part of the first snapshot committed
    # Rows move between chunks and some vanish before the snapshot resumes under a new snapshot.
    setup.source.execute(CHANGES.format(k=4))
    setup.once()
    setup.assert_same(*TABLES)
    setup.source.execute(CHANGES.format(k=5))
    setup.once()
    setup.assert_same(*TABLES)


def test_kills_at_random_moments_with_changes_in_between(setup: DeltaSetup) -> None:
    rng = random.Random(11)
    for round_no in range(5):
        setup.source.execute(CHANGES.format(k=round_no))
        child = spawn_cli(*setup.args("--once"))
        time.sleep(rng.uniform(0.2, 1.2))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    setup.once()
    setup.assert_same(*TABLES)
