"""Deletes found by the key walk, end to end: spread deletes, key types and orders, soft deletes,
conditions, a bounded spool, the divergence guard, and both implementations of the walk."""

from __future__ import annotations

import logging

import pytest

from replicator import native
from replicator.delta import walk
from tests.delta.conftest import DeltaSetup
from tests.support import run_cli

# Text under a collation whose order is not byte order ("und-x-icu": a < A < b < B), with
# escapes and multibyte characters; negative integers; a composite key of int and text.
SOURCE = """
CREATE TABLE nums (id bigint PRIMARY KEY, v text);
INSERT INTO nums SELECT g, 'v' || g FROM generate_series(-3000, 3000) g;

CREATE TABLE words (w text COLLATE "und-x-icu" PRIMARY KEY, n integer);
INSERT INTO words SELECT (ARRAY['a', 'A', 'b', 'B', 'é', 'e', 'ß', 'Z', '_', 'a b', E'a\\tb',
    E'back\\\\slash', E'new\\nline', '😀', 'ab', 'Ab', 'ä', ''])[1 + g % 18] || g, g
    FROM generate_series(1, 3000) g;

CREATE TABLE pairs (region text COLLATE "und-x-icu", n integer, v text, PRIMARY KEY (region, n));
INSERT INTO pairs SELECT (ARRAY['north', 'North', 'süd', 'Sud', 'east'])[1 + g % 5], g, 'v'
    FROM generate_series(1, 3000) g;

CREATE TABLE ids (id uuid PRIMARY KEY, at timestamptz NOT NULL);
INSERT INTO ids SELECT md5(g::text)::uuid, '2024-01-01'::timestamptz + g * interval '1 minute'
    FROM generate_series(1, 2000) g;
"""
TABLES = ("nums", "words", "pairs", "ids")

SPREAD_DELETES = """
DELETE FROM nums WHERE id % 37 = 0 OR id BETWEEN -100 AND 100;
DELETE FROM words WHERE n % 41 = 0;
DELETE FROM pairs WHERE n % 43 = 0 OR region = 'Sud';
DELETE FROM ids WHERE at < '2024-01-02' AND extract(minute FROM at)::int % 3 = 0;
UPDATE nums SET v = 'changed' WHERE id % 101 = 0;
INSERT INTO nums SELECT g, 'new' FROM generate_series(5000, 5050) g;
INSERT INTO words VALUES ('a', -1), ('A', -2), ('', -3);
"""


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    delta.source.execute(SOURCE)
    delta.extractor = "delta-snapshot:\n  threads: 2\n"
    return delta


@pytest.fixture(params=["C", "Python"])
def walk_in(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "Python":
        monkeypatch.setenv(native.KEYWALK_ENV, "1")
    elif (why := native.keywalk_unavailable()) is not None:
        pytest.skip(f"the C key walk is not usable here: {why}")
    else:
        for env in (native.PURE_PYTHON_ENV, native.RELAY_ENV, native.KEYWALK_ENV):
            monkeypatch.delenv(env, raising=False)
    # The CLI runs in this process (run_cli): what it will use is what native says here.
    assert (native.keywalk() is None) == (request.param == "Python")
    return str(request.param)


def test_spread_deletes_of_every_key_shape_are_found_in_one_walk(
    setup: DeltaSetup, walk_in: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    setup.once()
    gone = setup.source.fetchone("SELECT count(*) FROM nums WHERE id % 37 = 0 OR id BETWEEN -100 AND 100")
    setup.source.execute(SPREAD_DELETES)
    capsys.readouterr()
    setup.once()
    setup.assert_same(*TABLES)
    changed = setup.source.fetchone("SELECT count(*) FROM nums WHERE v IN ('changed', 'new')")
    assert f"public.nums (xmin): {changed} upserted, {gone} deleted" in capsys.readouterr().out
    for table in TABLES:
        assert f"public.{table}: " in caplog.text
    assert caplog.text.count("deletes by one key walk") == len(TABLES)
    setup.source.execute("DELETE FROM words; DELETE FROM pairs WHERE region <> 'east'")
    setup.once()
    setup.assert_same(*TABLES)


def test_soft_deletes_flag_the_gone_keys(setup: DeltaSetup, walk_in: str) -> None:
    setup.dest_extra = {"deletes": "soft"}
    setup.once()
    gone = setup.source.fetchone("SELECT count(*) FROM nums WHERE id % 37 = 0 OR id BETWEEN -100 AND 100")
    setup.source.execute(SPREAD_DELETES)
    setup.once()
    flagged = "SELECT count(*) FROM {} WHERE __replicator_is_deleted"
    live = "SELECT count(*) FROM {} WHERE NOT __replicator_is_deleted"
    for table in TABLES:
        expected = setup.source.fetchone(f"SELECT count(*) FROM {table}")
        assert setup.dest.fetchone(live.format(table)) == expected
    assert setup.dest.fetchone(flagged.format("nums")) == gone
    # A flagged key is not live: it is not walked (nor deleted) again, and comes back live when re-inserted.
    setup.source.execute("INSERT INTO nums VALUES (0, 'back'); DELETE FROM nums WHERE id = 1000")
    setup.once()
    both = "SELECT v, __replicator_is_deleted FROM nums WHERE id IN (0, 1000) ORDER BY id"
    assert setup.dest.fetchall(both) == [("back", False), ("v1000", True)]
    assert setup.dest.fetchone(flagged.format("nums")) == gone


def test_a_row_that_stops_matching_the_conditions_is_deleted(setup: DeltaSetup, walk_in: str) -> None:
    setup.filter = f"""allow:
  catalog: {setup.source.name}
  schema: public
  allow:
    nums:
      conditions: "v <> 'hidden'"
"""
    setup.once()
    setup.source.execute("UPDATE nums SET v = 'hidden' WHERE id % 10 = 0; DELETE FROM nums WHERE id % 7 = 0")
    setup.once()
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id % 10 = 0 OR id % 7 = 0") == 0
    assert setup.dest.fetchone("SELECT count(*) FROM nums") == setup.source.fetchone(
        "SELECT count(*) FROM nums WHERE v <> 'hidden'"
    )


def test_many_deletes_spill_to_disk_and_memory_stays_bounded(
    setup: DeltaSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(walk, "SPOOL_MEMORY", 1024)
    spooled: list[bool] = []
    real = walk.remove_gone

    def watch(*args, **kw):  # type: ignore[no-untyped-def]
        gone = args[4]
        spooled.append(bool(getattr(gone.spool, "_rolled", False)))
        return real(*args, **kw)

    monkeypatch.setattr(walk, "remove_gone", watch)
    setup.once()
    setup.source.execute("DELETE FROM nums WHERE id % 3 <> 0")
    setup.once()
    setup.assert_same("nums")
    assert True in spooled  # the gone keys of nums went to a temporary file


def test_keys_missing_at_the_destination_stop_that_table_not_the_others(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something deleted rows at the destination behind our back: the walk would see them as
    missing. Deleting by such a comparison is refused for that table; the others go on."""
    setup.once()
    setup.dest.execute("DELETE FROM nums WHERE id BETWEEN 1 AND 500")
    setup.source.execute("DELETE FROM nums WHERE id < -2000; DELETE FROM words WHERE n % 2 = 0")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    out, err = capsys.readouterr()
    assert "1 table(s) FAILED: public.nums" in out
    assert "public.nums: comparing keys found 500 source keys that the destination lacks" in err
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id < -2000") == 1000  # nothing deleted
    setup.assert_same("words", "pairs", "ids")
    assert run_cli(*setup.args("--once", "--fresh")) == 0
    setup.assert_same(*TABLES)


def test_numeric_keys_still_go_by_ranges(delta: DeltaSetup, caplog: pytest.LogCaptureFixture) -> None:
    delta.source.execute(
        "CREATE TABLE n (id numeric PRIMARY KEY); INSERT INTO n SELECT g / 4.0 FROM generate_series(1, 900) g"
    )
    delta.extractor = "delta-snapshot:\n  min-job-size-rows: 100\n"
    delta.once()
    delta.source.execute("DELETE FROM n WHERE id * 4 % 9 = 0")
    delta.once()
    delta.assert_same("n")
    assert "public.n: 0 row(s) upserted, 100 deleted (xmin, deletes by key ranges)" in caplog.text


def test_a_pass_says_at_debug_level_when_each_phase_ended(
    setup: DeltaSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Where a pass's time goes (the profile of issue 11 was read from this line): every phase,
    the tables' own included, in the order they ended, as seconds since the pass began."""
    setup.once()
    setup.source.execute(SPREAD_DELETES)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="replicator.delta.passes"):
        setup.once()
    lines = [r.getMessage() for r in caplog.records if " phases (s since it began): " in r.getMessage()]
    assert len(lines) == 1, lines
    marks = [m.rsplit(" ", 1) for m in lines[0].split(": ", 1)[1].split(", ")]
    names, seconds = [m[0] for m in marks], [float(m[1]) for m in marks]
    assert seconds == sorted(seconds)
    for phase in ("connected", "catalog", "checked", "snapshot", "planned", "workers done"):
        assert phase in names
    for table in TABLES:
        walked, deleted, committed = (
            names.index(f"public.{table}: {p}") for p in ("walked", "deleted", "committed")
        )
        assert names.index("snapshot") < walked < deleted < committed < names.index("workers done")
