"""Configs delta-snapshot refuses: each message names the file, line and key where it can, no traceback."""

from __future__ import annotations

import pytest

from tests.delta.conftest import DeltaSetup
from tests.support import run_cli

SOURCE = """
CREATE TABLE keyed (id integer PRIMARY KEY, updated_at timestamptz, label text, v integer);
CREATE TABLE nokey (a integer, b text);
CREATE TABLE other_nokey (a integer NOT NULL, b text);
CREATE TABLE nullable (a integer, b text);
"""


def _fails(delta: DeltaSetup, capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    capsys.readouterr()
    assert run_cli(*delta.args("--once")) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    delta.source.execute(SOURCE)
    return delta


def test_tables_without_any_key_are_refused(setup: DeltaSetup, capsys: pytest.CaptureFixture[str]) -> None:
    assert _fails(setup, capsys) == (
        "error: tables public.nokey, public.nullable, public.other_nokey have no primary key and no "
        "row-identifier-key: delta-snapshot cannot tell their rows apart (add a primary key, set "
        "row-identifier-key under delta-snapshot: per-table-config in the extractor config, or leave "
        "them out with a filter)"
    )
    setup.source.execute("DROP TABLE nokey, nullable")
    assert _fails(setup, capsys).startswith("error: table public.other_nokey has no primary key")
    # Nothing was copied.
    assert setup.dest.fetchone("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_a_row_identifier_key_makes_a_keyless_table_usable(setup: DeltaSetup) -> None:
    setup.source.execute("DROP TABLE nokey, nullable; INSERT INTO other_nokey VALUES (1, 'x'), (2, 'y')")
    setup.extractor = """delta-snapshot:
  per-table-config:
  - schema: public
    tables:
      other_nokey:
        row-identifier-key: [a]
"""
    setup.once()
    setup.source.execute("DELETE FROM other_nokey WHERE a = 1; UPDATE other_nokey SET b = 'z' WHERE a = 2")
    setup.once()
    setup.assert_same("other_nokey")


def test_a_nullable_row_identifier_key_cannot_replicate_deletes(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.source.execute("DROP TABLE nokey, other_nokey")
    setup.extractor = """delta-snapshot:
  per-table-config:
  - schema: public
    tables:
      nullable:
        row-identifier-key: [a]
"""
    assert _fails(setup, capsys) == (
        f"error: {setup.tmp}/extractor.yaml:6: row-identifier-key: column 'a' of public.nullable allows "
        "NULL; "
        "replicate-deletes compares keys and needs NOT NULL key columns (choose NOT NULL columns, or set "
        "replicate-deletes: false for this table)"
    )
    setup.extractor += "        replicate-deletes: false\n"
    setup.once()


@pytest.mark.parametrize(
    ("extractor", "expected"),
    [
        (
            "delta-snapshot:\n  per-table-config:\n  - tables:\n      keyed:\n        update-key: "
            "updatd_at\n",
            "extractor.yaml:5: update-key: table public.keyed has no column 'updatd_at'; did you mean "
            "'updated_at'?",
        ),
        (
            "delta-snapshot:\n  per-table-config:\n  - tables:\n      keyed:\n        update-key: label\n",
            "extractor.yaml:5: update-key: column 'label' of public.keyed has type text; an update key must "
            "be "
            "an integer, numeric, date or timestamp column",
        ),
        (
            "delta-snapshot:\n  update-key: modified\n",
            "extractor.yaml:2: update-key: no selected table has column(s) modified",
        ),
        (
            "delta-snapshot:\n  update-key: [updated_at]\n  per-table-config:\n  - tables:\n      keyed:\n"
            "        row-identifier-key: [id]\n        split-key: nope\n",
            "extractor.yaml:7: split-key: table public.keyed has no column 'nope'",
        ),
        (
            "delta-snapshot:\n  interval-s: 0\n",
            "extractor.yaml:2: delta-snapshot.interval-s: input should be greater than 0 (got 0)",
        ),
        (
            "delta-snapshot:\n  replicate-delete: true\n",
            "extractor.yaml:2: delta-snapshot.replicate-delete: unknown key; did you mean "
            "'replicate-deletes'?",
        ),
    ],
)
def test_bad_update_keys_and_settings(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str], extractor: str, expected: str
) -> None:
    setup.source.execute("DROP TABLE nokey, other_nokey, nullable")
    setup.extractor = extractor
    assert _fails(setup, capsys) == f"error: {setup.tmp}/{expected}"


def test_a_section_update_key_applies_only_where_the_column_exists(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    setup.source.execute(
        "DROP TABLE nokey, other_nokey, nullable; CREATE TABLE plain (id integer PRIMARY KEY);"
        "INSERT INTO keyed VALUES (1, now(), 'a', 1); INSERT INTO plain VALUES (1)"
    )
    setup.extractor = "delta-snapshot:\n  update-key: updated_at\n"
    setup.once()
    assert "public.keyed (update-key)" in capsys.readouterr().out
    assert "no column updated_at in public.plain: these tables use xmin instead" in caplog.text
    assert "update-key updated_at allows NULL" in caplog.text


def test_an_existing_destination_table_without_a_unique_key_is_refused(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.source.execute(
        "DROP TABLE nokey, other_nokey, nullable; CREATE TABLE other (id integer PRIMARY KEY);"
        "INSERT INTO other VALUES (1)"
    )
    setup.dest.execute("CREATE TABLE keyed (id integer, updated_at timestamptz, label text, v integer)")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    out, err = capsys.readouterr()
    # Refused before anything is written to it; the other table is copied all the same.
    assert (
        "public.keyed: this pass failed for this table, the others go on: destination table public.keyed has "
        "no primary key or unique index on (id); delta-snapshot merges changed rows by key: add one, or drop "
        "the table so replicator recreates it"
    ) in err
    assert "1 table(s) FAILED: public.keyed" in out
    assert setup.dest.fetchone("SELECT count(*) FROM keyed") == 0
    setup.assert_same("other")
