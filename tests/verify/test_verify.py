"""``replicator verify`` on real servers: what it finds, what it honours, and its exit statuses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support import run_cli, write


def _args(command: str, tmp_path: Path, source: Database, dest: Database, *extra: str) -> list[str]:
    args = [command] + (["snapshot", "--no-progress"] if command == "run" else [])
    return [
        *args,
        "--source",
        str(source.write_config(tmp_path / "source.yaml")),
        "--destination",
        str(dest.write_config(tmp_path / "destination.yaml")),
        *extra,
    ]


def test_one_changed_value_a_missing_and_an_extra_row_in_a_million(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, a text, b numeric, c timestamptz, d jsonb);"
        "INSERT INTO big SELECT g, md5(g::text), g / 7.0, '2024-01-01'::timestamptz + g * interval '1 s',"
        "       jsonb_build_object('g', g) FROM generate_series(1, 1000000) g;"
        "CREATE TABLE small (k text PRIMARY KEY, v integer); INSERT INTO small VALUES ('a', 1), ('b', 2);"
    )
    source_db.execute("VACUUM ANALYZE big")
    assert run_cli(*_args("run", tmp_path, source_db, dest_db)) == 0
    capsys.readouterr()
    started = time.monotonic()
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db)) == 0
    equal_s = time.monotonic() - started
    out = capsys.readouterr().out
    assert "public.big: equal (1,000,000 rows)" in out and "public.small: equal (2 rows)" in out
    dest_db.execute("UPDATE big SET b = b + 1 WHERE id = 424242")
    dest_db.execute("DELETE FROM big WHERE id = 17")
    dest_db.execute("INSERT INTO big (id, a) VALUES (1000001, 'extra')")
    started = time.monotonic()
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db)) == 3
    different_s = time.monotonic() - started
    out = capsys.readouterr().out
    assert "public.big: DIFFERENT (source 1,000,000 rows, destination 1,000,000 rows)" in out
    assert "  changed: id=424242" in out
    assert "  missing at the destination: id=17" in out
    assert "  extra at the destination: id=1000001" in out
    assert "public.small: equal (2 rows)" in out
    print(f"verify of 1,000,000 rows: {equal_s:.1f} s equal, {different_s:.1f} s with three differences")


def test_filter_columns_conditions_and_row_identifier_key_are_honoured(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, region text, secret text, v integer);"
        "INSERT INTO t SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 's' || g, g "
        "FROM generate_series(1, 500) g;"
        "CREATE TABLE nk (code text NOT NULL, v integer);"
        "INSERT INTO nk SELECT 'c' || g, g FROM generate_series(1, 300) g;"
    )
    filt = write(tmp_path / "filter.yaml", (
        "allow:\n  schema: public\n  allow:\n"
        "    t:\n      allow: [id, region, v]\n      conditions: \"region = 'eu'\"\n"
        "    nk:\n"
    ))  # fmt: skip
    extractor = write(tmp_path / "extractor.yaml", (
        "snapshot:\n  per-table-config:\n    - schema: public\n      tables:\n"
        "        nk:\n          row-identifier-key: [code]\n"
    ))  # fmt: skip
    extra = ("--filter", str(filt), "--extractor", str(extractor))
    assert run_cli(*_args("run", tmp_path, source_db, dest_db, *extra)) == 0
    capsys.readouterr()
    # Rows the condition leaves out change freely; so does a column the filter leaves out.
    source_db.execute("UPDATE t SET v = -1 WHERE region = 'us'; UPDATE t SET secret = 'changed'")
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db, *extra)) == 0
    out = capsys.readouterr().out
    assert "public.t: equal (250 rows)" in out and "public.nk: equal (300 rows)" in out
    dest_db.execute("UPDATE nk SET v = 0 WHERE code = 'c7'")
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db, *extra, "--max-rows", "5")) == 3
    assert "  changed: code=c7" in capsys.readouterr().out


def test_a_keyless_table_is_compared_as_a_multiset(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(
        "CREATE TABLE log (msg text, n integer);"
        "INSERT INTO log SELECT 'm' || (g % 10), g % 3 FROM generate_series(1, 1000) g;"
    )
    assert run_cli(*_args("run", tmp_path, source_db, dest_db)) == 0
    capsys.readouterr()
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db)) == 0
    assert "public.log: equal (1,000 rows)" in capsys.readouterr().out
    # One duplicate row fewer, one more of another: same count, different multiset.
    dest_db.execute("DELETE FROM log WHERE ctid = (SELECT min(ctid) FROM log WHERE msg = 'm1' AND n = 1)")
    dest_db.execute("INSERT INTO log VALUES ('m2', 2)")
    assert run_cli(*_args("verify", tmp_path, source_db, dest_db)) == 3
    out = capsys.readouterr().out
    assert "public.log: DIFFERENT (source 1,000 rows, destination 1,000 rows)" in out
    assert "  missing at the destination: (m1,1)" in out
    assert "  extra at the destination: (m2,2)" in out


def test_a_missing_table_and_objects_beyond_tables_are_named(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(
        "CREATE TABLE a (id integer PRIMARY KEY); INSERT INTO a VALUES (1);"
        "CREATE VIEW a_view AS SELECT * FROM a;"
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
        "CREATE TRIGGER a_touch BEFORE UPDATE ON a FOR EACH ROW EXECUTE FUNCTION touch();"
        "CREATE ROLE verify_reader_role; GRANT SELECT ON a TO verify_reader_role;"
    )
    try:
        assert run_cli(*_args("run", tmp_path, source_db, dest_db)) == 0
        source_db.execute("CREATE TABLE b (id integer PRIMARY KEY); INSERT INTO b VALUES (1), (2)")
        capsys.readouterr()
        assert run_cli(*_args("verify", tmp_path, source_db, dest_db)) == 3
        out = capsys.readouterr().out
        assert "public.a: equal (1 rows)" in out
        assert "public.b: DIFFERENT (source 2 rows, not at the destination)" in out
        assert (
            "not migrated by replicator (move by hand): 1 views (0 at the destination; not: public.a_view); "
            "1 functions (0 at the destination; not: public.touch()); 1 triggers (0 at the destination; "
            "not: public.a: a_touch); 1 grants (0 at the destination; not: public.a: SELECT to "
            "verify_reader_role)"
        ) in out
    finally:
        source_db.execute("DROP OWNED BY verify_reader_role; DROP ROLE verify_reader_role")


def test_a_destination_that_is_the_source_is_a_config_error(source_db: Database, tmp_path: Path) -> None:
    source_db.execute("CREATE TABLE a (id integer PRIMARY KEY)")
    assert run_cli(*_args("verify", tmp_path, source_db, source_db)) == 2
