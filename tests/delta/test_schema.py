"""Schema changes at the source between two delta passes, with both watermark kinds: added,
dropped (or kept), renamed and retyped columns, new tables in a whole-schema filter, and one
table that cannot be followed not stopping the others."""

from __future__ import annotations

import signal
import time

import pytest

from tests.delta.conftest import DeltaSetup
from tests.support import checksum, run_cli, spawn_cli

# Two tables alike but for how a pass finds their changes: xmin, and an update key.
SOURCE = """
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TABLE by_xmin (id integer PRIMARY KEY, qty integer NOT NULL, label text, note varchar(10),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE by_key (LIKE by_xmin INCLUDING DEFAULTS, PRIMARY KEY (id));
CREATE INDEX ON by_key (updated_at);
CREATE TRIGGER touch BEFORE UPDATE ON by_key FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO by_xmin (id, qty, label, note) SELECT g, g, 'l' || g, 'n' || g FROM generate_series(1, 400) g;
INSERT INTO by_key SELECT * FROM by_xmin;
"""
TABLES = ("by_xmin", "by_key")
EXTRACTOR = """delta-snapshot:
  threads: 2
  per-table-config:
  - schema: public
    tables:
      by_key:
        update-key: updated_at
"""


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    delta.source.execute(SOURCE)
    delta.extractor = EXTRACTOR
    delta.once()
    return delta


def _both(setup: DeltaSetup, statement: str) -> None:
    setup.source.execute(";".join(statement.format(t=t) for t in TABLES))


def _columns(db, table: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return db.fetchall(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_\\_replicator%%' ORDER BY attnum",
        (table,),
    )


def _same_shape_and_rows(setup: DeltaSetup) -> None:
    for t in TABLES:
        assert _columns(setup.dest, t) == _columns(setup.source, t), t
    setup.assert_same(*TABLES)


def test_added_columns_get_the_source_values_of_every_row(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    # A constant default writes nothing at the source (no row changes), a volatile one rewrites
    # every row; neither moves an update key.
    _both(
        setup,
        "ALTER TABLE {t} ADD COLUMN flag text NOT NULL DEFAULT 'd';"
        "ALTER TABLE {t} ADD COLUMN serial_no double precision DEFAULT random();"
        "UPDATE {t} SET label = 'changed' WHERE id = 7",
    )
    capsys.readouterr()
    setup.once()
    _same_shape_and_rows(setup)
    out = capsys.readouterr().out
    assert "public.by_key (update-key): 400 upserted (read every row)" in out
    # The next pass is a delta again.
    _both(setup, "UPDATE {t} SET flag = 'x' WHERE id = 1")
    setup.once()
    _same_shape_and_rows(setup)
    out = capsys.readouterr().out
    assert "read every row" not in out and "public.by_xmin (xmin): 1 upserted, 0 deleted" in out


def test_dropped_columns_are_dropped(setup: DeltaSetup) -> None:
    _both(
        setup,
        "ALTER TABLE {t} DROP COLUMN note; DELETE FROM {t} WHERE id = 3;"
        "UPDATE {t} SET qty = -1 WHERE id = 4",
    )
    setup.once()
    _same_shape_and_rows(setup)


def test_dropped_columns_can_be_kept(setup: DeltaSetup) -> None:
    setup.dest_extra = {"schema-changes": {"dropped-columns": "keep"}}
    _both(setup, "ALTER TABLE {t} DROP COLUMN qty; INSERT INTO {t} (id, label) VALUES (1000, 'after')")
    setup.once()
    for t in TABLES:
        # The column stays, its old values too; rows written from now on leave it NULL.
        assert setup.dest.fetchall(f"SELECT id, qty FROM {t} WHERE id IN (5, 1000) ORDER BY id") == [
            (5, 5),
            (1000, None),
        ]
        cols = [c for c, _ in _columns(setup.dest, t) if c != "qty"]
        assert checksum(setup.dest, "public", t, cols) == checksum(setup.source, "public", t)


def test_a_dropped_source_table_is_kept_and_the_others_go_on(
    setup: DeltaSetup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.filter = f"allow:\n  catalog: {setup.source.name}\n  schema: public\n"
    setup.dest_extra = {"schema-changes": {"dropped-tables": "drop"}}
    before = checksum(setup.dest, "public", "by_xmin")
    setup.source.execute("DROP TABLE by_xmin; UPDATE by_key SET qty = 0 WHERE id < 5")
    setup.once()
    setup.assert_same("by_key")
    assert checksum(setup.dest, "public", "by_xmin") == before
    said = [r.getMessage() for r in caplog.records if "dropped-tables" in r.getMessage()]
    assert said and "destination.yaml:" in said[0] and "applies to realtime streaming only" in said[0]


def test_renamed_columns_keep_their_values_without_reading_every_row(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    _both(
        setup, "ALTER TABLE {t} RENAME COLUMN label TO title; UPDATE {t} SET title = 'renamed' WHERE id = 2"
    )
    capsys.readouterr()
    setup.once()
    _same_shape_and_rows(setup)
    out = capsys.readouterr().out
    assert "read every row" not in out
    assert "public.by_xmin (xmin): 1 upserted" in out


def test_renamed_key_column(setup: DeltaSetup) -> None:
    _both(setup, "ALTER TABLE {t} RENAME COLUMN id TO item_id; DELETE FROM {t} WHERE item_id = 9")
    setup.once()
    for t in TABLES:
        assert _columns(setup.dest, t) == _columns(setup.source, t), t
    # The deletes of a pass that followed a change to the key's columns come one pass later.
    setup.once()
    setup.assert_same(*TABLES)
    _both(setup, "DELETE FROM {t} WHERE item_id = 10; UPDATE {t} SET qty = 0 WHERE item_id = 11")
    setup.once()
    setup.assert_same(*TABLES)


def test_retyped_columns_take_values_only_the_new_type_holds(setup: DeltaSetup) -> None:
    _both(
        setup,
        "ALTER TABLE {t} ALTER COLUMN qty TYPE bigint;"
        "ALTER TABLE {t} ALTER COLUMN note TYPE varchar(40);"
        "ALTER TABLE {t} ALTER COLUMN label TYPE jsonb USING jsonb_build_object('was', label);"
        "UPDATE {t} SET qty = 5000000101, note = repeat('x', 40) WHERE id = 1",
    )
    setup.once()
    _same_shape_and_rows(setup)
    assert setup.dest.fetchone("SELECT qty FROM by_key WHERE id = 1") == 5000000101


def test_a_column_dropped_and_added_again_under_its_name(setup: DeltaSetup) -> None:
    _both(setup, "ALTER TABLE {t} DROP COLUMN label; ALTER TABLE {t} ADD COLUMN label integer DEFAULT 42")
    setup.once()
    _same_shape_and_rows(setup)


def test_a_new_table_in_a_whole_schema_filter_joins_at_the_next_pass(setup: DeltaSetup) -> None:
    setup.filter = f"allow:\n  catalog: {setup.source.name}\n  schema: public\n"
    setup.once()
    setup.source.execute(
        "CREATE TABLE late (id bigint PRIMARY KEY, v text);"
        "INSERT INTO late SELECT g, 'v' FROM generate_series(1, 50) g"
    )
    setup.once()
    setup.assert_same("late", *TABLES)
    setup.source.execute("DELETE FROM late WHERE id < 10; UPDATE late SET v = 'w' WHERE id = 20")
    setup.once()
    setup.assert_same("late", *TABLES)


def test_a_failing_table_does_not_stop_the_others(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # The destination refuses by_xmin's rows (as a full disk or a lost grant would).
    setup.dest.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'no rows today'; END $$;"
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON by_xmin FOR EACH ROW EXECUTE FUNCTION refuse();"
        # ALWAYS: replicated rows are written with session_replication_role = replica, under which
        # an ordinary trigger of the destination does not fire.
        "ALTER TABLE by_xmin ENABLE ALWAYS TRIGGER refuse"
    )
    _both(setup, "ALTER TABLE {t} ADD COLUMN extra integer DEFAULT 1; UPDATE {t} SET qty = 0 WHERE id < 5")
    before = checksum(setup.dest, "public", "by_xmin")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    out, err = capsys.readouterr()
    assert "1 table(s) FAILED: public.by_xmin" in out
    assert "public.by_xmin (xmin): FAILED:" in out and "no rows today" in out
    assert "public.by_xmin: this pass failed for this table, the others go on" in err
    setup.assert_same("by_key")
    # Nothing of the failed table's pass is there: not its columns, rows, or watermark.
    assert checksum(setup.dest, "public", "by_xmin") == before
    assert "extra" not in [c for c, _ in _columns(setup.dest, "by_xmin")]
    setup.dest.execute("DROP TRIGGER refuse ON by_xmin")
    setup.once()
    _same_shape_and_rows(setup)


def test_a_running_loop_goes_on_past_a_failing_table(setup: DeltaSetup) -> None:
    setup.dest.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'no rows today'; END $$;"
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON by_xmin FOR EACH ROW EXECUTE FUNCTION refuse();"
        # ALWAYS: replicated rows are written with session_replication_role = replica, under which
        # an ordinary trigger of the destination does not fire.
        "ALTER TABLE by_xmin ENABLE ALWAYS TRIGGER refuse"
    )
    setup.extractor = EXTRACTOR.replace("threads: 2", "threads: 2\n  interval-s: 1")
    child = spawn_cli(*setup.args())
    try:
        _both(setup, "UPDATE {t} SET qty = -7 WHERE id = 1")
        deadline = time.monotonic() + 60
        while setup.dest.fetchone("SELECT qty FROM by_key WHERE id = 1") != -7:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        setup.dest.execute("DROP TRIGGER refuse ON by_xmin")
        assert setup.dest.fetchone("SELECT qty FROM by_xmin WHERE id = 1") == 1  # refused meanwhile
        while setup.dest.fetchone("SELECT qty FROM by_xmin WHERE id = 1") != -7:
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert "public.by_xmin: this pass failed for this table, the others go on" in err
    setup.assert_same(*TABLES)
