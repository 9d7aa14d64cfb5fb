"""The replication user's SQL, against a real PostgreSQL server: effect, idempotence, repair, removal."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import psycopg
import pytest

from replicator.provision import pgaccess
from replicator.provision.accessspec import AccessSpec
from replicator.provision.adminsession import AccessError
from replicator.source import ddlcapture
from tests.conftest import Database


def as_user(db: Database, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(db.cluster.conninfo(db.name, user=user, password=password), autocommit=True)


def can_select(db: Database, user: str, table: str) -> bool:
    return bool(db.fetchone("SELECT has_table_privilege(%s, %s, 'SELECT')", (user, table)))


def run(db: Database, fn: Any, *args: Any) -> None:
    with db.connect() as conn:
        fn(conn, *args)


def test_ensure_creates_a_login_role_with_every_right(db: Database, user: str, rds_replication: str) -> None:
    spec = AccessSpec(user=user, schemas=("public", "sales"), replication_right="rds_replication")
    run(db, pgaccess.ensure_access, spec, "first-password-123")

    with as_user(db, user, "first-password-123") as conn:
        assert conn.execute("SELECT name FROM public.items").fetchall() == [("a",)]
        assert conn.execute("SELECT total FROM sales.orders").fetchone()[0] == 9.5  # type: ignore[index]
    assert db.fetchone("SELECT pg_has_role(%s, 'rds_replication', 'MEMBER')", (user,)) is True
    assert db.fetchone("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (user,)) is False
    assert db.fetchone("SELECT has_database_privilege(%s, current_database(), 'CONNECT')", (user,)) is True
    # Only a SCRAM verifier reached the server, never the clear password.
    assert db.fetchone("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).startswith(
        "SCRAM-SHA-256$"
    )


def test_tables_created_later_are_readable_too(db: Database, user: str, rds_replication: str) -> None:
    run(db, pgaccess.ensure_access, AccessSpec(user=user, schemas=("sales",)), "pw-123456")
    db.execute("CREATE TABLE sales.refunds (id int PRIMARY KEY)")
    assert can_select(db, user, "sales.refunds")
    assert not can_select(db, user, "public.items")  # public was not asked for


def test_default_privileges_for_named_table_owners(db: Database, user: str, rds_replication: str) -> None:
    owner = f"{user}_app"
    db.execute(f'CREATE ROLE "{owner}"')
    db.execute(f'GRANT CREATE, USAGE ON SCHEMA sales TO "{owner}"')
    run(
        db,
        pgaccess.ensure_access,
        AccessSpec(user=user, schemas=("sales",), table_owners=(owner,)),
        "pw-123456",
    )
    db.execute(f'SET ROLE "{owner}"; CREATE TABLE sales.by_app (id int PRIMARY KEY); RESET ROLE')
    assert can_select(db, user, "sales.by_app")
    run(db, pgaccess.drop_access, AccessSpec(user=user, schemas=("sales",), table_owners=(owner,)))
    db.execute("DROP TABLE sales.by_app")
    db.execute(f'REVOKE ALL ON SCHEMA sales FROM "{owner}"; DROP ROLE "{owner}"')


def test_self_hosted_variant_uses_the_replication_attribute(db: Database, user: str) -> None:
    run(db, pgaccess.ensure_access, AccessSpec(user=user, replication_right="attribute"), "pw-123456")
    assert db.fetchone("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (user,)) is True
    # The attribute is what lets it open a replication connection.
    info = db.cluster.conninfo(db.name, user=user, password="pw-123456", replication="database")
    with psycopg.connect(info, autocommit=True) as conn:
        assert conn.execute("IDENTIFY_SYSTEM").fetchone() is not None


def test_ensure_is_idempotent_and_repairs_drift(db: Database, user: str, rds_replication: str) -> None:
    spec = AccessSpec(user=user, schemas=("public", "sales"))
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    run(db, pgaccess.ensure_access, spec, "pw-123456")  # again: no error, same state
    db.execute(f'REVOKE SELECT ON sales.orders FROM "{user}"')
    db.execute(f'REVOKE rds_replication FROM "{user}"')
    assert not can_select(db, user, "sales.orders")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert can_select(db, user, "sales.orders")
    assert db.fetchone("SELECT pg_has_role(%s, 'rds_replication', 'MEMBER')", (user,)) is True


def test_ensure_adopts_an_existing_role_and_sets_its_password(db: Database, user: str) -> None:
    db.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD 'old-password'")
    run(db, pgaccess.ensure_access, AccessSpec(user=user, replication_right="attribute"), "new-password-1")
    with as_user(db, user, "new-password-1") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)


def test_a_missing_schema_fails_cleanly_and_leaves_nothing_behind(db: Database, user: str) -> None:
    spec = AccessSpec(user=user, schemas=("public", "nope"), replication_right="attribute")
    with pytest.raises(AccessError, match="schema 'nope' does not exist"):
        run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0


def test_update_takes_back_what_is_no_longer_asked_for(db: Database, user: str, rds_replication: str) -> None:
    old = AccessSpec(user=user, schemas=("public", "sales"), replication_right="rds_replication")
    new = AccessSpec(user=user, schemas=("public",), replication_right="attribute")
    run(db, pgaccess.ensure_access, old, "pw-123456")
    run(db, pgaccess.update_access, old, new, "pw-123456")
    assert not can_select(db, user, "sales.orders")
    assert db.fetchone("SELECT has_schema_privilege(%s, 'sales', 'USAGE')", (user,)) is False
    assert can_select(db, user, "public.items")
    assert db.fetchone("SELECT pg_has_role(%s, 'rds_replication', 'MEMBER')", (user,)) is False
    assert db.fetchone("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (user,)) is True
    db.execute("CREATE TABLE sales.later (id int PRIMARY KEY)")
    assert not can_select(db, user, "sales.later")  # default privileges were taken back too


def test_heartbeat_schema_lets_the_user_create_its_table(db: Database, user: str) -> None:
    spec = AccessSpec(
        user=user, replication_right="attribute", heartbeat_table=("replicator_hb", "heartbeat")
    )
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    with as_user(db, user, "pw-123456") as conn:
        conn.execute("CREATE TABLE replicator_hb.heartbeat (id int PRIMARY KEY, at timestamptz)")
        conn.execute("INSERT INTO replicator_hb.heartbeat VALUES (1, now())")
    run(
        db, pgaccess.ensure_access, spec, "pw-123456"
    )  # again, with the table now there and owned by the user
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT to_regclass('replicator_hb.heartbeat')") is None
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0


def test_heartbeat_table_made_by_an_admin_gets_granted(db: Database, user: str) -> None:
    db.execute("CREATE SCHEMA hb; CREATE TABLE hb.beat (id int PRIMARY KEY)")
    run(
        db,
        pgaccess.ensure_access,
        AccessSpec(user=user, replication_right="attribute", heartbeat_table=("hb", "beat")),
        "pw-123456",
    )
    with as_user(db, user, "pw-123456") as conn:
        conn.execute("INSERT INTO hb.beat VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 1")
    run(
        db,
        pgaccess.drop_access,
        AccessSpec(user=user, replication_right="attribute", heartbeat_table=("hb", "beat")),
    )
    assert db.fetchone("SELECT to_regclass('hb.beat')") is not None  # not ours to drop


def test_drop_removes_everything_and_is_idempotent(db: Database, user: str, rds_replication: str) -> None:
    spec = AccessSpec(
        user=user, schemas=("public", "sales"), publication="pub_d", publication_tables=(("public", "items"),)
    )
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0
    assert db.fetchone("SELECT count(*) FROM pg_publication WHERE pubname = 'pub_d'") == 0
    assert db.fetchone("SELECT count(*) FROM pg_default_acl") == 0
    run(db, pgaccess.drop_access, spec)  # already gone: nothing to do, no error


# -- sequences (the destination's sequence values come from here) --------------------------------------


def sequence_values(db: Database, user: str) -> dict[str, int | None]:
    with as_user(db, user, "pw-123456") as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences"
            " WHERE schemaname IN ('public', 'sales') ORDER BY 1"
        ).fetchall()
    return {name: value for name, value in rows}


def test_sequence_values_are_readable(db: Database, user: str) -> None:
    # pg_sequences.last_value reads NULL for a role without SELECT or USAGE on the sequence.
    db.execute("CREATE TABLE sales.invoices (id bigserial PRIMARY KEY, note text)")
    db.execute("INSERT INTO sales.invoices (note) SELECT 'n' FROM generate_series(1, 3)")
    db.execute("CREATE SEQUENCE public.ticket_no START 500; SELECT nextval('public.ticket_no')")
    spec = AccessSpec(user=user, schemas=("public", "sales"), replication_right="attribute")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert sequence_values(db, user) == {"public.ticket_no": 500, "sales.invoices_id_seq": 3}
    # Created later, by the owner the default privileges were set for: readable too.
    db.execute("CREATE SEQUENCE sales.later START 7; SELECT nextval('sales.later')")
    assert sequence_values(db, user)["sales.later"] == 7
    with as_user(db, user, "pw-123456") as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT nextval('public.ticket_no')")  # reading, not drawing numbers
    # Taken back with the schema.
    narrower = AccessSpec(user=user, schemas=("public",), replication_right="attribute")
    run(db, pgaccess.update_access, spec, narrower, "pw-123456")
    assert sequence_values(db, user) == {
        "public.ticket_no": 500, "sales.invoices_id_seq": None, "sales.later": None
    }
    db.execute("CREATE SEQUENCE sales.even_later; SELECT nextval('sales.even_later')")
    assert sequence_values(db, user)["sales.even_later"] is None


def test_sequences_of_named_owners(db: Database, user: str) -> None:
    owner = f"{user}_app"
    db.execute(f'CREATE ROLE "{owner}"; GRANT CREATE, USAGE ON SCHEMA sales TO "{owner}"')
    spec = AccessSpec(user=user, schemas=("sales",), table_owners=(owner,), replication_right="attribute")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    db.execute(f'SET ROLE "{owner}"; CREATE SEQUENCE sales.by_app; RESET ROLE')
    db.execute("SELECT nextval('sales.by_app')")
    assert sequence_values(db, user)["sales.by_app"] == 1
    run(db, pgaccess.drop_access, spec)
    db.execute(f'DROP SEQUENCE sales.by_app; REVOKE ALL ON SCHEMA sales FROM "{owner}"; DROP ROLE "{owner}"')


# -- removing a user that owns things or holds grants elsewhere ---------------------------------------


def test_drop_hands_over_what_the_user_owns_and_drops_its_grants(db: Database, user: str) -> None:
    spec = AccessSpec(user=user, schemas=("public",), replication_right="attribute")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    # Things the program did not grant: a schema it may create in, a table it made there, a grant on a table
    # outside its schemas, and rights in another database of the same server.
    db.execute(f'CREATE SCHEMA scratch; GRANT USAGE, CREATE ON SCHEMA scratch TO "{user}"')
    with as_user(db, user, "pw-123456") as conn:
        conn.execute("CREATE TABLE scratch.notes (id int PRIMARY KEY); INSERT INTO scratch.notes VALUES (1)")
    db.execute(f'GRANT SELECT ON sales.orders TO "{user}"')
    other = f"{db.name}_other"
    db.cluster.create_database(other)
    with psycopg.connect(db.cluster.conninfo(other), autocommit=True) as conn:
        conn.execute(f'CREATE TABLE t (id int); GRANT SELECT ON t TO "{user}"')
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{user}"')

    def connect_to(name: str) -> psycopg.Connection[Any]:
        return psycopg.connect(db.cluster.conninfo(name), autocommit=True)

    run(db, pgaccess.drop_access, spec, connect_to)
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0
    # Its table is kept, now the admin's: the data outlives the role.
    owner = "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass"
    assert db.fetchone(owner, ("scratch.notes",)) == db.fetchone("SELECT current_user")
    assert db.fetchone("SELECT count(*) FROM scratch.notes") == 1


def test_drop_without_a_way_into_the_other_database_says_what_to_run(db: Database, user: str) -> None:
    spec = AccessSpec(user=user, schemas=("public",), replication_right="attribute")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    other = f"{db.name}_o2"
    db.cluster.create_database(other)
    with psycopg.connect(db.cluster.conninfo(other), autocommit=True) as conn:
        conn.execute(f'CREATE TABLE t (id int); GRANT SELECT ON t TO "{user}"')
    with pytest.raises(AccessError, match=rf"in database {other}: connect there and run REASSIGN OWNED BY "
                                          rf'"{user}" TO CURRENT_USER; DROP OWNED BY "{user}"'):
        run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 1  # nothing removed
    with psycopg.connect(db.cluster.conninfo(other), autocommit=True) as conn:
        conn.execute(f'REVOKE ALL ON t FROM "{user}"')
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0


def test_drop_as_a_master_user_that_is_not_superuser(db: Database, user: str, rds_replication: str) -> None:
    # The RDS master user is no superuser: it owns the database and has CREATEROLE. REASSIGN OWNED needs
    # the privileges of the role being emptied, which it gets by a membership that dies with the role.
    master = f"{user}_master"
    db.execute(f"CREATE ROLE \"{master}\" LOGIN CREATEROLE PASSWORD 'master-pw'")
    db.execute(f'ALTER DATABASE "{db.name}" OWNER TO "{master}"; ALTER SCHEMA public OWNER TO "{master}"')
    db.execute(f'ALTER TABLE public.items OWNER TO "{master}"')
    db.execute(f'GRANT rds_replication TO "{master}" WITH ADMIN OPTION')
    spec = AccessSpec(user=user, schemas=("public",), replication_right="rds_replication")
    info = db.cluster.conninfo(db.name, user=master, password="master-pw")
    with psycopg.connect(info, autocommit=True) as conn:
        pgaccess.ensure_access(conn, spec, "pw-123456")
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{user}"')
    with as_user(db, user, "pw-123456") as conn:
        conn.execute("CREATE TABLE public.made_by_user (id int)")
    with psycopg.connect(info, autocommit=True) as conn:
        pgaccess.drop_access(conn, spec)
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0
    owner = "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.made_by_user'::regclass"
    assert db.fetchone(owner) == master
    db.execute(f'REASSIGN OWNED BY "{master}" TO CURRENT_USER; DROP OWNED BY "{master}"')
    db.execute(f'DROP ROLE "{master}"')


# -- the DDL capture (schema changes while streaming; issue 13) ------------------------------------------


def capture_state(db: Database) -> ddlcapture.CaptureState:
    with db.connect() as conn:
        return ddlcapture.state(conn)


def test_ddl_capture_is_installed_updated_away_and_dropped(db: Database, user: str) -> None:
    spec = AccessSpec(
        user=user, schemas=("public", "sales"), replication_right="attribute", publication="pub_ddl",
        publication_tables=(("public", "items"),), ddl_capture=True,
    )
    assert not capture_state(db).installed
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    state = capture_state(db)
    assert state.installed and state.problem is None, state
    run(db, pgaccess.ensure_access, spec, "pw-123456")  # idempotent
    # It works: a table created in a schema the publication follows joins it in its CREATE's transaction.
    with db.connect() as conn:
        ddlcapture.follow_schemas(conn, "pub_ddl", ["sales"])
    db.execute("CREATE TABLE sales.fresh (id int PRIMARY KEY)")
    published = db.fetchall(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'pub_ddl' ORDER BY 1"
    )
    assert published == [("fresh",), ("items",)]

    run(db, pgaccess.update_access, spec, replace(spec, ddl_capture=False), "pw-123456")
    assert capture_state(db).version is None  # gone, functions and all
    assert db.fetchone("SELECT count(*) FROM pg_event_trigger") == 0
    run(db, pgaccess.update_access, replace(spec, ddl_capture=False), spec, "pw-123456")
    assert capture_state(db).installed
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_event_trigger") == 0
    assert db.fetchone("SELECT to_regnamespace('_replicator_ddl')") is None


def test_ddl_capture_by_an_admin_that_may_not_install_it_is_refused_before_anything(
    db: Database, user: str
) -> None:
    master = f"{user}_master"
    db.execute(f"CREATE ROLE \"{master}\" LOGIN CREATEROLE PASSWORD 'master-pw'")
    db.execute(f'GRANT ALL ON SCHEMA public, sales TO "{master}"')
    spec = AccessSpec(user=user, schemas=("public",), replication_right="attribute", ddl_capture=True)
    try:
        info = db.cluster.conninfo(db.name, user=master, password="master-pw")
        with psycopg.connect(info, autocommit=True) as c:
            with pytest.raises(AccessError, match="ddl_capture: cannot install the DDL capture: .*superuser"):
                pgaccess.ensure_access(c, spec, "pw-123456")
        assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0
        assert not capture_state(db).installed
    finally:
        db.execute(f'REVOKE ALL ON SCHEMA public, sales FROM "{master}"; DROP ROLE "{master}"')
