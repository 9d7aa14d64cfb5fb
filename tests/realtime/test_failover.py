"""A failover, as RDS Multi-AZ or Aurora does one, on real servers (issue 14, issue 9 items 6 and 13).

A primary streams to a physical standby. Mid-stream the primary goes away and the endpoint (here:
its port) comes back on the standby, first still read-only (in recovery), then promoted: a new
writer that never had our slot (PostgreSQL before 17 does not carry logical slots to standbys).
The read-only phase is waited for within the retry budget; the new writer without the slot stops
realtime with the fix, and `full` then recovers and ends equal.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.localpg import (
    SUPERUSER,
    SUPERUSER_PASSWORD,
    LocalCluster,
    _as_postgres,
    _chown_to_postgres,
    free_port,
    start_cluster,
)
from tests.conftest import Database, _fresh_db
from tests.realtime.conftest import WORKLOAD_SCHEMA, Env, random_workload
from tests.support import spawn_cli


@pytest.fixture
def primary(cluster_root: Path) -> Iterator[LocalCluster]:
    cluster = start_cluster(cluster_root / f"failover_primary_{os.getpid()}")
    try:
        yield cluster
    finally:
        cluster.destroy()


def _standby_of(primary: LocalCluster, root: Path) -> LocalCluster:
    standby = LocalCluster(root=root, port=free_port(), bindir=primary.bindir)
    root.mkdir(parents=True)
    _chown_to_postgres(root)
    standby.socket_dir.mkdir()
    _chown_to_postgres(standby.socket_dir)
    subprocess.run(
        _as_postgres([
            str(primary.bindir / "pg_basebackup"), "-D", str(standby.datadir), "-R", "-X", "stream",
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", SUPERUSER, "--no-sync",
        ]),
        env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}, check=True, capture_output=True,
    )
    standby.start()
    return standby


def _wait(condition: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail("condition not reached in time")


def test_failover_waits_out_the_read_only_node_then_refuses_the_lost_slot_and_full_recovers(
    primary: LocalCluster, dest_db: Database, tmp_path: Path, cluster_root: Path
) -> None:
    source = _fresh_db(primary, "src")
    source.execute(WORKLOAD_SCHEMA)
    env = Env(source, dest_db, tmp_path, slot="failover_slot")
    budget = {"max-retries": 40, "retry-wait-duration-ms": 500}
    env.source_config = lambda **kw: env.source.write_config(  # type: ignore[method-assign]
        env.tmp / "source.yaml",
        **{"replication-slots": {env.slot: ["pgoutput"]}, "publication": "failover_pub", **budget},
    )
    assert env.run("full", "--once") == 0
    standby = _standby_of(primary, cluster_root / f"failover_standby_{os.getpid()}")
    try:
        child = spawn_cli(*env.args("realtime"))
        rng = random.Random(17)
        next_id = [5000]
        try:
            _wait(lambda: source.fetchone(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (env.slot,)
            ))
            random_workload(source, rng, 20, next_id)
            target = source.fetchone("SELECT pg_current_wal_lsn()")
            _wait(lambda: source.fetchone(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (target, env.slot),
            ))
            # The failover: the primary goes, its endpoint comes back on the standby, read-only first.
            _wait(lambda: Database(standby, source.name).fetchone(
                "SELECT pg_last_wal_replay_lsn() >= %s", (target,)
            ))
            primary.stop("immediate")
            standby.stop("fast")
            auto = standby.datadir / "postgresql.auto.conf"
            auto.write_text("".join(line for line in auto.read_text().splitlines(True)
                                    if not line.startswith("primary_conninfo")))
            standby.port = primary.port
            standby.start()
            time.sleep(3)  # a few retries land on the read-only node
            assert child.poll() is None, child.communicate()
            subprocess.run(
                _as_postgres([str(standby.bindir / "pg_ctl"), "-D", str(standby.datadir), "-w", "promote"]),
                check=True, capture_output=True,
            )
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.communicate(timeout=60)
        assert child.returncode == 1, err
        assert "read-only node" in err and "trying again" in err  # waited, did not give up there
        assert f"replication slot '{env.slot}' no longer exists" in err and "replicator run full" in err, err
        # The new writer takes changes; `full` copies the slot's tables again and streams from a new slot.
        writer = Database(standby, source.name)
        env.source = writer
        random_workload(writer, rng, 20, next_id)
        writer.execute("DELETE FROM items WHERE id % 9 = 0")
        assert env.run("full", "--once") == 0
        env.assert_equal("items", "pairs")
    finally:
        standby.destroy()
