"""Schema changes while streaming (issue 13), through both decoders, with the DDL capture installed:
each change reaches the destination in order with the rows around it; columns (name, type) and rows
end equal to the source's."""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from typing import Any

import pytest
from psycopg import sql

from replicator.source import ddlcapture
from tests.conftest import Database
from tests.realtime.conftest import Env
from tests.support import run_cli, spawn_cli


def install_capture(db: Database) -> None:
    with db.connect() as conn:
        ddlcapture.install(conn)


def columns(db: Database, table: str, schema: str = "public") -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in db.fetchall(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND a.attnum > 0
                 AND NOT a.attisdropped AND a.attname <> '__replicator_is_deleted' ORDER BY a.attnum""",
            (schema, table),
        )
    ]


def assert_same(env: Env, *tables: str, schema: str = "public") -> None:
    for t in tables:
        assert columns(env.dest, t, schema) == columns(env.source, t, schema), t
    env.assert_equal(*tables, schema=schema)


@pytest.fixture
def captured(env: Env) -> Env:
    install_capture(env.source)
    return env


def test_type_change_then_a_value_only_the_new_type_holds(
    captured: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty integer, note varchar(10), price numeric(8,2),"
        " doc text); INSERT INTO items SELECT g, g, 'n' || g, g * 1.5, '{\"g\": ' || g || '}'"
        " FROM generate_series(1, 200) g"
    )
    assert env.run("full", "--once") == 0
    env.source.execute(
        """ALTER TABLE items ALTER COLUMN qty TYPE bigint;
           UPDATE items SET qty = 5000000101 WHERE id = 1;
           ALTER TABLE items ALTER COLUMN note TYPE varchar(40), ALTER COLUMN price TYPE numeric(14,4);
           UPDATE items SET note = repeat('x', 40), price = 1234567890.1234 WHERE id = 2;
           ALTER TABLE items ALTER COLUMN doc TYPE jsonb USING doc::jsonb;
           UPDATE items SET doc = doc || '{"new": true}' WHERE id = 3;"""
    )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "items")
    assert env.dest.fetchone("SELECT qty FROM items WHERE id = 1") == 5000000101
    # status lists them, each with its position in the source's WAL
    lsns = [str(r[0]) for r in env.dest.fetchall("SELECT DISTINCT lsn FROM _replicator.schema_changes")]
    assert len(lsns) == 3
    capsys.readouterr()
    assert run_cli("status", "--destination", env.dest_config()) == 0
    out = capsys.readouterr().out
    assert "schema changes applied:" in out and all(f"at {lsn}" in out for lsn in lsns), out


def run_each(db: Database, *statements: str) -> None:
    """One statement per query: what the DDL capture sees as the command text (USING or not)."""
    with db.connect() as conn:
        for statement in statements:
            conn.execute(statement)


def test_columns_dropped_renamed_added_with_defaults_and_the_rows_around_them(captured: Env) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b text, c text NOT NULL, d int);"
        "INSERT INTO t SELECT g, g, 'b' || g, 'c' || g, g FROM generate_series(1, 100) g"
    )
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "INSERT INTO t VALUES (101, 101, 'b', 'c', 1)",
        "ALTER TABLE t DROP COLUMN b",
        "INSERT INTO t VALUES (102, 102, 'c', 2)",
        "ALTER TABLE t RENAME COLUMN c TO c2",
        "UPDATE t SET c2 = 'renamed' WHERE id <= 10",
        "ALTER TABLE t ADD COLUMN e text DEFAULT 'd' NOT NULL",  # rows already there read 'd'
        "ALTER TABLE t ADD COLUMN f timestamptz DEFAULT now()",  # once, at the source's ALTER time
        "ALTER TABLE t ADD COLUMN g float8 DEFAULT random()",  # every row its own: copied
        "INSERT INTO t (id, a, c2, d) VALUES (103, 103, 'after', 3)",
        "ALTER TABLE t ALTER COLUMN d TYPE bigint",
        "UPDATE t SET d = 5000000101 WHERE id = 103",
        "ALTER TABLE t ALTER COLUMN a TYPE text USING 'a=' || a",  # rewritten by an expression: copied
        "ALTER TABLE t ADD COLUMN b text",  # a new column with a dropped one's name
        "UPDATE t SET b = 'new b' WHERE id = 1",
    )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "t")
    assert env.dest.fetchone("SELECT count(*) FROM t WHERE e = 'd'") == 103


def indexes(db: Database, table: str, schema: str = "public") -> list[str]:
    return [
        r[0]
        for r in db.fetchall(
            """SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s ORDER BY indexname""",
            (schema, table),
        )
    ]


def constraints(db: Database, table: str, schema: str = "public") -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in db.fetchall(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND contype <> 'f' ORDER BY 1""",
            (schema, table),
        )
    ]


def test_renamed_and_moved_tables_with_their_indexes_and_constraints(captured: Env) -> None:
    env = captured
    env.source.execute(
        "CREATE SCHEMA sales; CREATE SCHEMA archive; CREATE TABLE archive.old (id int PRIMARY KEY);"
        "CREATE TABLE sales.orders (id int PRIMARY KEY, amount numeric(10,2), who text);"
        "INSERT INTO sales.orders SELECT g, g, 'w' || g FROM generate_series(1, 50) g"
    )
    env.filter_text = "allow:\n- schema: sales\n- schema: archive\n"
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "CREATE INDEX orders_who ON sales.orders (who)",
        "ALTER TABLE sales.orders ADD CONSTRAINT positive CHECK (amount > 0)",
        "ALTER TABLE sales.orders ADD CONSTRAINT one_who UNIQUE (who)",
        "INSERT INTO sales.orders VALUES (51, 51, 'w51')",
        "ALTER TABLE sales.orders RENAME TO orders_2024",
        "UPDATE sales.orders_2024 SET amount = amount + 1 WHERE id <= 5",
        "ALTER INDEX sales.orders_who RENAME TO orders_by_who",
        "ALTER TABLE sales.orders_2024 SET SCHEMA archive",
        "INSERT INTO archive.orders_2024 VALUES (52, 52, 'w52')",
        "DROP INDEX archive.orders_by_who",
        "CREATE INDEX orders_amount ON archive.orders_2024 (amount) WHERE amount > 10",
        "ALTER TABLE archive.orders_2024 DROP CONSTRAINT positive",
        "DELETE FROM archive.orders_2024 WHERE id = 7",
    )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "orders_2024", schema="archive")
    assert env.dest.fetchone("SELECT to_regclass('sales.orders')") is None
    assert indexes(env.dest, "orders_2024", "archive") == indexes(env.source, "orders_2024", "archive")
    assert constraints(env.dest, "orders_2024", "archive") == constraints(
        env.source, "orders_2024", "archive"
    )


def test_created_tables_stream_from_their_first_insert(captured: Env) -> None:
    env = captured
    env.source.execute("CREATE SCHEMA app; CREATE TABLE app.seed (id int PRIMARY KEY)")
    env.filter_text = "allow:\n  schema: app\n"
    assert env.run("full", "--once") == 0
    with env.source.connect() as conn:
        # Created and written within the same second, in the same transaction and the next ones.
        with conn.transaction():
            conn.execute(
                "CREATE TABLE app.events (id bigint PRIMARY KEY, what text, at timestamptz DEFAULT now())"
            )
            conn.execute(
                "INSERT INTO app.events (id, what) SELECT g, 'e' || g FROM generate_series(1, 100) g"
            )
        conn.execute("INSERT INTO app.events (id, what) VALUES (101, 'next')")
        conn.execute("UPDATE app.events SET what = 'changed' WHERE id <= 10")
        conn.execute("DELETE FROM app.events WHERE id = 50")
        # Rows that come with the CREATE (not decoded) are copied.
        conn.execute(
            "CREATE TABLE app.copied AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g"
        )
        conn.execute("ALTER TABLE app.copied ADD PRIMARY KEY (id)")
        conn.execute("UPDATE app.copied SET v = 'after' WHERE id <= 3")
        # Not in the filter: not followed.
        conn.execute(
            "CREATE TABLE public.elsewhere (id int PRIMARY KEY); INSERT INTO public.elsewhere VALUES (1)"
        )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "events", "copied", schema="app")
    assert env.dest.fetchone("SELECT to_regclass('public.elsewhere')") is None
    if env.plugin == "pgoutput":  # the DDL capture put them in the publication, in the CREATE's transaction
        published = env.source.fetchall(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1", (f"{env.slot}_pub",)
        )
        assert published == [("copied",), ("events",), ("replicate_io_cdc_heartbeat",), ("seed",)]


def test_dropped_tables_and_columns_follow_the_policy(captured: Env) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE keep_me (id int PRIMARY KEY, v text, gone text);"
        "CREATE TABLE drop_me (id int PRIMARY KEY);"
        "INSERT INTO keep_me SELECT g, 'v', 'x' FROM generate_series(1, 20) g;"
        "INSERT INTO drop_me SELECT g FROM generate_series(1, 20) g"
    )
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "ALTER TABLE keep_me DROP COLUMN gone",
        "INSERT INTO keep_me VALUES (21, 'new')",
        "DROP TABLE drop_me",
    )
    env.dest_config = lambda **kw: env.dest.write_config(  # type: ignore[method-assign]
        env.tmp / "destination.yaml",
        **{"schema-changes": {"dropped-columns": "keep", "dropped-tables": "drop"}},
    )
    assert env.run("realtime", "--once") == 0
    assert env.dest.fetchone("SELECT to_regclass('public.drop_me')") is None
    rows = env.dest.fetchall("SELECT id, v, gone FROM keep_me WHERE id IN (1, 21) ORDER BY id")
    assert rows == [(1, "v", "x"), (21, "new", None)]  # kept, NULL from then on


def test_a_dropped_table_is_kept_by_default(captured: Env) -> None:
    env = captured
    env.source.execute("CREATE TABLE old (id int PRIMARY KEY); INSERT INTO old SELECT generate_series(1, 5)")
    assert env.run("full", "--once") == 0
    run_each(env.source, "DELETE FROM old WHERE id = 1", "DROP TABLE old")
    assert env.run("realtime", "--once") == 0
    assert env.dest.fetchall("SELECT id FROM old ORDER BY id") == [(2,), (3,), (4,), (5,)]


def test_partitions_attached_with_rows_and_detached(captured: Env) -> None:
    env = captured
    env.source.execute(
        """CREATE TABLE events (id bigint, at date NOT NULL, v text, PRIMARY KEY (id, at))
             PARTITION BY RANGE (at);
           CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           INSERT INTO events SELECT g, '2024-01-01'::date + g % 300, 'v' FROM generate_series(1, 200) g;"""
    )
    env.filter_text = "allow:\n  schema: public\n  allow:\n    events:\n"
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "CREATE TABLE events_2025 (id bigint, at date NOT NULL, v text, PRIMARY KEY (id, at))",
        "INSERT INTO events_2025 SELECT g, '2025-01-01'::date + g % 300, 'old'"
        " FROM generate_series(1, 500) g",
        "ALTER TABLE events ATTACH PARTITION events_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        "UPDATE events SET v = 'updated' WHERE id = 7 AND at >= '2025-01-01'",
        "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "INSERT INTO events VALUES (1, '2026-02-02', 'in 2026')",
        "ALTER TABLE events DETACH PARTITION events_2024",
        "INSERT INTO events VALUES (2, '2025-05-05', 'after detach') ON CONFLICT DO NOTHING",
    )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "events")
    assert env.dest.fetchone("SELECT count(*) FROM events WHERE at < '2025-01-01'") == 0


class Workload:
    """A writer that keeps up with the schema: inserts, updates and deletes against the table and
    columns as the DDL thread has left them (the lock keeps DDL and writes apart, not ordered)."""

    def __init__(self, db: Database, seed: int):
        self.db = db
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.table = "t"
        self.note = "note"
        self.qty_max = 2**31 - 1
        self.extra = False
        self.new_table = False
        self.next_id = 1000
        self.stop = threading.Event()

    def run(self) -> None:
        with self.db.connect() as conn:
            while not self.stop.is_set():
                with self.lock, conn.transaction():
                    for _ in range(self.rng.randint(1, 5)):
                        self._one(conn)
                time.sleep(0.005)

    def _one(self, conn: Any) -> None:
        r = self.rng.random()
        table = sql.Identifier(self.table)
        target = self.rng.randint(1, self.next_id)
        if r < 0.4:
            self.next_id += 1
            cols = ["id", "qty", self.note] + (["extra"] if self.extra else [])
            values = [self.next_id, self.rng.randint(0, self.qty_max), f"n{self.next_id}"]
            values += [f"e{self.next_id}"] if self.extra else []
            conn.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                    table,
                    sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)),
                ),
                values,
            )
        elif r < 0.8:
            conn.execute(
                sql.SQL("UPDATE {} SET qty = %s, {} = {} || 'u' WHERE id = %s").format(
                    table, sql.Identifier(self.note), sql.Identifier(self.note)
                ),
                (self.rng.randint(0, self.qty_max), target),
            )
        elif r < 0.9:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (target,))
        if self.new_table:
            conn.execute("INSERT INTO n (v) VALUES (%s)", (f"v{target}",))

    def ddl(self, statement: str, **after: Any) -> None:
        with self.lock, self.db.connect() as conn:
            conn.execute(statement)
            for k, v in after.items():
                setattr(self, k, v)


DDL_SEQUENCE: list[tuple[str, dict[str, Any]]] = [
    ("ALTER TABLE t ALTER COLUMN qty TYPE bigint", {"qty_max": 10**12}),
    ("ALTER TABLE t ADD COLUMN extra text DEFAULT 'x'", {"extra": True}),
    ("ALTER TABLE t RENAME COLUMN note TO memo", {"note": "memo"}),
    ("ALTER TABLE t DROP COLUMN old", {}),
    ("ALTER TABLE t ADD COLUMN r float8 DEFAULT random()", {}),
    ("CREATE INDEX t_qty ON t (qty)", {}),
    ("ALTER TABLE t ADD CONSTRAINT qty_positive CHECK (qty >= 0)", {}),
    ("ALTER TABLE t RENAME TO t2", {"table": "t2"}),
    ("CREATE TABLE n (id bigserial PRIMARY KEY, v text)", {"new_table": True}),
    ("ALTER TABLE t2 ALTER COLUMN memo TYPE varchar(400)", {}),
    ("ALTER TABLE t2 ALTER COLUMN memo TYPE text USING upper(memo)", {}),
    ("DROP TABLE side", {}),
    ("DROP INDEX t_qty", {}),
]


def _wait_streaming(env: Env, child: Any, timeout: float = 60.0) -> None:
    """Until the child has committed a checkpoint past the source's position when it started."""
    start = env.source.fetchone("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while True:
        at = env.dest.fetchone("SELECT max(lsn) FROM _replicator.slot_checkpoints")
        if at is not None and at > start:
            return
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the realtime run did not start streaming"
        time.sleep(0.1)


def test_sigkill_during_a_sequence_of_schema_changes_under_a_concurrent_writer(captured: Env) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE t (id bigint PRIMARY KEY, qty integer, note text, old text DEFAULT 'old');"
        "INSERT INTO t (id, qty, note) SELECT g, g, 'n' || g FROM generate_series(1, 1000) g;"
        "CREATE TABLE side (id int PRIMARY KEY); INSERT INTO side SELECT generate_series(1, 10)"
    )
    env.extractor_text = (
        "realtime:\n  fetch-size-rows: 50\n  fetch-duration-per-extractor-slot-s: 0.2\n"
        "  heartbeat:\n    interval-ms: 200\n"
    )
    assert env.run("full", "--once") == 0
    work = Workload(env.source, seed=20261130)
    writer = threading.Thread(target=work.run)
    writer.start()
    rng = random.Random(7)
    kills = 0
    try:
        steps = list(DDL_SEQUENCE)
        while steps:
            child = spawn_cli(*env.args("realtime"))
            _wait_streaming(env, child)
            for _ in range(rng.randint(1, 4)):  # then a few changes, and a kill somewhere among them
                if steps:
                    statement, after = steps.pop(0)
                    work.ddl(statement, **after)
                    time.sleep(rng.uniform(0.05, 0.6))
            time.sleep(rng.uniform(0.0, 0.8))
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            kills += 1
    finally:
        work.stop.set()
        writer.join()
    applied_before = env.dest.fetchone("SELECT count(*) FROM _replicator.schema_changes")
    assert kills >= 3 and applied_before > 0, (kills, applied_before)  # the kills fell among the changes
    assert env.run("realtime", "--once") == 0
    assert_same(env, "t2", "n")
    assert env.dest.fetchone("SELECT to_regclass('public.t')") is None
    assert env.dest.fetchone("SELECT count(*) FROM side") == 10  # dropped at the source, kept here
    assert indexes(env.dest, "t2") == indexes(env.source, "t2")
    assert constraints(env.dest, "t2") == constraints(env.source, "t2")
    applied = env.dest.fetchall("SELECT count(DISTINCT lsn) FROM _replicator.schema_changes")[0][0]
    assert applied >= len(DDL_SEQUENCE)  # each once (the log's key is the change's position)


def test_without_the_capture_widened_types_still_follow(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """No DDL capture: the stream's relation descriptions show the new types (fallback)."""
    env.source.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty integer, note varchar(10), price numeric(8,2));"
        "INSERT INTO items SELECT g, g, 'n', 1.5 FROM generate_series(1, 50) g"
    )
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "ALTER TABLE items ALTER COLUMN qty TYPE bigint",
        "UPDATE items SET qty = 5000000101 WHERE id = 1",  # today: out of range for type integer
        "ALTER TABLE items ALTER COLUMN note TYPE varchar(40), ALTER COLUMN price TYPE numeric(14,4)",
        "UPDATE items SET note = repeat('x', 40), price = 1234567890.1234 WHERE id = 2",
    )
    assert env.run("realtime", "--once") == 0
    assert_same(env, "items")
    # said at start: what is followed without the capture, and what is not
    assert "DDL capture not installed" in caplog.text and "NOT followed: renames" in caplog.text


def checkpoint(env: Env) -> Any:
    return env.dest.fetchone("SELECT lsn FROM _replicator.slot_checkpoints WHERE slot_name = %s", (env.slot,))


def test_a_change_the_capture_could_not_describe_stops_the_stream_until_made_good(
    captured: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b text);"
        "INSERT INTO t SELECT g, g, 'b' FROM generate_series(1, 20) g"
    )
    assert env.run("full", "--once") == 0
    env.source.execute("DROP FUNCTION _replicator_ddl.shape(oid) CASCADE")  # the capture breaks
    run_each(
        env.source,
        "INSERT INTO t VALUES (21, 21, 'before')",
        "ALTER TABLE t RENAME COLUMN b TO c",  # goes on at the source; the message says it failed
        "INSERT INTO t (id, a, c) VALUES (22, 22, 'after')",
    )
    before = checkpoint(env)
    capsys.readouterr()
    for _ in range(2):  # stopped, and stopped again at the same place: nothing after it is applied
        assert env.run("realtime", "--once") == 1
        err = capsys.readouterr().err
        assert "stopped before the ALTER TABLE at " in err and "accept-unfollowed" in err, err
        assert "Everything before it is applied, nothing after it" in err, err
        assert env.dest.fetchall("SELECT id, b FROM t WHERE id > 20") == [(21, "before")]
        assert columns(env.dest, "t") == [("id", "integer"), ("a", "integer"), ("b", "text")]
        assert checkpoint(env) < env.source.fetchone("SELECT pg_current_wal_lsn()")
    where = re.search(r"accept-unfollowed: \['([0-9A-F]+/[0-9A-F]+)'\]", err)
    assert where is not None, err
    assert checkpoint(env) >= before

    # The operator repairs the capture, makes the destination match by hand, and accepts that change.
    install_capture(env.source)
    env.dest.execute("ALTER TABLE t RENAME COLUMN b TO c")
    env.dest_config = lambda **kw: env.dest.write_config(  # type: ignore[method-assign]
        env.tmp / "destination.yaml", **{"schema-changes": {"accept-unfollowed": [where.group(1)]}}
    )
    env.source.execute("UPDATE t SET c = 'later' WHERE id = 1")
    assert env.run("realtime", "--once") == 0
    assert_same(env, "t")


def test_a_change_the_destination_refuses_stops_the_stream_until_fixed_there(
    captured: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env = captured
    env.source.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE old (id int PRIMARY KEY);"
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20) g; INSERT INTO old VALUES (1)"
    )
    assert env.run("full", "--once") == 0
    run_each(
        env.source,
        "DROP TABLE old",  # kept at the destination (the default)
        "ALTER TABLE t RENAME TO old",  # the destination has an "old" already
        "INSERT INTO old VALUES (21, 'after the rename')",
    )
    capsys.readouterr()
    assert env.run("realtime", "--once") == 1
    err = capsys.readouterr().err
    assert "public.t was renamed to public.old at the source, but the destination already has" in err, err
    assert env.dest.fetchone("SELECT count(*) FROM t") == 20  # untouched
    assert env.dest.fetchall("SELECT id FROM old") == [(1,)]
    env.dest.execute("DROP TABLE old")  # what the message says to do
    assert env.run("realtime", "--once") == 0
    assert_same(env, "old")
    assert env.dest.fetchone("SELECT to_regclass('public.t')") is None


def test_killed_after_the_change_is_applied_but_before_its_checkpoint_commits(captured: Env) -> None:
    """The destination runs the change's DDL in the open transaction, then blocks (a lock held on
    the change log): SIGKILL there leaves neither the DDL nor the checkpoint; the next run applies it
    once."""
    env = captured
    env.source.execute(
        "CREATE TABLE t (id int PRIMARY KEY, qty integer, note text);"
        "INSERT INTO t SELECT g, g, 'n' FROM generate_series(1, 50) g"
    )
    assert env.run("full", "--once") == 0
    child = spawn_cli(*env.args("realtime"))
    try:
        _wait_streaming(env, child)
        with env.dest.connect() as blocker:
            blocker.autocommit = False
            blocker.execute("LOCK TABLE _replicator.schema_changes IN SHARE MODE")  # INSERTs wait
            before = checkpoint(env)
            run_each(
                env.source,
                "UPDATE t SET note = 'before' WHERE id = 1",
                "ALTER TABLE t RENAME COLUMN note TO memo",
                "ALTER TABLE t ALTER COLUMN qty TYPE bigint",
                "UPDATE t SET qty = 5000000101, memo = 'after' WHERE id = 2",
            )
            deadline = time.monotonic() + 60
            while not env.dest.fetchone(  # the rename ran in the child's transaction, which now waits
                """SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE l.relation = 'public.t'::regclass AND l.mode = 'AccessExclusiveLock' AND l.granted
                     AND a.wait_event_type = 'Lock'"""
            ):
                assert child.poll() is None, child.communicate()[1]
                assert time.monotonic() < deadline, "the change was not applied in the open transaction"
                time.sleep(0.05)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            blocker.execute(  # its session dies with the transaction it had open
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            blocker.rollback()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert columns(env.dest, "t") == [("id", "integer"), ("qty", "integer"), ("note", "text")]
    assert env.dest.fetchone("SELECT count(*) FROM _replicator.schema_changes") == 0
    assert checkpoint(env) < env.source.fetchone("SELECT pg_current_wal_lsn()")
    assert checkpoint(env) >= before
    assert env.run("realtime", "--once") == 0
    assert_same(env, "t")
    assert env.dest.fetchone("SELECT count(DISTINCT lsn) FROM _replicator.schema_changes") == 2  # once each



def test_a_keyless_table_created_at_the_source_is_named_and_never_breaks_the_source(captured: Env) -> None:
    env = captured
    env.source.execute("CREATE SCHEMA app; CREATE TABLE app.seed (id int PRIMARY KEY)")
    env.filter_text = "allow:\n  schema: app\n"
    assert env.run("full", "--once") == 0
    child = spawn_cli(*env.args("realtime"))
    try:
        _wait_streaming(env, child)
        run_each(
            env.source,
            "CREATE TABLE app.loose (v text)",
            "INSERT INTO app.loose VALUES ('a'), ('b')",
            "UPDATE app.loose SET v = 'c' WHERE v = 'b'",  # the source still takes it
        )
        _wait_streaming(env, child)  # past all of it
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=30)
    if env.plugin == "pgoutput":  # published, its UPDATEs would fail at the source: not added
        assert "new table app.loose is NOT replicated" in err, err
        assert "ALTER PUBLICATION" in err and "no primary key" in err
        assert env.dest.fetchone("SELECT to_regclass('app.loose')") is None
    else:  # wal2json decodes it anyway: its inserts arrive, with the warning
        assert "new table app.loose has no primary key: only its inserts" in err, err
        assert env.dest.fetchone("SELECT count(*) FROM app.loose WHERE v = 'a'") == 1
