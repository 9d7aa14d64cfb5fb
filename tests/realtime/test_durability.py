"""The source hears only what is durable at the destination (issue 9 item 12).

Realtime commits with ``synchronous_commit = off``: a commit is visible at the destination before
its WAL is flushed, and a crash of the destination server (not just of our process) takes it
back. The slot may be confirmed past a transaction only once the destination's flush has passed
the commit that carried it; otherwise the source releases WAL the destination no longer has.

The destination here is a cluster of its own, crashed with ``pg_ctl stop -m immediate`` right
after a batch is visible there. Its WAL writer is slowed to 10 s (and nothing else writes WAL
out: no autovacuum, no checkpoint), so the batch is almost certainly not written when the
server dies, and the crash takes it back.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.localpg import LocalCluster, start_cluster
from replicator.lsn import Lsn
from tests.conftest import Database
from tests.realtime.conftest import Env
from tests.support import spawn_cli

LAZY_FLUSH = {
    "wal_writer_delay": "10s",
    "wal_writer_flush_after": "1GB",
    "autovacuum": "off",
    "checkpoint_timeout": "1h",
}


@pytest.fixture
def crashable_dest(cluster_root: Path) -> Iterator[LocalCluster]:
    """A destination cluster of this test's own (the shared one must not crash)."""
    cluster = start_cluster(cluster_root / f"crashable_{os.getpid()}_{time.monotonic_ns()}", LAZY_FLUSH)
    try:
        yield cluster
    finally:
        cluster.destroy()


def wait_for(what: str, condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def confirmed(env: Env) -> Lsn:
    return Lsn.parse(
        env.source.fetchone("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (env.slot,))
    )


def test_a_destination_crash_loses_nothing_the_source_was_told(
    source_db: Database, crashable_dest: LocalCluster, tmp_path: Path
) -> None:
    crashable_dest.create_database("crash")
    dest = Database(crashable_dest, "crash")
    env = Env(source_db, dest, tmp_path, slot=f"slot_{source_db.name}",
              extractor_text="realtime:\n  heartbeat:\n    enable: false\n")
    try:
        source_db.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
        source_db.execute("INSERT INTO items SELECT g, 'before' FROM generate_series(1, 100) g")
        assert env.run("full", "--once") == 0
        # A batch smaller than a WAL page: nothing but the WAL writer's own timer (10 s) writes
        # it out. Should the timer strike between the batch and the crash anyway, the batch is
        # durable, nothing was at risk, and the attempt proves nothing: try again.
        for attempt in range(1, 6):
            child = spawn_cli(*env.args("realtime"))
            try:
                source_db.execute("INSERT INTO items VALUES (%s, 'batch')", (1000 + attempt,))
                end = Lsn(source_db.fetchone("SELECT pg_current_wal_flush_lsn()"))
                wait_for("the batch at the destination",
                         lambda a=attempt: dest.fetchone("SELECT count(*) FROM items WHERE id = %s",
                                                         (1000 + a,)) == 1)
                crashable_dest.stop("immediate")
                time.sleep(1.5)  # time enough to confirm anything it meant to confirm
                told = confirmed(env)
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(10)
            crashable_dest.start()
            if dest.fetchone("SELECT count(*) FROM items WHERE id = %s", (1000 + attempt,)):
                continue  # written out before the crash (see above)
            checkpoint = dest.fetchone("SELECT lsn FROM _replicator.slot_checkpoints WHERE slot_name = %s",
                                       (env.slot,))
            # The slot was not moved past what the crash left.
            assert told < end, (told, end)
            assert checkpoint is None or told <= Lsn(checkpoint), (told, checkpoint)
            # Streaming again from the checkpoint brings the batch back.
            assert env.run("realtime", "--once") == 0
            env.assert_equal("items")
            return
        pytest.fail("the destination never lost an unflushed commit in its crashes: the test proved nothing")
    finally:
        with source_db.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s "
                "AND active", (env.slot,),
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                (env.slot,),
            )
