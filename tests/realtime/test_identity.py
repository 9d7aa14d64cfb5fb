"""Old rows are found by what the replica identity logs (issue 9 item 11): DELETE and UPDATE, identity
columns and keys changed, under every identity shape, through both decoders."""

from __future__ import annotations

import pytest

from tests.realtime.conftest import Env

SHAPES = """
CREATE TABLE ident_default (id integer PRIMARY KEY, code text NOT NULL UNIQUE, v text);
CREATE TABLE ident_full_key (id integer PRIMARY KEY, code text NOT NULL UNIQUE, v text);
ALTER TABLE ident_full_key REPLICA IDENTITY FULL;
CREATE TABLE ident_full_keyless (id integer, code text, v text);
ALTER TABLE ident_full_keyless REPLICA IDENTITY FULL;
CREATE TABLE ident_index (id integer PRIMARY KEY, code text NOT NULL, v text);
CREATE UNIQUE INDEX ident_index_code ON ident_index (code);
ALTER TABLE ident_index REPLICA IDENTITY USING INDEX ident_index_code;
"""
TABLES = ["ident_default", "ident_full_key", "ident_full_keyless", "ident_index"]


def _fill(env: Env) -> None:
    for t in TABLES:
        env.source.execute(f"INSERT INTO {t} SELECT g, 'c' || g, 'v' || g FROM generate_series(1, 40) g")


def _changes(env: Env) -> None:
    for t in TABLES:
        env.source.execute(
            f"""DELETE FROM {t} WHERE id IN (1, 2, 3);
                UPDATE {t} SET v = 'plain' WHERE id = 4;
                UPDATE {t} SET code = 'moved' || id WHERE id IN (5, 6);      -- the identity index's columns
                UPDATE {t} SET id = id + 1000 WHERE id IN (7, 8);           -- the primary key
                UPDATE {t} SET id = id + 2000, code = 'both' || id WHERE id = 9;
                BEGIN; UPDATE {t} SET code = 'tmp10' WHERE id = 10; DELETE FROM {t} WHERE id = 10; COMMIT;
                BEGIN; INSERT INTO {t} VALUES (500, 'c500', 'new');
                       DELETE FROM {t} WHERE code = 'c500'; COMMIT;
                DELETE FROM {t} WHERE code = 'moved5';"""
        )


def test_deletes_and_updates_find_their_rows_under_every_replica_identity(env: Env) -> None:
    env.source.execute(SHAPES)
    _fill(env)
    assert env.run("full", "--once") == 0
    _changes(env)
    assert env.run("realtime", "--once") == 0
    for t in TABLES:
        env.assert_equal(t)
    assert env.dest.fetchone("SELECT count(*) FROM ident_index WHERE id IN (1, 2, 3, 5, 10)") == 0


def test_changes_before_the_first_realtime_run_of_a_using_index_table(env: Env) -> None:
    """The stream of `full` itself (from the slot's start), not only later runs."""
    env.source.execute(SHAPES)
    _fill(env)
    env.extractor_text = "realtime:\n  heartbeat:\n    enable: false\n"
    env.source.execute(f"CREATE PUBLICATION {env.slot}_pub FOR TABLE {', '.join(TABLES)}")
    env.source.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (env.slot, env.plugin))
    _changes(env)  # in the slot, before any run: replayed over a snapshot that already has them
    assert env.run("full", "--once") == 0
    for t in TABLES:
        env.assert_equal(t)


def test_a_filter_leaving_out_the_identity_columns_is_refused_before_anything_is_written(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute(SHAPES)
    filt = pg_env.tmp / "filter.yaml"
    filt.write_text(
        f"allow:\n  catalog: {pg_env.source.name}\n  schema: public\n  allow:\n    ident_index:\n"
        "      allow: [id, v]\n"
    )
    assert pg_env.run("realtime", "--once", "--filter", str(filt)) == 2
    err = capsys.readouterr().err
    assert "public.ident_index: its REPLICA IDENTITY index is on (code)" in err, err
    assert pg_env.source.fetchone("SELECT count(*) FROM pg_publication") == 0
    assert pg_env.source.fetchone(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
    ) == 0
