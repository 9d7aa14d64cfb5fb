"""The apply lag users see in the progress line (issue 11): it grows while the destination is stuck
and says how far behind the stream is (``replicator.lag`` has the definition)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests.realtime.conftest import Env
from tests.support import REPO

LOCK_KEY = 4411
STUCK_S = 3.0


def wait_for(condition: Callable[[], object], child: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)


def test_progress_line_shows_the_lag_of_a_stuck_destination(pg_env: Env) -> None:
    pg_env.extractor_text = "realtime:\n  heartbeat:\n    enable: false\n"  # only our inserts to apply
    pg_env.source.execute("CREATE TABLE ticks (id integer PRIMARY KEY, v text)")
    assert pg_env.run("full", "--once") == 0
    # Every destination commit writes the checkpoint: a trigger there waits at a lock we take.
    pg_env.dest.execute(
        f"""CREATE FUNCTION _replicator.test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}); RETURN NEW; END $$;
            CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON _replicator.slot_checkpoints
            FOR EACH ROW EXECUTE FUNCTION _replicator.test_gate();
            -- ALWAYS: the stream writes with session_replication_role = replica, which skips others.
            ALTER TABLE _replicator.slot_checkpoints ENABLE ALWAYS TRIGGER gate;"""
    )
    # A streaming run (not --once, which stops reading at its end point and then only waits),
    # with a progress line at every turn of the read loop.
    code = (
        "import sys, replicator.realtime.pipeline as p; p.PROGRESS_EVERY_S = 0.0; "
        "from replicator.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    log_path = pg_env.tmp / "realtime.log"
    holder = pg_env.dest.connect()
    with log_path.open("w") as log:  # a file, not a pipe: lines come often and nobody reads them yet
        child = subprocess.Popen(
            [sys.executable, "-c", code, *pg_env.args("realtime")],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log,
        )
    ticks = "SELECT count(*) FROM ticks"
    try:
        pg_env.source.execute("INSERT INTO ticks VALUES (0, 'first')")
        wait_for(lambda: pg_env.dest.fetchone(ticks) == 1, child)
        # Caught up; now the destination gets stuck while the source goes on.
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        pg_env.source.execute("INSERT INTO ticks SELECT g, 'v' FROM generate_series(1, 300) g")
        wait_for(lambda: pg_env.dest.fetchone(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
            (LOCK_KEY,),
        ), child)
        time.sleep(STUCK_S)
        holder.close()
        wait_for(lambda: pg_env.dest.fetchone(ticks) == 301, child)
    finally:
        holder.close()
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        pg_env.dest.execute("DROP FUNCTION _replicator.test_gate() CASCADE")
    err = log_path.read_text()
    lags = [
        (float(m[1]), m[2])
        for line in err.splitlines()
        if (m := re.search(r"apply lag ([\d.]+) s, ([\d.]+ \w+)", line))
    ]
    assert lags, err
    worst, behind = max(lags)
    # The inserts waited at least STUCK_S; a line comes at least every second: it said so.
    assert STUCK_S - 1.5 <= worst <= STUCK_S + 30, lags
    assert behind != "0 bytes", lags
    pg_env.assert_equal("ticks")
