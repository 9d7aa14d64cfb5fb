"""Hostile values through both decoders (issue 9 item 10): pgoutput carries every one; wal2json 2.5
turns NaN and ±Infinity into NULL, which is refused unless the config accepts it by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.realtime.conftest import Env, _drop_slots

HOSTILE = r"""
CREATE DOMAIN money_amount AS numeric(12, 2);
CREATE TABLE hostile (
    id integer PRIMARY KEY, n numeric, n2 numeric(10, 2), r real, d double precision, dom money_amount,
    na numeric[], fa double precision[], nr numrange, t text, j jsonb, ts timestamptz, b bytea
);
INSERT INTO hostile SELECT g, g / 7.0, g * 1.25, g / 3.0, g / 9.0, g, ARRAY[g, 1.5], ARRAY[g / 3.0],
       numrange(g, g + 1), 't' || g, jsonb_build_object('g', g),
       '2024-01-01'::timestamptz + g * interval '1h',
       decode(md5(g::text), 'hex')
FROM generate_series(1, 30) g;
"""
# Every value here is one a careless serializer gets wrong.
CHANGES = r"""
UPDATE hostile SET n = 'NaN', r = 'NaN', d = '-Infinity', dom = 'NaN' WHERE id = 1;
UPDATE hostile SET n = 'Infinity', d = 'Infinity', r = '-Infinity' WHERE id = 2;
UPDATE hostile SET na = ARRAY['NaN', 'Infinity']::numeric[], fa = ARRAY['-Infinity', 'NaN']::float8[]
    WHERE id = 3;
UPDATE hostile SET nr = numrange(NULL, 'Infinity') WHERE id = 4;
UPDATE hostile SET d = '-0', r = 1e-38, n = 1e300::numeric, n2 = -0.00 WHERE id = 5;
UPDATE hostile SET t = E'quote '' backslash \\ tab \t newline \n nul-free ünïcödé ✓',
    j = '{"a": "\u00e9", "n": 1.50}' WHERE id = 6;
UPDATE hostile SET ts = 'infinity', b = '\x00ff'::bytea, t = '' WHERE id = 7;
INSERT INTO hostile (id, n, r, d, na) VALUES (100, 'NaN', 'Infinity', 'NaN', ARRAY['NaN']::numeric[]);
UPDATE hostile SET n = NULL, t = NULL WHERE id = 8;
"""
NAN_COLUMNS = ("n", "n2", "r", "d")
AS_WAL2JSON_25 = (
    "SELECT id, " + ", ".join(
        f"CASE WHEN {c}::text IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {c}::text END"
        for c in NAN_COLUMNS
    ) + ", na::text, fa::text, nr::text, t, j::text, ts::text, b FROM hostile ORDER BY id"
)


def test_hostile_values_through_both_decoders(env: Env) -> None:
    env.source.execute(HOSTILE)
    assert env.run("full", "--once") == 0
    env.source.execute(CHANGES)
    assert env.run("realtime", "--once") == 0
    if env.plugin == "pgoutput":
        env.assert_equal("hostile")
        assert env.dest.fetchone("SELECT n::text FROM hostile WHERE id = 1") == "NaN"
    else:
        # Accepted by name (wal2json-nan-becomes-null: true in the fixture): exactly NaN and
        # ±Infinity of numeric, real and double precision columns arrive as NULL; arrays, ranges and
        # everything else arrive intact.
        assert env.dest.fetchall(AS_WAL2JSON_25) == env.source.fetchall(AS_WAL2JSON_25)
        assert env.dest.fetchone("SELECT n IS NULL AND d IS NULL FROM hostile WHERE id = 1")


@pytest.fixture
def w2j_env(source_db: Database, dest_db: Database, tmp_path: Path) -> Iterator[Env]:
    e = Env(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}", plugin="wal2json")
    yield e
    _drop_slots(source_db)


@pytest.mark.parametrize("mode", ["realtime", "full"])
def test_wal2json_is_refused_for_such_columns_unless_the_loss_is_accepted(
    w2j_env: Env, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    env = w2j_env
    env.source.execute(HOSTILE + "CREATE TABLE plain (id integer PRIMARY KEY, v text);")
    env.source_config = lambda **kw: env.source.write_config(  # type: ignore[method-assign]
        env.tmp / "source.yaml", **{"replication-slots": {env.slot: ["wal2json"]}}
    )
    assert env.run(mode, "--once") == 2
    err = capsys.readouterr().err
    assert "source.yaml:" in err and "wal2json would replicate NaN and ±Infinity as NULL" in err
    assert "public.hostile (n, n2, r, d) through slot" in err and "public.plain" not in err
    assert "Use pgoutput, the default, which has no such limit" in err
    assert "wal2json-nan-becomes-null: true" in err and "Traceback" not in err
    # Refused before anything was written: no slot (the capability probe's is temporary), no heartbeat
    # table, nothing at the destination.
    assert env.source.fetchone(
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
    ) == 0
    assert env.source.fetchone("SELECT to_regclass('replicate_io_cdc_heartbeat')") is None
    assert env.dest.fetchone("SELECT count(*) FROM pg_tables WHERE schemaname <> 'pg_catalog' "
                             "AND schemaname <> 'information_schema'") == 0
    # Accepted by name: it runs.
    env.source_config = lambda **kw: env.source.write_config(  # type: ignore[method-assign]
        env.tmp / "source.yaml",
        **{"replication-slots": {env.slot: ["wal2json"]}, "wal2json-nan-becomes-null": True},
    )
    assert env.run("full", "--once") == 0
