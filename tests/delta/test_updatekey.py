"""update-key watermarks: which reading becomes the bound, and the horizon read from a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replicator.catalog import load_catalog
from replicator.delta import updatekey
from replicator.delta.updatekey import Horizon, Reading
from replicator.filters import SelectedTable
from replicator.localpg import start_cluster
from tests.conftest import Database
from tests.delta.conftest import DeltaSetup

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
COLS = ("updated_at",)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_with_no_transaction_open_the_bound_is_this_passes_reading() -> None:
    value = updatekey.next_value(COLS, None, Reading(_at(0), ("100",)), Horizon(_at(0.01)))
    assert value == {"columns": ["updated_at"], "since": ["100"], "readings": []}


def test_a_long_transaction_holds_the_bound_until_it_ends() -> None:
    # Pass 1: a transaction that began at 9:55 is open; nothing is safe to use yet.
    v1 = updatekey.next_value(COLS, None, Reading(_at(0), ("100",)), Horizon(_at(-5)))
    assert v1["since"] is None  # the next pass reads every row
    # Pass 2: still open; the previous bound stays and readings wait.
    v2 = updatekey.next_value(COLS, v1, Reading(_at(1), ("150",)), Horizon(_at(-5)))
    assert v2["since"] is None and [r["max"] for r in v2["readings"]] == [["100"], ["150"]]
    # Pass 3: it ended; the oldest open one began at 10:01:30: the latest reading before that wins.
    v3 = updatekey.next_value(COLS, v2, Reading(_at(2), ("180",)), Horizon(_at(1.5)))
    assert v3["since"] == ["150"]
    assert [r["max"] for r in v3["readings"]] == [["180"]]
    # Pass 4: quiet again.
    v4 = updatekey.next_value(COLS, v3, Reading(_at(3), ("200",)), Horizon(_at(3.01)))
    assert v4 == {"columns": ["updated_at"], "since": ["200"], "readings": []}


def test_a_reading_taken_in_the_same_instant_a_transaction_began_is_not_used() -> None:
    v = updatekey.next_value(
        COLS,
        {"columns": ["updated_at"], "since": ["50"], "readings": []},
        Reading(_at(0), ("100",)),
        Horizon(_at(0)),
    )
    assert v["since"] == ["50"]


def test_unknown_horizon_keeps_the_bound_and_caps_waiting_readings() -> None:
    value = {"columns": ["updated_at"], "since": ["7"], "readings": []}
    for i in range(updatekey.MAX_READINGS + 5):
        value = updatekey.next_value(COLS, value, Reading(_at(i), (str(i),)), Horizon(None, prepared=1))
    assert value["since"] == ["7"]
    assert len(value["readings"]) == updatekey.MAX_READINGS
    assert value["readings"][-1]["max"] == [str(updatekey.MAX_READINGS + 4)]


def test_a_different_update_key_starts_over() -> None:
    old = {"columns": ["changed_at"], "since": ["100"], "readings": [Reading(_at(0), ("1",)).to_json()]}
    assert updatekey.bound(old, COLS) is None  # this pass reads every row
    value = updatekey.next_value(COLS, old, Reading(_at(1), ("5",)), Horizon(_at(-1)))
    assert value["since"] is None and len(value["readings"]) == 1


def test_horizon_is_the_start_of_the_oldest_open_transaction(source_db: Database) -> None:
    with source_db.connect() as probe:
        quiet = updatekey.read_horizon(probe)
        assert quiet.oldest_start is not None and quiet.hidden_sessions == 0 and quiet.prepared == 0
        with psycopg.connect(source_db.conninfo) as other:  # a transaction that has not written yet
            started = other.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
            busy = updatekey.read_horizon(probe)
            assert busy.oldest_start == started
            other.rollback()
        assert updatekey.read_horizon(probe).oldest_start > started  # type: ignore[operator]


def test_sessions_of_other_roles_are_counted_as_hidden(source_db: Database) -> None:
    role = f"viewer_{source_db.name}"
    source_db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'viewer-pw'")
    try:
        with psycopg.connect(source_db.conninfo) as other:
            other.execute("SELECT 1")  # a superuser's transaction, open
            info = source_db.conninfo.replace("user='postgres'", f"user='{role}'").replace(
                "password='postgres-local-only'", "password='viewer-pw'"
            )
            with psycopg.connect(info, autocommit=True) as probe:
                horizon = updatekey.read_horizon(probe)
            assert horizon.hidden_sessions >= 1
            other.rollback()
    finally:
        source_db.execute(f"DROP ROLE {role}")


def test_prepared_transactions_make_the_horizon_unknown(cluster_root: Path) -> None:
    cluster = start_cluster(cluster_root / "prepared", settings={"max_prepared_transactions": "5"})
    try:
        with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id integer)")
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("PREPARE TRANSACTION 'held'")
            horizon = updatekey.read_horizon(conn)
            assert horizon.oldest_start is None and horizon.prepared == 1
            conn.execute("ROLLBACK PREPARED 'held'")
            assert updatekey.read_horizon(conn).oldest_start is not None
    finally:
        cluster.destroy()


@pytest.mark.parametrize(
    "type_sql", ["timestamptz", "timestamp", "date", "bigint", "integer", "numeric(12,2)"]
)
def test_maxima_round_trip_into_the_predicate(source_db: Database, type_sql: str) -> None:
    """A bound read as text and cast back selects the row holding the maximum (>=), for each type."""
    source_db.execute(f"CREATE TABLE t (id integer PRIMARY KEY, k {type_sql})")
    values = "'2025-01-01 10:00:00.123456+02'" if "time" in type_sql or type_sql == "date" else "12345.67"
    source_db.execute(f"INSERT INTO t VALUES (1, {values}), (2, NULL)")
    with source_db.connect() as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        with conn.transaction():
            table = load_catalog(conn).tables[("public", "t")]
        st = SelectedTable(table, table.columns, key=("id",), update_key=("k",))
        reading = updatekey.read_maxima(conn, st)
        assert reading.maxima[0] is not None
        query = sql.SQL("SELECT id FROM t WHERE {}").format(updatekey.predicate(st, list(reading.maxima)))
        assert conn.execute(query).fetchall() == [(1,)]
        everything = sql.SQL("SELECT id FROM t WHERE {}").format(updatekey.predicate(st, [None]))
        assert conn.execute(everything).fetchall() == [(1,)]


FUTURE_TABLE = """
CREATE TABLE {name} (id integer PRIMARY KEY, v text, updated_at {type} NOT NULL DEFAULT now());
CREATE FUNCTION {name}_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
INSERT INTO {name} (id, v) SELECT g, 'v' || g FROM generate_series(1, 50) g;
"""


@pytest.mark.parametrize("column_type", ["timestamptz", "timestamp(3)", "date"])
def test_an_update_key_in_the_future_does_not_freeze_the_watermark(
    column_type: str, delta: DeltaSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """An explicit 2030 once made every later pass read only rows >= 2030: normal changes were missed."""
    delta.source.execute(FUTURE_TABLE.format(name="events", type=column_type))
    delta.source.execute("UPDATE events SET updated_at = '2030-01-01' WHERE id = 1")  # trigger not yet there
    delta.source.execute(
        "CREATE TRIGGER touch BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION events_touch()"
    )
    delta.extractor += "  update-key: [updated_at]\n  replicate-deletes: false\n"
    delta.once()
    delta.source.execute("UPDATE events SET v = 'changed later' WHERE id = 2")
    delta.once()
    delta.assert_same("events")
    delta.source.execute("INSERT INTO events (id, v) VALUES (100, 'new')")
    delta.once()
    delta.assert_same("events")
    assert "update-key updated_at holds values in the future" in caplog.text


def test_a_timestamp_with_precision_is_accepted_as_an_update_key(delta: DeltaSetup) -> None:
    delta.source.execute(FUTURE_TABLE.format(name="precise", type="timestamp(3) with time zone"))
    delta.source.execute(
        "CREATE TRIGGER touch BEFORE UPDATE ON precise FOR EACH ROW EXECUTE FUNCTION precise_touch()"
    )
    delta.extractor += "  update-key: [updated_at]\n"
    delta.once()
    delta.source.execute("UPDATE precise SET v = 'changed' WHERE id = 3")
    delta.once()
    delta.assert_same("precise")
    kind = delta.dest.fetchone("SELECT kind FROM _replicator.delta_watermarks WHERE table_name = 'precise'")
    assert kind == "update-key"
