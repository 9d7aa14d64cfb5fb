"""Group commit under an OLTP load, with SIGKILLs (issue 11).

pgbench's tpcb-like transaction adds the same ``delta`` to one account, one teller, one branch
and inserts it into ``pgbench_history`` (no key, insert-only). So at every transaction boundary
the four sums are equal; a destination that ever commits part of a source transaction shows
them different to a reader. The destination is read (one statement: one snapshot) all along
while the replicator streams and is killed at random moments; afterwards it must equal the
source, keyless history included: a batch applied twice would duplicate history rows.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, find_bindir
from tests.conftest import Database
from tests.realtime.conftest import Env
from tests.support import spawn_cli

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
SUMS = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), "
    "(SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
    "(SELECT count(*) FROM pgbench_history)"
)

HISTORY = "SELECT count(*) FROM pgbench_history"


def pgbench(db: Database, *args: str) -> subprocess.Popen[str]:
    cmd = [str(find_bindir() / "pgbench"), "-h", "127.0.0.1", "-p", str(db.cluster.port), "-U", SUPERUSER,
           *args, db.name]
    return subprocess.Popen(cmd, env={"PGPASSWORD": SUPERUSER_PASSWORD, "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def init_pgbench(db: Database) -> None:
    out, err = pgbench(db, "-i", "-q", "-s", "1").communicate(timeout=120)
    assert "done" in err or "done" in out, err


class SplitWatch:
    """Reads the destination's four sums over and over; remembers every snapshot where they differ."""

    def __init__(self, dest: Database):
        self.dest = dest
        self.stop = threading.Event()
        self.reads = 0
        self.moving = 0  # reads that saw history grow since the one before: the watch saw commits
        self.split: list[tuple[object, ...]] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        last = None
        with self.dest.connect() as conn:
            while not self.stop.is_set():
                row = conn.execute(SUMS).fetchone()
                assert row is not None
                self.reads += 1
                if len({row[0], row[1], row[2], row[3]}) != 1:
                    self.split.append(row)
                if last is not None and row[4] != last:
                    self.moving += 1
                last = row[4]
                time.sleep(0.005)

    def __enter__(self) -> SplitWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_sigkill_during_pgbench_never_splits_a_transaction_nor_duplicates_history(pg_env: Env) -> None:
    init_pgbench(pg_env.source)
    assert pg_env.run("full", "--once") == 0
    rng = random.Random(20261130)
    load = pgbench(pg_env.source, "-n", "-c", "2", "-j", "2", "-R", "400", "-T", "600")
    try:
        with SplitWatch(pg_env.dest) as watch:
            for _ in range(4):
                before = pg_env.dest.fetchone(HISTORY)
                child = spawn_cli(*pg_env.args("realtime"))
                # Killed while applying: once this run has committed something (start-up takes
                # long on a loaded machine), at a random moment after.
                deadline = time.monotonic() + 120
                while pg_env.dest.fetchone(HISTORY) == before:
                    assert child.poll() is None, child.communicate()
                    assert time.monotonic() < deadline, "the run applied nothing in 120 s"
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.5))
                assert child.poll() is None, child.communicate()
                child.send_signal(signal.SIGKILL)
                child.wait(10)
    finally:
        # SIGTERM, not SIGINT: a suite started in the background inherits SIGINT ignored, and so
        # does pgbench (it then ran on for its whole -T).
        load.terminate()
        load.communicate(timeout=30)
    assert watch.split == [], f"destination showed part of a source transaction: {watch.split[:5]}"
    assert watch.moving >= 3, (watch.reads, watch.moving)  # the watch saw the destination change
    assert pg_env.source.fetchone("SELECT count(*) FROM pgbench_history") > 0
    assert pg_env.run("realtime", "--once") == 0
    for table in TABLES:
        pg_env.assert_equal(table)
    assert pg_env.dest.fetchone(HISTORY) == pg_env.source.fetchone(HISTORY)  # none twice, none lost
