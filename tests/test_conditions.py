"""Filter conditions are one harmless boolean expression or refused (issue 9 item 2)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from replicator import conditions
from tests.conftest import Database
from tests.support import run_cli, spawn_cli, write

TABLES = """
CREATE TABLE t (id integer PRIMARY KEY, name text);
INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 200) g;
CREATE TABLE victim (x integer);
INSERT INTO victim VALUES (1);
CREATE TABLE side_effects (x integer);
CREATE FUNCTION bump() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN INSERT INTO side_effects VALUES (1); RETURN true; END $$;
CREATE FUNCTION slow_but_stable(integer) RETURNS integer STABLE LANGUAGE sql AS 'SELECT $1 FROM pg_sleep(100)';
"""

INJECTIONS = [
    "1=1); DROP TABLE victim; --",
    "1=1) ; COMMIT; DROP TABLE victim; SELECT (1",
    "id > 0 /* */ ; DROP TABLE victim",
    "id > 0; DROP TABLE victim",
    "id = $$x$$; DROP TABLE victim",
]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1=1); DROP TABLE victim; --", "closes a parenthesis"),
        ("id > 0; DROP TABLE victim", "';' outside quotes"),
        ("id > 0 -- trailing comment", "comment (--)"),
        ("id > 0 /* c */", "comment (/*)"),
        ("(id > 0", "opened and not closed"),
        ("id > 0) OR (true", "closes a parenthesis"),
        ("name = $$x$$", "'$' outside quotes"),
        ("name = 'unterminated", "not closed"),
        # with standard_conforming_strings = off the first literal would end at the third quote
        ("name = '\\' OR x = ' ; DROP TABLE victim; --'", "';' outside quotes"),
    ],
)
def test_shape_problems_are_named(text: str, problem: str) -> None:
    found = conditions.shape_problem(text)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "text",
    ["id <= 100 AND name <> 'n7'", "name = 'a;b -- /* $1 )'", "name = E'it\\'s; fine'", 'lower("name") LIKE \'n\\_%\'',
     "id IN (SELECT 1) AND (id > 0 OR id < 0)"],
)
def test_ordinary_conditions_pass_the_shape_check(text: str) -> None:
    assert conditions.shape_problem(text) is None


def test_function_names_are_found_with_their_schema() -> None:
    assert conditions.function_names('f(x) > pg_catalog.now() AND "Odd"(1) AND public.g (2)') == [
        (None, "f"), ("pg_catalog", "now"), (None, "Odd"), ("public", "g"),
    ]


def _filter(tmp_path: Path, db: Database, condition: str) -> Path:
    escaped = condition.replace("'", "''")
    return write(tmp_path / "filter.yaml", f"allow:\n  catalog: {db.name}\n  schema: public\n  allow:\n    t:\n      conditions: '{escaped}'\n")


def _args(mode: str, tmp_path: Path, source_db: Database, dest_db: Database, condition: str) -> list[str | Path]:
    source = source_db.write_config(tmp_path / "source.yaml")
    filt = _filter(tmp_path, source_db, condition)
    if mode == "check":
        return ["check", "--source", source, "--filter", filt]
    args: list[str | Path] = ["run", mode, "--no-progress", "--source", source,
                              "--destination", dest_db.write_config(tmp_path / "destination.yaml"), "--filter", filt]
    return [*args, "--once"] if mode == "delta-snapshot" else args


@pytest.mark.parametrize("mode", ["snapshot", "delta-snapshot", "check"])
def test_injected_statements_drop_nothing(
    mode: str, source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(TABLES)
    for text in INJECTIONS:
        code = run_cli(*_args(mode, tmp_path, source_db, dest_db, text))
        err = capsys.readouterr().err
        assert code == 2, (text, err)
        assert "conditions must be one boolean expression" in err and "filter.yaml:" in err
        assert source_db.fetchone("SELECT count(*) FROM victim") == 1
    assert dest_db.fetchone("SELECT to_regclass('public.t')") is None  # nothing was created either


@pytest.mark.parametrize("mode", ["snapshot", "delta-snapshot", "check"])
def test_a_volatile_function_is_refused_before_anything_runs(
    mode: str, source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(TABLES)
    code = run_cli(*_args(mode, tmp_path, source_db, dest_db, "id > 0 AND bump()"))
    out = capsys.readouterr()
    if mode == "check":
        assert code == 1 and "bump() is VOLATILE" in out.out
    else:
        assert code == 2 and "bump() is VOLATILE" in out.err and "ALTER FUNCTION bump() STABLE" in out.err
        assert dest_db.fetchone("SELECT to_regclass('public.t')") is None
    assert source_db.fetchone("SELECT count(*) FROM side_effects") == 0


def test_pg_sleep_is_refused_at_once_and_does_not_hold_the_run(source_db: Database, dest_db: Database, tmp_path: Path) -> None:
    source_db.execute(TABLES)
    started = time.monotonic()
    child = spawn_cli(*_args("snapshot", tmp_path, source_db, dest_db, "pg_sleep(100) IS NOT NULL AND id > 0"))
    try:
        _, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail("a condition calling pg_sleep(100) held the run")
    assert child.returncode == 2 and "pg_sleep(double precision) is VOLATILE" in err
    assert time.monotonic() - started < 30


def test_a_condition_too_slow_to_plan_hits_the_statement_timeout(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STABLE function is evaluated while planning (for estimates): the check's statement_timeout bounds it."""
    source_db.execute(TABLES)
    monkeypatch.setattr(conditions, "CHECK_TIMEOUT_MS", 500)
    started = time.monotonic()
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db, "id > slow_but_stable(1)")) == 2
    assert "took more than 0.5 s just to plan" in capsys.readouterr().err
    assert time.monotonic() - started < 20


def test_a_condition_that_is_not_boolean_names_the_reason(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(TABLES)
    assert run_cli(*_args("delta-snapshot", tmp_path, source_db, dest_db, "id + 1")) == 2
    assert "argument of WHERE must be type boolean" in capsys.readouterr().err


def test_a_valid_condition_still_filters(source_db: Database, dest_db: Database, tmp_path: Path) -> None:
    source_db.execute(TABLES)
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db, "id <= 50 AND name <> 'n7' AND now() > '2000-01-01'")) == 0
    assert dest_db.fetchone("SELECT count(*) FROM t") == 49
