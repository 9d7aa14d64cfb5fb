"""SIGKILL during streaming, then start again: the destination ends equal to the source."""

from __future__ import annotations

import random
import signal
import threading
import time

from tests.realtime.conftest import WORKLOAD_SCHEMA, Env, random_workload
from tests.support import spawn_cli

LOCK_KEY = 4343


def test_sigkill_at_random_moments_during_a_mixed_workload(pg_env: Env) -> None:
    pg_env.source.execute(WORKLOAD_SCHEMA)
    pg_env.extractor_text = (
        "realtime:\n  fetch-size-rows: 50\n  fetch-duration-per-extractor-slot-s: 0.2\n"
        "  heartbeat:\n    interval-ms: 200\n"
    )
    assert pg_env.run("full", "--once") == 0
    rng = random.Random(20261123)
    next_id = [5000]
    for _ in range(5):
        child = spawn_cli(*pg_env.args("realtime"))
        stop = threading.Event()

        def write_until_stopped(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                random_workload(pg_env.source, rng, 3, next_id)

        writer = threading.Thread(target=write_until_stopped)
        writer.start()
        time.sleep(rng.uniform(0.8, 2.5))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        stop.set()
        writer.join()
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("items", "pairs")


def test_sigkill_after_applying_before_the_checkpoint_commits(pg_env: Env) -> None:
    pg_env.source.execute(WORKLOAD_SCHEMA)
    assert pg_env.run("full", "--once") == 0
    with pg_env.dest.connect() as conn:
        conn.execute(
            f"""CREATE FUNCTION _replicator.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NEW; END $$;
                CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON _replicator.slot_checkpoints
                FOR EACH ROW EXECUTE FUNCTION _replicator.test_gate();
                ALTER TABLE _replicator.slot_checkpoints ENABLE ALWAYS TRIGGER gate;"""
        )
    random_workload(pg_env.source, random.Random(1), 50, [5000])
    holder = pg_env.dest.connect()
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    child = spawn_cli(*pg_env.args("realtime"))
    try:
        deadline = time.monotonic() + 60
        while not pg_env.dest.fetchone(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (LOCK_KEY,),
        ):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
        # The batch's rows are written inside the open transaction; the checkpoint waits at the gate.
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        holder.close()
    pg_env.dest.execute("DROP FUNCTION _replicator.test_gate() CASCADE")
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("items", "pairs")
