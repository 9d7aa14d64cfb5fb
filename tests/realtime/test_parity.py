"""Realtime into a destination that has the source's constraints, triggers and sequences."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.realtime.conftest import Env
from tests.support import checksum, spawn_cli

PARENT_CHILD = """
CREATE TABLE parent (id integer PRIMARY KEY, name text);
CREATE TABLE child (id integer PRIMARY KEY, parent_id integer NOT NULL REFERENCES parent (id), note text);
INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 5) g;
INSERT INTO child SELECT g, 1 + g % 5, 'c' FROM generate_series(1, 10) g;
"""


def _valid_foreign_key(env: Env, table: str) -> bool:
    return bool(env.dest.fetchone(
        "SELECT bool_and(convalidated) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        (table,),
    ))  # fmt: skip


def test_foreign_keys_do_not_refuse_rows_applied_out_of_source_order(env: Env) -> None:
    env.source.execute(PARENT_CHILD)
    assert env.run("full", "--once") == 0
    assert _valid_foreign_key(env, "child")
    # child is touched first in the batch, so its new row is applied before its parent's.
    env.source.execute(
        """UPDATE child SET note = 'first' WHERE id = 1;
           BEGIN; INSERT INTO parent VALUES (10, 'new'); INSERT INTO child VALUES (100, 10, 'new'); COMMIT;
           BEGIN; DELETE FROM child WHERE parent_id = 2; DELETE FROM parent WHERE id = 2; COMMIT;"""
    )
    assert env.run("realtime", "--once") == 0
    env.assert_equal("parent", "child")
    assert _valid_foreign_key(env, "child")


def test_destination_triggers_do_not_fire_on_replicated_rows(pg_env: Env) -> None:
    pg_env.source.execute(PARENT_CHILD)
    assert pg_env.run("full", "--once") == 0
    pg_env.dest.execute(
        """CREATE TABLE audit (what text);
           CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO audit VALUES (TG_OP || ' ' || TG_TABLE_NAME); RETURN NULL; END $$;
           CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON parent
               FOR EACH ROW EXECUTE FUNCTION audit();"""
    )
    pg_env.source.execute(
        "INSERT INTO parent VALUES (6, 'x'); UPDATE parent SET name = 'y'; DELETE FROM child"
    )
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("parent", "child")
    assert pg_env.dest.fetchone("SELECT count(*) FROM audit") == 0


def test_values_swapped_between_rows_are_applied_in_source_order(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.source.execute(
        """CREATE TABLE seats (id integer PRIMARY KEY, holder text UNIQUE, n integer);
           CREATE TABLE zones (id integer PRIMARY KEY, span int4range, EXCLUDE USING gist (span WITH &&));
           INSERT INTO seats VALUES (1, 'alice', 0), (2, 'bob', 0), (3, 'carol', 0);
           INSERT INTO zones VALUES (1, '[0,10)'), (2, '[10,20)');"""
    )
    assert env.run("full", "--once") == 0
    # Each source transaction is valid; folded, alice and bob would take each other's value at once.
    env.source.execute(
        """UPDATE seats SET n = n + 1 WHERE id = 3;
           UPDATE seats SET holder = 'tmp' WHERE id = 1;
           UPDATE seats SET holder = 'alice' WHERE id = 2;
           UPDATE seats SET holder = 'bob' WHERE id = 1;
           UPDATE zones SET span = '[100,110)' WHERE id = 1;
           UPDATE zones SET span = '[0,10)' WHERE id = 2;
           UPDATE zones SET span = '[10,20)' WHERE id = 1;"""
    )
    with caplog.at_level("INFO", logger="replicator.destinations.postgres.apply"):
        assert env.run("realtime", "--once") == 0
    env.assert_equal("seats", "zones")
    assert "one by one, in source order" in caplog.text


def test_tables_truncated_together_despite_their_foreign_key(env: Env) -> None:
    env.source.execute(PARENT_CHILD)
    assert env.run("full", "--once") == 0
    env.source.execute("TRUNCATE parent, child; INSERT INTO parent VALUES (1, 'again')")
    assert env.run("realtime", "--once") == 0
    env.assert_equal("parent", "child")
    assert _valid_foreign_key(env, "child")  # the key that would refuse either TRUNCATE alone


def test_case_only_changes_of_a_case_insensitive_key(env: Env) -> None:
    env.source.execute(
        """CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
           CREATE TABLE tags (name text COLLATE ci PRIMARY KEY, n integer);
           INSERT INTO tags VALUES ('alpha', 1), ('Beta', 2), ('gamma', 3);"""
    )
    assert env.run("full", "--once") == 0
    env.source.execute(
        """UPDATE tags SET name = 'ALPHA' WHERE name = 'alpha';
           UPDATE tags SET name = 'beta', n = 20 WHERE name = 'beta';
           BEGIN; DELETE FROM tags WHERE name = 'GAMMA'; INSERT INTO tags VALUES ('Gamma', 30); COMMIT;"""
    )
    assert env.run("realtime", "--once") == 0
    env.assert_equal("tags")
    assert env.dest.fetchall("SELECT name FROM tags ORDER BY n") == [("ALPHA",), ("beta",), ("Gamma",)]


def test_realtime_creates_a_new_table_with_its_indexes_and_keys(pg_env: Env) -> None:
    pg_env.source.execute(
        """CREATE TABLE a (id serial PRIMARY KEY, code text UNIQUE);
           CREATE TABLE b (id integer PRIMARY KEY, a_id integer REFERENCES a (id));
           CREATE INDEX b_a ON b (a_id);"""
    )
    assert pg_env.run("realtime", "--once") == 0
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('a', 'b') ORDER BY 1"
    assert pg_env.dest.fetchall(indexes) == pg_env.source.fetchall(indexes)
    assert _valid_foreign_key(pg_env, "b")


@pytest.fixture
def streaming(pg_env: Env) -> Iterator[Env]:
    pg_env.extractor_text = "realtime:\n  heartbeat:\n    interval-ms: 200\n"
    yield pg_env


def test_sequences_follow_the_source_while_streaming(streaming: Env) -> None:
    env = streaming
    env.source.execute(
        """CREATE SEQUENCE shared_numbers;
           CREATE TABLE orders (id serial PRIMARY KEY, ref bigint DEFAULT nextval('shared_numbers'),
                                line bigint GENERATED BY DEFAULT AS IDENTITY);
           INSERT INTO orders DEFAULT VALUES;"""
    )
    child = spawn_cli(*env.args("full"))
    try:
        values = "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"
        env.source.execute("INSERT INTO orders DEFAULT VALUES; SELECT nextval('shared_numbers')")
        deadline = time.monotonic() + 60
        while env.dest.fetchall(values) != env.source.fetchall(values):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        # Ahead of what the rows carry: shared_numbers was also used outside the table.
        assert env.dest.fetchone("SELECT last_value FROM shared_numbers") == 3
    finally:
        child.terminate()
        child.communicate(timeout=60)
    assert child.returncode == 0


def test_a_destination_user_that_may_not_silence_foreign_keys_is_refused_at_start(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"plain_{pg_env.dest.name}"
    pg_env.dest.execute(
        f"CREATE ROLE {user} LOGIN PASSWORD 'pw'; ALTER DATABASE {pg_env.dest.name} OWNER TO {user}; "
        f"ALTER SCHEMA public OWNER TO {user}"
    )
    try:
        pg_env.source.execute(PARENT_CHILD)
        args = pg_env.args("full", "--once")
        pg_env.dest.write_config(pg_env.tmp / "destination.yaml", username=user, password="pw")
        destination = args.index("--destination") + 1
        args[destination] = str(pg_env.tmp / "destination.yaml")
        from tests.support import run_cli

        assert run_cli(*args) == 1
        err = capsys.readouterr().err
        assert (
            "session_replication_role" in err
            and f"GRANT SET ON PARAMETER session_replication_role TO {user}" in err
        )
        assert pg_env.dest.fetchone("SELECT to_regclass('public.parent')") is None  # nothing written
        assert (
            pg_env.source.fetchone(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
            )
            == 0
        )
        pg_env.dest.execute(f"GRANT SET ON PARAMETER session_replication_role TO {user}")
        assert run_cli(*args) == 0
        pg_env.assert_equal("parent", "child")
    finally:
        with psycopg.connect(pg_env.dest.cluster.conninfo(), autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'")
        pg_env.dest.execute(f"REASSIGN OWNED BY {user} TO postgres; DROP OWNED BY {user}")
        with psycopg.connect(pg_env.dest.cluster.conninfo(), autocommit=True) as conn:
            conn.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {user}")
            conn.execute(f"DROP ROLE {user}")
    assert checksum(pg_env.dest, "public", "child") == checksum(pg_env.source, "public", "child")
