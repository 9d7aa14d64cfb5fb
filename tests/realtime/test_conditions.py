"""Filter conditions while streaming (issue 9 item 8): realtime and full keep exactly the rows that
match, through a publication row filter where that is safe and at the destination elsewhere; an
UPDATE that moves a row out of the condition deletes it, one that moves it in brings it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.realtime.conftest import Env

SCHEMA = """
CREATE TABLE orders (id integer PRIMARY KEY, status text, amount integer);
INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'open' ELSE 'closed' END, g
FROM generate_series(1, 60) g;
CREATE TABLE regions (id integer PRIMARY KEY, name text);
INSERT INTO regions SELECT g, 'r' || g FROM generate_series(1, 40) g;
CREATE TABLE docs (id integer PRIMARY KEY, kind text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO docs SELECT g, CASE WHEN g <= 10 THEN 'pub' ELSE 'draft' END, repeat(md5(g::text), 200)
FROM generate_series(1, 20) g;
CREATE TABLE events (at integer, kind text);
ALTER TABLE events REPLICA IDENTITY FULL;
INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN 'x' ELSE 'y' END FROM generate_series(1, 20) g;
"""
CONDITIONS = {
    "orders": "status = 'open'",  # reads a column the replica identity (the key) does not log
    "regions": "id % 2 = 0",  # reads the key only: a publication row filter, where there is one
    "docs": "kind = 'pub'",
    "events": "kind = 'x'",  # no key
}
CHANGES = """
INSERT INTO orders VALUES (100, 'open', 1), (101, 'closed', 1);
UPDATE orders SET status = 'closed' WHERE id IN (3, 6);        -- out of the condition: deleted
UPDATE orders SET status = 'open' WHERE id IN (1, 2);          -- into it: arrives
UPDATE orders SET amount = amount + 1000 WHERE id IN (9, 4);   -- inside, and outside
DELETE FROM orders WHERE id IN (12, 5);
UPDATE orders SET id = 300 WHERE id = 15;                      -- key moves, stays inside
BEGIN; UPDATE orders SET status = 'open' WHERE id = 7;
       UPDATE orders SET status = 'closed' WHERE id = 7; COMMIT;
INSERT INTO regions VALUES (100, 'in'), (101, 'out');
UPDATE regions SET name = 'renamed' WHERE id IN (2, 3);
DELETE FROM regions WHERE id IN (4, 5);
UPDATE docs SET kind = 'pub' WHERE id IN (11, 12);             -- into it, body (TOASTed) unchanged
UPDATE docs SET kind = 'draft' WHERE id = 1;                   -- out of it
UPDATE docs SET body = 'short' WHERE id = 2;
INSERT INTO events VALUES (100, 'x'), (101, 'y');
UPDATE events SET kind = 'x' WHERE at = 1;                     -- into it (no key)
UPDATE events SET kind = 'y' WHERE at = 2;                     -- out of it
DELETE FROM events WHERE at = 4;
"""


def _filter(env: Env) -> Path:
    lines = [f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"]
    for table, condition in CONDITIONS.items():
        escaped = condition.replace("'", "''")
        lines.append(f"    {table}:\n      conditions: '{escaped}'\n")
    path = env.tmp / "filter.yaml"
    path.write_text("".join(lines))
    return path


def _assert_filtered_equal(source: Database, dest: Database) -> None:
    for table, condition in CONDITIONS.items():
        wanted = sorted(map(str, source.fetchall(f"SELECT t.*::text FROM {table} t WHERE {condition}")))
        got = sorted(map(str, dest.fetchall(f"SELECT t.*::text FROM {table} t")))
        assert got == wanted, table


@pytest.mark.parametrize("mode", ["full", "realtime"])
def test_conditions_hold_while_streaming(env: Env, mode: str) -> None:
    env.source.execute(SCHEMA)
    filt = _filter(env)
    assert env.run("full", "--once", "--filter", str(filt)) == 0
    _assert_filtered_equal(env.source, env.dest)
    env.source.execute(CHANGES)
    assert env.run(mode, "--once", "--filter", str(filt)) == 0
    _assert_filtered_equal(env.source, env.dest)
    if env.plugin == "pgoutput":
        filters = dict(env.source.fetchall(
            "SELECT tablename, rowfilter FROM pg_publication_tables WHERE pubname = %s", (f"{env.slot}_pub",)
        ))
        assert filters["regions"] == "((id % 2) = 0)"  # the key only: a publication row filter
        assert filters["orders"] is None and filters["docs"] is None  # evaluated at the destination
    # The source's own statements keep working (a row filter on a column outside the replica
    # identity would make them fail).
    env.source.execute("UPDATE orders SET status = 'open' WHERE id = 10; DELETE FROM orders WHERE id = 11")
    assert env.run("realtime", "--once", "--filter", str(filt)) == 0
    _assert_filtered_equal(env.source, env.dest)


def test_hostile_conditions_are_refused_before_streaming(pg_env: Env) -> None:
    """The conditions text now reaches the publication: it is checked as for the snapshot first."""
    env = pg_env
    env.source.execute("CREATE TABLE victim (id integer PRIMARY KEY); INSERT INTO victim VALUES (1)")
    path = env.tmp / "filter.yaml"
    path.write_text(
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    victim:\n      conditions: 'true) ; DROP TABLE victim; --'\n"
    )
    assert env.run("realtime", "--once", "--filter", str(path)) == 2
    assert env.source.fetchall("SELECT id FROM victim") == [(1,)]
    assert env.source.fetchall("SELECT pubname FROM pg_publication") == []


def test_a_condition_the_destination_cannot_evaluate_is_refused(pg_env: Env) -> None:
    """A function PostgreSQL refuses in a row filter (user-defined) puts the condition at the
    destination, which lacks that function: refused before anything is written, not mid-stream
    (and not after a whole snapshot)."""
    env = pg_env
    env.source.execute(
        "CREATE FUNCTION is_open(s text) RETURNS boolean IMMUTABLE LANGUAGE sql AS $$ SELECT s = 'open' $$;"
        "CREATE TABLE orders (id integer PRIMARY KEY, status text); INSERT INTO orders VALUES (1, 'open')"
    )
    path = env.tmp / "filter.yaml"
    path.write_text(
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    orders:\n      conditions: 'is_open(status)'\n"
    )
    for mode in ("realtime", "full"):
        assert env.run(mode, "--once", "--filter", str(path)) == 2
        # Refused before anything was written: no publication, no slot, no destination table.
        assert env.source.fetchall("SELECT pubname FROM pg_publication") == []
        assert env.source.fetchall(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()"
        ) == []
        assert env.dest.fetchall("SELECT to_regclass('public.orders')") == [(None,)]
    env.dest.execute(
        "CREATE FUNCTION is_open(s text) RETURNS boolean IMMUTABLE LANGUAGE sql AS $$ SELECT s = 'open' $$"
    )
    assert env.run("full", "--once", "--filter", str(path)) == 0
    env.source.execute("INSERT INTO orders VALUES (2, 'open'), (3, 'closed'); UPDATE orders SET status = 'x' "
                       "WHERE id = 1")
    assert env.run("realtime", "--once", "--filter", str(path)) == 0
    assert env.dest.fetchall("SELECT id FROM orders ORDER BY id") == [(2,)]


def test_a_key_update_moving_a_row_into_the_condition_brings_its_toasted_values(env: Env) -> None:
    """With a publication row filter on the key, an UPDATE of the key that moves a row into it
    arrives as an INSERT without the TOASTed values it left unchanged: they are read from the source
    (the row used to be lost)."""
    env.source.execute(
        "CREATE TABLE docs (id integer PRIMARY KEY, body text);"
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;"
        "INSERT INTO docs SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 10) g"
    )
    path = env.tmp / "filter.yaml"
    path.write_text(
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    docs:\n      conditions: 'id % 2 = 0'\n"
    )
    assert env.run("full", "--once", "--filter", str(path)) == 0
    env.source.execute("UPDATE docs SET id = 101 WHERE id = 2; UPDATE docs SET id = 100 WHERE id = 3")
    assert env.run("realtime", "--once", "--filter", str(path)) == 0
    want = env.source.fetchall("SELECT id, md5(body) FROM docs WHERE id % 2 = 0 ORDER BY id")
    assert want[-1][0] == 100  # the row moved in
    assert env.dest.fetchall("SELECT id, md5(body) FROM docs ORDER BY id") == want


def test_a_batch_replayed_in_source_order_still_keeps_only_matching_rows(env: Env) -> None:
    """A unique value passed between rows within a batch makes the batch replay one change at a time
    (``inorder.py``); rows that batch wrote outside the condition must still be removed."""
    env.source.execute(
        "CREATE TABLE seats (id integer PRIMARY KEY, holder text UNIQUE, n integer);"
        "INSERT INTO seats VALUES (1, 'alice', 1), (2, 'bob', 1), (3, 'carol', 1)"
    )
    path = env.tmp / "filter.yaml"
    path.write_text(
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    seats:\n      conditions: 'n > 0'\n"
    )
    assert env.run("full", "--once", "--filter", str(path)) == 0
    env.source.execute(
        """UPDATE seats SET holder = 'tmp' WHERE id = 1;
           UPDATE seats SET holder = 'alice' WHERE id = 2;
           UPDATE seats SET holder = 'bob' WHERE id = 1;
           UPDATE seats SET n = 0 WHERE id = 3;                 -- out of the condition
           INSERT INTO seats VALUES (4, 'dave', 0), (5, 'erin', 2);"""
    )
    assert env.run("realtime", "--once", "--filter", str(path)) == 0
    assert env.dest.fetchall("SELECT id, holder, n FROM seats ORDER BY id") == env.source.fetchall(
        "SELECT id, holder, n FROM seats WHERE n > 0 ORDER BY id"
    )


@pytest.mark.parametrize("mode", ["full", "realtime"])
def test_soft_deletes_never_keep_values_outside_the_condition(env: Env, mode: str) -> None:
    """With ``deletes: soft`` a row that leaves the condition is flagged, as a deleted one is, with
    the values it had while it matched; a row that never matched never reaches the destination,
    not even flagged. A filter that keeps one tenant's rows must not copy the others' as
    'deleted' ones."""
    env.source.execute(
        "CREATE TABLE orders (id integer PRIMARY KEY, status text, amount integer);"
        "INSERT INTO orders SELECT g, CASE WHEN g % 3 = 0 THEN 'open' ELSE 'closed' END, g "
        "FROM generate_series(1, 30) g"
    )
    env.dest_config = lambda **kw: env.dest.write_config(  # type: ignore[method-assign]
        env.tmp / "destination.yaml", deletes="soft"
    )
    env.filter_text = (
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    orders:\n      conditions: \"status = 'open'\"\n"
    )
    assert env.run("full", "--once") == 0
    env.source.execute(
        "INSERT INTO orders VALUES (100, 'closed', 100), (101, 'open', 101);"
        "UPDATE orders SET status = 'closed', amount = -3 WHERE id = 3;"   # leaves the condition
        "DELETE FROM orders WHERE id = 6;"
        "UPDATE orders SET amount = -1 WHERE id = 1;"                      # outside, stays outside
        "BEGIN; UPDATE orders SET status = 'open', amount = -2 WHERE id = 2;"
        "       UPDATE orders SET status = 'closed' WHERE id = 2; COMMIT;"  # in and out in one go
        "UPDATE orders SET status = 'open' WHERE id = 4;"                  # into it
    )
    assert env.run(mode, "--once") == 0
    rows = env.dest.fetchall(
        "SELECT id, status, amount, __replicator_is_deleted FROM orders "
        "WHERE id IN (1, 2, 3, 4, 6, 100, 101) ORDER BY id"
    )
    assert rows == [
        (3, "open", 3, True), (4, "open", 4, False), (6, "open", 6, True), (101, "open", 101, False)
    ]
    assert env.dest.fetchone("SELECT count(*) FROM orders WHERE status IS DISTINCT FROM 'open'") == 0
    live = sorted(env.dest.fetchall("SELECT id FROM orders WHERE NOT __replicator_is_deleted"))
    assert live == sorted(env.source.fetchall("SELECT id FROM orders WHERE status = 'open'"))


def test_a_replayed_batch_still_brings_rows_moved_in_with_unchanged_toast(env: Env) -> None:
    """The in-order replay (a unique value passed between rows) of a batch that also moves a row
    into the condition without touching its TOASTed value: the destination never had the row and
    the source did not send the value, so it must be read from the source, as the set-wise path
    does, not silently skipped."""
    env.source.execute(
        "CREATE TABLE seats (id integer PRIMARY KEY, holder text UNIQUE, n integer, body text);"
        "ALTER TABLE seats ALTER COLUMN body SET STORAGE EXTERNAL;"
        "INSERT INTO seats SELECT g, 'h' || g, CASE WHEN g = 3 THEN 0 ELSE 1 END, repeat(md5(g::text), 300) "
        "FROM generate_series(1, 4) g"
    )
    path = env.tmp / "filter.yaml"
    path.write_text(
        f"allow:\n  catalog: {env.source.name}\n  schema: public\n  allow:\n"
        "    seats:\n      conditions: 'n > 0'\n"
    )
    assert env.run("full", "--once", "--filter", str(path)) == 0
    assert env.dest.fetchone("SELECT count(*) FROM seats WHERE id = 3") == 0
    env.source.execute(
        """UPDATE seats SET holder = 'tmp' WHERE id = 1;
           UPDATE seats SET holder = 'h1' WHERE id = 2;
           UPDATE seats SET holder = 'h2' WHERE id = 1;
           UPDATE seats SET n = 5 WHERE id = 3;                 -- into the condition, body unchanged"""
    )
    assert env.run("realtime", "--once", "--filter", str(path)) == 0
    assert env.dest.fetchall("SELECT id, holder, n, md5(body) FROM seats ORDER BY id") == env.source.fetchall(
        "SELECT id, holder, n, md5(body) FROM seats WHERE n > 0 ORDER BY id"
    )
