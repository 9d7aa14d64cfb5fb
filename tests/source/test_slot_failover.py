"""Slots that follow a failover (issue 14): created with failover = true on PostgreSQL 17+, and
`check` reports the settings that make a standby keep them. Nothing newer than 16 runs here, so the
17 statements are checked as chosen by version, and a real PostgreSQL 16 (the pgserver wheel's)
shows both that the older forms work there and that the 17 form would not."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from replicator.check.database import check_slot_failover, failover_query, source_context
from replicator.check.report import Status
from replicator.config.connection import ConnectionConfig
from replicator.localpg import LocalCluster, free_port
from replicator.source.slots import (
    SnapshotSlot,
    create_slot,
    create_slot_sql,
    create_snapshot_slot_command,
    get_slot,
)
from tests.conftest import Database, _fresh_db
from tests.realtime.conftest import Env
from tests.support import checksum

# Located, not imported (importing it sets up things of its own we do not use).
_spec = importlib.util.find_spec("pgserver")
assert _spec is not None and _spec.origin, "pgserver (a test dependency) is missing: run scripts/setup.sh"
PG16_BIN = Path(_spec.origin).parent / "pginstall" / "bin"


def test_the_statements_are_chosen_by_server_version() -> None:
    assert create_slot_sql(170000).endswith("(%s, %s, false, false, true)")  # temporary, twophase, failover
    assert create_slot_sql(160002).endswith("(%s, %s)")
    assert create_snapshot_slot_command("s", "pgoutput", 170000).as_string(None) == (
        """CREATE_REPLICATION_SLOT "s" LOGICAL "pgoutput" (SNAPSHOT 'export', FAILOVER true)"""
    )
    for older in (100000, 150004, 160002):
        assert create_snapshot_slot_command("s", "pgoutput", older).as_string(None) == (
            'CREATE_REPLICATION_SLOT "s" LOGICAL "pgoutput" EXPORT_SNAPSHOT'
        )
    assert failover_query(160002) is None
    query = failover_query(170000)
    assert query is not None and "synchronized_standby_slots" in query and "sync_replication_slots" in query
    assert "NOT failover" in query


@pytest.fixture(scope="module")
def pg16(cluster_root: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(root=cluster_root / "pg16", port=free_port(), bindir=PG16_BIN)
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_on_a_real_postgresql_16_the_older_forms_work_and_the_17_form_would_not(pg16: LocalCluster) -> None:
    db = _fresh_db(pg16, "v16")
    cfg = ConnectionConfig.model_validate(db.config())
    with db.connect() as conn:
        assert conn.info.server_version // 10000 == 16
        create_slot(conn, "plain16", "pgoutput")
        assert get_slot(conn, "plain16") is not None
        with pytest.raises(psycopg.errors.UndefinedFunction):
            conn.execute(create_slot_sql(170000), ("failover16", "pgoutput"))
        with SnapshotSlot.create(cfg, "snap16", "pgoutput") as created:
            assert created.snapshot_name
        for name in ("plain16", "snap16"):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    with psycopg.connect(db.conninfo, autocommit=True, replication="database") as repl:
        with pytest.raises(psycopg.Error, match="unrecognized option: failover"):
            repl.execute(create_snapshot_slot_command("failover16", "pgoutput", 170000))


@pytest.mark.parametrize("which", ["15", "16"])
def test_check_says_slots_cannot_follow_a_failover_before_17(
    which: str, pg16: LocalCluster, source_db: Database
) -> None:
    db = _fresh_db(pg16, "chk16") if which == "16" else source_db
    cfg = ConnectionConfig.model_validate(db.config(**{"replication-slots": {"s": ["pgoutput"]}}))
    with db.connect() as conn:
        result = check_slot_failover(source_context(conn, cfg, None))
    assert result.status is Status.SKIP
    assert f"PostgreSQL {which}: logical slots do not follow a failover" in result.detail


def test_full_and_realtime_on_a_postgresql_16_source(
    pg16: LocalCluster, dest_db: Database, tmp_path: Path
) -> None:
    source = _fresh_db(pg16, "e2e16")
    env = Env(source, dest_db, tmp_path, slot="slot16")
    source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g"
    )
    assert env.run("full", "--once") == 0
    source.execute(
        "UPDATE t SET v = 'w' WHERE id % 3 = 0; DELETE FROM t WHERE id > 90; INSERT INTO t VALUES (500, 'x')"
    )
    assert env.run("realtime", "--once") == 0
    assert checksum(dest_db, "public", "t") == checksum(source, "public", "t")
    source.execute("SELECT pg_drop_replication_slot('slot16')")
