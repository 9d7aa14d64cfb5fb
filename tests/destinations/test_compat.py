"""Existing destination tables are checked before any is touched (issue 9 item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.destinations.compat import type_holds
from tests.conftest import Database
from tests.support import checksum, run_cli, write

SOURCE = """
CREATE TABLE big (id integer PRIMARY KEY, payload text);
INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
CREATE TABLE odd (id integer PRIMARY KEY, amount numeric(12,2), note varchar(20));
INSERT INTO odd SELECT g, g * 1.5, 'n' || g FROM generate_series(1, 100) g;
"""
# The destination already holds both tables, with rows of its own; `odd` does not fit.
DEST = """
CREATE TABLE big (id integer PRIMARY KEY, payload text);
INSERT INTO big SELECT g, 'kept' FROM generate_series(1, 300) g;
CREATE TABLE odd (id integer PRIMARY KEY, amount integer, note varchar(20));
INSERT INTO odd VALUES (1, 1, 'kept');
"""


@pytest.mark.parametrize(
    "source, destination, holds",
    [
        ("integer", "bigint", True), ("bigint", "integer", False), ("character varying(10)", "text", True),
        ("character varying(20)", "character varying(10)", False), ("numeric(12,2)", "numeric", True),
        ("numeric(12,2)", "integer", False), ("timestamp(3) without time zone", "timestamp without time zone", True),
        ("timestamp without time zone", "timestamp with time zone", False), ("integer[]", "bigint[]", True),
        ("jsonb", "json", False), ("public.mood", "public.mood", True),
    ],
)
def test_which_types_hold_the_source_values(source: str, destination: str, holds: bool) -> None:
    assert type_holds(source, destination) is holds


def _args(mode: str, tmp_path: Path, source_db: Database, dest_db: Database, *extra: str) -> list[str | Path]:
    args: list[str | Path] = [
        "run", mode, "--no-progress", "--source", source_db.write_config(tmp_path / "source.yaml"),
        "--destination", dest_db.write_config(tmp_path / "destination.yaml"), *extra,
    ]
    return args


def _dest_rows(dest_db: Database) -> tuple[int, int]:
    return dest_db.fetchone("SELECT count(*) FROM big"), dest_db.fetchone("SELECT count(*) FROM odd")


@pytest.mark.parametrize("extra", [(), ("--fresh",)])
def test_an_incompatible_table_is_refused_before_any_table_is_emptied(
    extra: tuple[str, ...], source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(SOURCE)
    dest_db.execute(DEST)
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db, *extra)) == 1
    err = capsys.readouterr().err
    assert "public.odd: column amount is numeric(12,2) at the source but integer at the destination" in err
    assert 'ALTER TABLE public.odd ALTER COLUMN amount TYPE numeric(12,2)' in err and "DROP TABLE public.odd" in err
    assert _dest_rows(dest_db) == (300, 1)  # nothing emptied, `big` included
    assert dest_db.fetchone("SELECT to_regnamespace('_replicator')") is None

    # Recovery is one step: drop the table as advised, run again.
    dest_db.execute("DROP TABLE odd")
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db, *extra)) == 0
    for table in ("big", "odd"):
        assert checksum(dest_db, "public", table) == checksum(source_db, "public", table)


def test_a_table_dropped_after_an_earlier_run_recorded_it_is_just_copied_again(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    """State from an earlier run (interrupted, or by an older version) must not demand --fresh."""
    source_db.execute(SOURCE)
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db)) == 0
    dest_db.execute("UPDATE _replicator.snapshot_tables SET status = 'loading' WHERE table_name = 'odd'")
    dest_db.execute("DROP TABLE odd")
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db)) == 0
    assert checksum(dest_db, "public", "odd") == checksum(source_db, "public", "odd")


def test_missing_columns_not_null_leftovers_and_privileges_are_all_named(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(SOURCE)
    dest_db.execute(
        "CREATE TABLE big (id integer PRIMARY KEY, extra text NOT NULL);"
        "CREATE TABLE odd (id bigint PRIMARY KEY, amount numeric, note text);"
        "INSERT INTO odd VALUES (1, 1, 'kept');"
        "CREATE ROLE limited LOGIN PASSWORD 'limited-pw'; GRANT CREATE ON DATABASE " + dest_db.name + " TO limited;"
        "GRANT USAGE, CREATE ON SCHEMA public TO limited; GRANT SELECT, INSERT ON big, odd TO limited"
    )
    try:
        dest = dest_db.write_config(tmp_path / "destination.yaml", username="limited", password="limited-pw")
        code = run_cli("run", "snapshot", "--no-progress", "--source", source_db.write_config(tmp_path / "source.yaml"),
                       "--destination", dest)
        err = capsys.readouterr().err
        assert code == 1
        assert "public.big: column payload is missing at the destination" in err
        assert "public.big: destination column extra is NOT NULL without a default" in err
        assert "public.odd: the destination user lacks UPDATE, DELETE, TRUNCATE on it" in err
        assert "GRANT UPDATE, DELETE, TRUNCATE ON public.odd TO limited" in err
        assert "public.odd: column" not in err  # bigint, numeric and text hold the source's values
        assert dest_db.fetchone("SELECT count(*) FROM odd") == 1
    finally:
        dest_db.execute("DROP OWNED BY limited; DROP ROLE limited")


def test_a_read_only_destination_is_refused_before_anything(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(SOURCE)
    dest_db.execute(DEST)
    dest_db.execute(f"ALTER DATABASE {dest_db.name} SET default_transaction_read_only = on")
    assert run_cli(*_args("snapshot", tmp_path, source_db, dest_db, "--fresh")) == 1
    assert "is read-only (default_transaction_read_only = on)" in capsys.readouterr().err
    with dest_db.connect() as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(f"ALTER DATABASE {dest_db.name} SET default_transaction_read_only = off")
    assert _dest_rows(dest_db) == (300, 1)


def test_delta_snapshot_and_full_refuse_before_touching_anything(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(SOURCE)
    dest_db.execute(DEST)
    assert run_cli(*_args("delta-snapshot", tmp_path, source_db, dest_db, "--once", "--fresh")) == 1
    assert "public.odd: column amount" in capsys.readouterr().err
    assert _dest_rows(dest_db) == (300, 1)

    slot = f"slot_{source_db.name}"
    source = source_db.write_config(tmp_path / "source.yaml", **{"replication-slots": {slot: ["pgoutput"]}, "publication": f"{slot}_pub"})
    extractor = write(tmp_path / "extractor.yaml", "realtime:\n  heartbeat:\n    enable: false\n")
    code = run_cli("run", "full", "--once", "--no-progress", "--source", source,
                   "--destination", dest_db.write_config(tmp_path / "destination.yaml"), "--extractor", extractor)
    try:
        assert code == 1
        assert "public.odd: column amount" in capsys.readouterr().err
        assert _dest_rows(dest_db) == (300, 1)
        assert source_db.fetchone("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == 0
        assert source_db.fetchone("SELECT count(*) FROM pg_publication") == 0
    finally:
        source_db.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )


def test_a_column_added_at_the_source_after_a_full_run_does_not_block_the_next_one(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    """Finished tables are not emptied again, so they are not checked: the stream adds the column."""
    source_db.execute(SOURCE)
    slot = f"slot_{source_db.name}"
    source = source_db.write_config(tmp_path / "source.yaml", **{"replication-slots": {slot: ["pgoutput"]}, "publication": f"{slot}_pub"})
    args = ["run", "full", "--once", "--no-progress", "--source", source, "--destination",
            dest_db.write_config(tmp_path / "destination.yaml"),
            "--extractor", write(tmp_path / "extractor.yaml", "realtime:\n  heartbeat:\n    enable: false\n")]
    try:
        assert run_cli(*args) == 0
        source_db.execute("ALTER TABLE odd ADD COLUMN extra text; UPDATE odd SET extra = 'x' WHERE id <= 5")
        assert run_cli(*args) == 0
        assert checksum(dest_db, "public", "odd") == checksum(source_db, "public", "odd")
    finally:
        source_db.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
