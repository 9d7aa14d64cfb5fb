"""Preparing a realtime run: keys from the realtime section, agreeing with the snapshot's; UNLOGGED
tables are snapshotted, never published (issue 9, also found)."""

from __future__ import annotations

import pytest

from replicator.errors import SourceError
from replicator.source.publication import PublishedTable, ensure_publication
from tests.conftest import Database
from tests.realtime.conftest import Env
from tests.support import checksum

SCHEMA = "CREATE TABLE loose (a integer NOT NULL, b text); ALTER TABLE loose REPLICA IDENTITY FULL;" \
         "INSERT INTO loose SELECT g, 'v' FROM generate_series(1, 20) g"


def keys(columns: str = "[a]") -> str:
    return f"""  per-table-config:
  - schema: public
    tables:
      loose:
        row-identifier-key: {columns}
"""


def extractor(*sections: str) -> str:
    return "realtime:\n  heartbeat:\n    interval-ms: 200\n" + "".join(sections)


def test_realtime_applies_by_the_key_of_its_own_section(pg_env: Env) -> None:
    pg_env.source.execute(SCHEMA)
    pg_env.extractor_text = extractor(keys()) + "snapshot:\n" + keys()
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("UPDATE loose SET b = 'changed' WHERE a <= 5; DELETE FROM loose WHERE a > 15")
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("loose")
    # Applied by key: the destination has the key's unique index, which the snapshot built.
    assert pg_env.dest.fetchone(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'loose'::regclass AND indisunique") == 1


def test_a_key_under_snapshot_only_is_refused_where_it_is_written(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute(SCHEMA)
    pg_env.extractor_text = extractor() + "snapshot:\n" + keys()
    assert pg_env.run("realtime", "--once") == 2
    err = capsys.readouterr().err
    assert "extractor.yaml:9: row-identifier-key: public.loose's key (a) is set under snapshot but not " \
           "under realtime" in err, err


def test_keys_that_differ_between_the_sections_are_refused(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute(SCHEMA)
    pg_env.extractor_text = extractor(keys("[a, b]")) + "snapshot:\n" + keys()
    assert pg_env.run("full", "--once") == 2
    err = capsys.readouterr().err
    assert "extractor.yaml:8: row-identifier-key: public.loose's key (a, b) under realtime differs from " \
           "its key (a) under snapshot at " in err, err


def test_a_key_under_realtime_only_is_refused_by_full_only(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute(SCHEMA)
    pg_env.extractor_text = extractor(keys())
    assert pg_env.run("full", "--once") == 2
    assert (
        "is not set under snapshot, so the snapshot of the full mode would build no key"
        in capsys.readouterr().err
    )
    assert pg_env.run("realtime", "--once") == 0  # realtime alone creates the table with its key


def test_realtime_threads_above_one_say_how_to_get_parallelism(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY)")
    pg_env.extractor_text = extractor() + "  threads: 4\n"
    assert pg_env.run("realtime", "--once") == 0
    assert "realtime.threads is 4, but realtime applies with one thread per replication slot" in caplog.text


TABLES = """
CREATE TABLE t (id integer PRIMARY KEY, v text);
INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
CREATE UNLOGGED TABLE scratch (id integer PRIMARY KEY, v text);
INSERT INTO scratch SELECT g, 's' || g FROM generate_series(1, 40) g;
"""


def _published(db: Database) -> set[str]:
    return {r[0] for r in db.fetchall("SELECT tablename FROM pg_publication_tables")}


def test_full_snapshots_an_unlogged_table_and_streams_the_rest(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    pg_env.source.execute(TABLES)
    assert pg_env.run("full", "--once") == 0
    assert checksum(pg_env.dest, "public", "scratch") == checksum(pg_env.source, "public", "scratch")
    assert "public.scratch is UNLOGGED" in caplog.text and "copied once by the snapshot" in caplog.text
    assert "scratch" not in _published(pg_env.source) and "t" in _published(pg_env.source)
    pg_env.source.execute(
        "UPDATE t SET v = 'changed' WHERE id = 1; INSERT INTO scratch VALUES (1000, 'not streamed')"
    )
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("t")
    assert pg_env.dest.fetchone("SELECT count(*) FROM scratch") == 40


def test_realtime_leaves_an_unlogged_table_out_with_a_warning(
    pg_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    pg_env.source.execute(TABLES)
    assert pg_env.run("realtime", "--once") == 0
    assert (
        "public.scratch is UNLOGGED" in caplog.text and "ALTER TABLE public.scratch SET LOGGED" in caplog.text
    )
    assert pg_env.dest.fetchone("SELECT to_regclass('public.scratch')") is None
    assert pg_env.dest.fetchone("SELECT to_regclass('public.t')") is not None


def test_a_publication_refused_for_an_unlogged_table_does_not_blame_privileges(source_db: Database) -> None:
    source_db.execute(TABLES)
    with source_db.connect() as conn, pytest.raises(SourceError) as err:
        ensure_publication(conn, "unlogged_pub", [PublishedTable("public", "scratch")])
    text = str(err.value)
    assert "unlogged" in text.lower() and "SET LOGGED" in text
    assert "owner" not in text
