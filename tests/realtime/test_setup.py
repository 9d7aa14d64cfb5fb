"""Realtime set-up: UNLOGGED tables are snapshotted, never published (issue 9, also found)."""

from __future__ import annotations

import pytest

from replicator.errors import SourceError
from replicator.source.publication import PublishedTable, ensure_publication
from tests.conftest import Database
from tests.realtime.conftest import Env
from tests.support import checksum

TABLES = """
CREATE TABLE t (id integer PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
CREATE UNLOGGED TABLE scratch (id integer PRIMARY KEY, v text);
INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 40) g;
"""


def _published(db: Database) -> set[str]:
    return {r[0] for r in db.fetchall("SELECT tablename FROM pg_publication_tables")}


def test_full_snapshots_an_unlogged_table_and_streams_the_rest(pg_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    pg_env.source.execute(TABLES)
    assert pg_env.run("full", "--once") == 0
    assert checksum(pg_env.dest, "public", "scratch") == checksum(pg_env.source, "public", "scratch")
    assert "public.scratch is UNLOGGED" in caplog.text and "copied once by the snapshot" in caplog.text
    assert "scratch" not in _published(pg_env.source) and "t" in _published(pg_env.source)
    pg_env.source.execute("UPDATE t SET v = 'changed' WHERE id = 1; INSERT INTO scratch VALUES (1000, 'not streamed')")
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("t")
    assert pg_env.dest.fetchone("SELECT count(*) FROM scratch") == 40


def test_realtime_leaves_an_unlogged_table_out_with_a_warning(pg_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    pg_env.source.execute(TABLES)
    assert pg_env.run("realtime", "--once") == 0
    assert "public.scratch is UNLOGGED" in caplog.text and "ALTER TABLE public.scratch SET LOGGED" in caplog.text
    assert pg_env.dest.fetchone("SELECT to_regclass('public.scratch')") is None
    assert pg_env.dest.fetchone("SELECT to_regclass('public.t')") is not None


def test_a_publication_refused_for_an_unlogged_table_does_not_blame_privileges(source_db: Database) -> None:
    source_db.execute(TABLES)
    with source_db.connect() as conn, pytest.raises(SourceError) as err:
        ensure_publication(conn, "unlogged_pub", [PublishedTable("public", "scratch")])
    text = str(err.value)
    assert "unlogged" in text.lower() and "SET LOGGED" in text
    assert "owner" not in text
