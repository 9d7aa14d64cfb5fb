"""A source restart (and an RDS/Aurora reboot or failover, which looks the same from here) is survived
within max-retries x retry-wait-duration-ms, with nothing lost (issue 9 item 13)."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.localpg import LocalCluster, start_cluster
from tests.conftest import Database, _fresh_db
from tests.realtime.conftest import WORKLOAD_SCHEMA, Env, random_workload
from tests.support import spawn_cli


@pytest.fixture
def own_source(cluster_root: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A source cluster of this test's own: it is restarted under the run."""
    name = request.node.name[-30:].replace("[", "_").replace("]", "")
    cluster = start_cluster(cluster_root / f"restart_{name}")
    try:
        yield cluster
    finally:
        cluster.destroy()


def _wait(condition: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail("condition not reached in time")


@pytest.mark.parametrize(
    ("plugin", "reader"), [("pgoutput", "STREAM"), ("wal2json", "STREAM"), ("pgoutput", "SQL")]
)
def test_a_source_restart_is_survived_with_nothing_lost(
    own_source: LocalCluster, dest_db: Database, tmp_path: Path, plugin: str, reader: str
) -> None:
    source = _fresh_db(own_source, "src")
    env = Env(source, dest_db, tmp_path, slot="restart_slot", plugin=plugin)
    retries = {"max-retries": 20, "retry-wait-duration-ms": 500, "log-reader-type": reader}
    env.source_config = lambda **kw: env.source.write_config(  # type: ignore[method-assign]
        env.tmp / "source.yaml",
        **{"replication-slots": {env.slot: [plugin]}, "publication": "restart_pub",
           "wal2json-nan-becomes-null": True, **retries},
    )
    source.execute(WORKLOAD_SCHEMA + "CREATE TABLE ticks (id serial PRIMARY KEY, v text)")
    assert env.run("full", "--once") == 0
    child = spawn_cli(*env.args("realtime"))
    rng = random.Random(13)
    next_id = [5000]
    try:
        # Streaming, whatever the reader: a row written now has arrived (the SQL reader holds the slot
        # only during each peek, so waiting for the slot to be active could miss it).
        source.execute("INSERT INTO ticks (v) VALUES ('before restart')")
        _wait(lambda: dest_db.fetchone("SELECT count(*) FROM ticks WHERE v = 'before restart'"))
        random_workload(source, rng, 20, next_id)
        for _ in range(2):
            own_source.stop("fast")  # pg_ctl restart -m fast
            own_source.start()
            random_workload(source, rng, 20, next_id)
            source.execute("INSERT INTO ticks (v) SELECT 'after restart' FROM generate_series(1, 50)")
        # A column of a new user type: its type is looked up at the source after the restarts.
        source.execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok'); ALTER TABLE ticks ADD COLUMN m mood;"
            "INSERT INTO ticks (v, m) VALUES ('typed', 'ok')"
        )
        target = source.fetchone("SELECT pg_current_wal_lsn()")
        _wait(lambda: source.fetchone(
            "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
            (target, env.slot),
        ))
        assert child.poll() is None, child.communicate()
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "trying again" in err  # it did notice
    env.assert_equal("items", "pairs", "ticks")
