"""The DDL capture on a real server: what its messages say, who may do what, and that it never gets
in the way of the user's own commands."""

from __future__ import annotations

import psycopg
import pytest

from replicator.decoding import ddl
from replicator.decoding.changes import Message
from replicator.decoding.ddl import DdlMessage
from replicator.errors import SourceError
from replicator.source import ddlcapture
from tests.conftest import Database
from tests.replication import Replication


@pytest.fixture
def captured(replication: Replication) -> Replication:
    with replication.db.connect() as conn:
        ddlcapture.install(conn)
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text, at timestamp)")
    replication.publish("t")
    return replication


def messages(rep: Replication, slot: str) -> list[DdlMessage]:
    return [ddl.parse(e) for e in rep.events(slot, "wal2json") if isinstance(e, Message) and ddl.is_ddl(e)]


def test_install_is_idempotent_and_state_says_what_is_missing(db_conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
    assert ddlcapture.state(db_conn).installed is False
    assert "not installed" in (ddlcapture.state(db_conn).problem or "")
    ddlcapture.install(db_conn)
    ddlcapture.install(db_conn)  # again: upgrades in place, nothing breaks
    assert ddlcapture.state(db_conn).installed
    db_conn.execute("ALTER EVENT TRIGGER replicator_ddl_end DISABLE")
    problem = ddlcapture.state(db_conn).problem or ""
    assert "disabled" in problem and "ALTER EVENT TRIGGER replicator_ddl_end ENABLE ALWAYS" in problem
    ddlcapture.uninstall(db_conn)
    assert not ddlcapture.state(db_conn).installed


def test_only_a_superuser_installs_it(source_db: Database) -> None:
    source_db.execute("DROP ROLE IF EXISTS plain_user; CREATE ROLE plain_user LOGIN PASSWORD 'pw'")
    try:
        with psycopg.connect(source_db.conninfo, user="plain_user", password="pw", autocommit=True) as conn:
            with pytest.raises(SourceError, match="superuser .*rds_superuser"):
                ddlcapture.install(conn)
    finally:
        source_db.execute("DROP ROLE plain_user")


def test_columns_are_told_by_attnum_with_rewrites_and_casts(captured: Replication) -> None:
    slot = captured.slot("wal2json")
    with captured.db.connect() as conn:
        conn.execute("ALTER TABLE t RENAME COLUMN a TO a2")
        conn.execute("ALTER TABLE t ALTER COLUMN a2 TYPE bigint")  # rewrite, an immutable cast
        conn.execute("ALTER TABLE t ALTER COLUMN at TYPE timestamptz")  # rewrite, depends on TimeZone
        conn.execute("ALTER TABLE t ALTER COLUMN b TYPE varchar(10) USING left(b, 10)")
        conn.execute("INSERT INTO t VALUES (1, 1, 'x', now())")
        conn.execute("ALTER TABLE t ADD COLUMN c text DEFAULT 'd'")

    rename, retype, tz, using, add = messages(captured, slot)

    (e,) = rename.tables
    assert e.before is not None and e.after is not None
    assert [(c.attnum, c.name) for c in e.before.columns][1] == (2, "a")
    assert [(c.attnum, c.name) for c in e.after.columns][1] == (2, "a2")
    assert retype.tables[0].rewrite == ddl.REWRITE_COLUMN and retype.tables[0].casts == {"a2": True}
    assert not retype.using
    assert tz.tables[0].casts == {"at": False}
    assert using.using and using.tables[0].casts == {"b": True}
    (added,) = add.tables
    assert added.filled == {"c": "d"}  # what the row already there reads


def test_new_tables_join_followed_publications_in_their_own_transaction(captured: Replication) -> None:
    with captured.db.connect() as conn:
        ddlcapture.follow_schemas(conn, captured.publication, ["public"])
    slot = captured.slot("wal2json")
    with captured.db.connect() as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE n (id int PRIMARY KEY)")
            member = conn.execute(
                "SELECT count(*) FROM pg_publication_tables WHERE pubname = %s AND tablename = 'n'",
                (captured.publication,),
            ).fetchone()
            assert member == (1,)  # before the CREATE's transaction even commits
        conn.execute("CREATE TABLE keyless (v text)")  # would break its UPDATEs at the source
        conn.execute("CREATE TABLE copied AS SELECT 1 AS id")

    created, keyless, copied = messages(captured, slot)
    assert created.tables[0].created and created.tables[0].rows is False
    assert [(p.event, p.name) for p in created.publications] == [("added", "n")]
    assert keyless.publications[0].event == "refused" and "no primary key" in (
        keyless.publications[0].error or ""
    )
    assert copied.tables[0].rows is True


def test_only_a_publications_owner_chooses_what_it_follows(captured: Replication) -> None:
    db = captured.db
    db.execute("DROP ROLE IF EXISTS stranger; CREATE ROLE stranger LOGIN PASSWORD 'pw'")
    try:
        with psycopg.connect(db.conninfo, user="stranger", password="pw", autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only the owner"):
                ddlcapture.follow_schemas(conn, captured.publication, ["public"])
    finally:
        db.execute("DROP ROLE stranger")


def test_a_table_the_registrant_cannot_read_is_not_published(captured: Replication) -> None:
    db = captured.db
    db.execute(
        "DROP ROLE IF EXISTS repl_owner; CREATE ROLE repl_owner LOGIN PASSWORD 'pw' REPLICATION;"
        "CREATE SCHEMA private; GRANT CREATE, USAGE ON SCHEMA public TO repl_owner;"
        f'GRANT CREATE ON DATABASE "{db.name}" TO repl_owner'
    )
    try:
        with psycopg.connect(db.conninfo, user="repl_owner", password="pw", autocommit=True) as conn:
            conn.execute("CREATE PUBLICATION mine")
            ddlcapture.follow_schemas(conn, "mine", ["private"])
        slot = captured.slot("wal2json")
        db.execute("CREATE TABLE private.secret (id int PRIMARY KEY)")  # repl_owner may not read it
        (msg,) = messages(captured, slot)
        assert msg.publications[0].event == "refused"
        assert "GRANT SELECT ON private.secret TO repl_owner" in (msg.publications[0].error or "")
    finally:
        db.execute("DROP PUBLICATION IF EXISTS mine; DROP OWNED BY repl_owner CASCADE; DROP ROLE repl_owner")


def test_a_failure_inside_the_trigger_never_fails_the_users_command(captured: Replication) -> None:
    slot = captured.slot("wal2json")
    captured.db.execute("DROP FUNCTION _replicator_ddl.shape(oid) CASCADE")  # break it
    captured.db.execute("ALTER TABLE t ADD COLUMN fine int")  # still works
    (msg,) = messages(captured, slot)
    assert msg.error and "shape" in msg.error


@pytest.fixture
def db_conn(source_db: Database) -> psycopg.Connection:  # type: ignore[type-arg]
    with source_db.connect() as conn:
        yield conn
