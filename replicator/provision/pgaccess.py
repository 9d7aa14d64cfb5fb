"""The replication user and its rights, as idempotent SQL (run by the Pulumi dynamic provider).

Every function here may run again on a database where it already ran, or half ran: roles,
grants and publications are created only when missing and granted again harmlessly, so a
``pulumi up`` that was interrupted is repaired by the next one. Each step runs in one
transaction, so a failure leaves nothing half done, and a step that a concurrent session made
fail (a deadlock, "tuple concurrently updated", a connection ended by a failover) is redone
(``adminsession``). What is declared: ``accessspec``; the statements: ``accesssql``; the managed
publications: ``publications``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from replicator.provision import publications
from replicator.provision.accessspec import (
    ALL_TABLES,
    AccessSpec,
    QualifiedName,
    ReplicationRight,
    table_identifier,
)
from replicator.provision.accesssql import (
    default_select,
    grant_connect,
    grant_replication,
    grant_schema_usage,
    grant_select_all,
    grant_select_all_sequences,
    reassign_and_drop_owned,
)
from replicator.provision.adminsession import AccessError, Admin, AdminSession
from replicator.source import ddlcapture


def encrypted_password(conn: psycopg.Connection[Any], user: str, password: str) -> str:
    """A SCRAM verifier computed by libpq, so the clear password never reaches the server or its logs."""
    return conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()


def ensure_access(admin: Admin, spec: AccessSpec, password: str) -> None:
    """Create or repair the user and every right it needs, in one transaction."""
    AdminSession.of(admin).step(
        f"setting up replication user {spec.user}", lambda conn: _ensure(conn, spec, password)
    )


def _refuse_early(conn: psycopg.Connection[Any], spec: AccessSpec) -> None:
    """What would fail halfway, refused before anything is written."""
    if spec.ddl_capture:
        reason = ddlcapture.can_install(conn)
        if reason is not None:
            raise AccessError(f"ddl_capture: cannot install the DDL capture: {reason}")
    if spec.publication and spec.publication_tables == ALL_TABLES:
        publications.refuse_keyless_under_all_tables(conn, spec.publication)


def _ensure(conn: psycopg.Connection[Any], spec: AccessSpec, password: str) -> None:
    _refuse_early(conn, spec)
    _ensure_role(conn, spec.user, password)
    conn.execute(grant_replication(spec.user, spec.replication_right))
    conn.execute(grant_connect(spec.user, _current_database(conn)))
    for schema in spec.schemas:
        _require_schema(conn, schema)
        conn.execute(grant_schema_usage(spec.user, schema))
        conn.execute(grant_select_all(spec.user, schema))
        conn.execute(grant_select_all_sequences(spec.user, schema))
        for owner in spec.table_owners or (None,):
            conn.execute(default_select(spec.user, schema, owner))
            conn.execute(default_select(spec.user, schema, owner, objects="SEQUENCES"))
    if spec.heartbeat_table:
        _ensure_heartbeat_rights(conn, spec.user, spec.heartbeat_table)
    if spec.publication and spec.publication_tables is not None:
        publications.ensure_publication(conn, spec.publication, spec.publication_tables)
    if spec.ddl_capture:
        for statement in ddlcapture.install_statements():
            conn.execute(statement)
        # The trigger adds new tables to the replicator's publication as this admin: it needs the
        # rights of the publication's owner (the replication user, who creates it).
        row = conn.execute("SELECT pg_has_role(%s, 'USAGE')", (spec.user,)).fetchone()
        if not (row and row[0]):
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(spec.user)))


def update_access(admin: Admin, old: AccessSpec, new: AccessSpec, password: str) -> None:
    """Take back what ``old`` granted and ``new`` no longer asks for, then ensure ``new``: one transaction."""
    if old.user != new.user:
        raise AccessError("renaming the replication user is a replacement, not an update")
    AdminSession.of(admin).step(
        f"updating replication user {new.user}", lambda conn: _update(conn, old, new, password)
    )


def _update(conn: psycopg.Connection[Any], old: AccessSpec, new: AccessSpec, password: str) -> None:
    _refuse_early(conn, new)
    for schema in set(old.schemas) - set(new.schemas):
        _revoke_schema(conn, old, schema)
    for schema in set(old.schemas) & set(new.schemas):
        for owner in set(old.table_owners or (None,)) - set(new.table_owners or (None,)):
            conn.execute(default_select(old.user, schema, owner, revoke=True))
            conn.execute(default_select(old.user, schema, owner, revoke=True, objects="SEQUENCES"))
    if old.replication_right != new.replication_right:
        _revoke_replication(conn, old.user, old.replication_right)
    if old.heartbeat_table and old.heartbeat_table != new.heartbeat_table:
        _revoke_heartbeat_rights(conn, old.user, old.heartbeat_table)
    if old.publication and old.publication_tables is not None and (
        old.publication != new.publication or new.publication_tables is None
    ):
        publications.drop_publications(conn, old.publication)
    if old.ddl_capture and not new.ddl_capture:
        _drop_ddl_capture(conn)
    _ensure(conn, new, password)


ConnectTo = Callable[[str], "psycopg.Connection[Any]"]


def drop_access(admin: Admin, spec: AccessSpec, connect_to: ConnectTo | None = None) -> None:
    """Remove the user and everything granted to it; nothing to do if it is already gone.

    Whatever else the role owns or was granted (a table it created, a grant someone added by hand)
    would make ``DROP ROLE`` fail, so its objects are handed to the admin (``REASSIGN OWNED``: data is
    kept) and its remaining privileges dropped (``DROP OWNED``), here and, through ``connect_to``
    (database name -> admin connection), in every other database where it holds something.
    """
    session = AdminSession.of(admin)
    what = f"removing replication user {spec.user}"
    elsewhere = session.step(what, lambda conn: _detach(conn, spec))
    if elsewhere is None:
        return
    # Other databases first, each committed on its own: done inside the transaction below, their DROP OWNED
    # would wait for its locks on the role's shared dependencies (a wait no server detects across sessions).
    if elsewhere:
        _clean_other_databases(spec.user, elsewhere, connect_to)
    session.step(what, lambda conn: _drop_role(conn, spec))


def _detach(conn: psycopg.Connection[Any], spec: AccessSpec) -> list[str] | None:
    """Publications and DDL capture gone, the admin a member of the role; the other databases where the role
    holds something (None: no role)."""
    if spec.publication and spec.publication_tables is not None:
        publications.drop_publications(conn, spec.publication)
    if spec.ddl_capture:
        _drop_ddl_capture(conn)
    if not _role_exists(conn, spec.user):
        return None
    _take_over_membership(conn, spec.user)
    return _databases_holding(conn, spec.user)


def _drop_role(conn: psycopg.Connection[Any], spec: AccessSpec) -> None:
    if not _role_exists(conn, spec.user):
        return
    for schema in spec.schemas:
        _revoke_schema(conn, spec, schema)
    if spec.heartbeat_table:
        # The heartbeat table the replicator created is ours to drop, not to hand over.
        _revoke_heartbeat_rights(conn, spec.user, spec.heartbeat_table, drop_owned_table=True)
    _reassign_and_drop_owned(conn, spec.user)
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(spec.user)))


def _take_over_membership(conn: psycopg.Connection[Any], user: str) -> None:
    # REASSIGN OWNED needs the privileges of the role being emptied. A superuser has them; the RDS master
    # user (CREATEROLE, the role's creator) gets them by a grant that dies with the role.
    row = conn.execute("SELECT pg_has_role(%s, 'USAGE')", (user,)).fetchone()
    if not (row and row[0]):
        conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(user)))


def _reassign_and_drop_owned(conn: psycopg.Connection[Any], user: str) -> None:
    conn.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(user)))
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(user)))


def _databases_holding(conn: psycopg.Connection[Any], user: str) -> list[str]:
    """Other databases with objects owned by, or privileges granted to, the role (pg_shdepend)."""
    rows = conn.execute(
        "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE s.refclassid = 'pg_authid'::regclass"
        " AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s)"
        " AND d.datname <> current_database() ORDER BY 1",
        (user,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _clean_other_databases(user: str, databases: list[str], connect_to: ConnectTo | None) -> None:
    statements = reassign_and_drop_owned(user).as_string(None)
    for name in databases:
        if connect_to is None:
            raise AccessError(
                f"role {user} owns objects or holds privileges in database {name}: connect there and run "
                f"{statements}"
            )
        try:
            with AdminSession(functools.partial(connect_to, name)) as other:
                other.step(f"cleaning database {name}", lambda conn: _reassign_and_drop_owned(conn, user))
        except AccessError as e:
            raise AccessError(
                f"role {user} owns objects or holds privileges in database {name}, and cleaning them failed "
                f"({e}): connect there as an admin and run {statements}"
            ) from None


def _drop_ddl_capture(conn: psycopg.Connection[Any]) -> None:
    for name in ddlcapture.TRIGGERS:
        conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute("DROP SCHEMA IF EXISTS _replicator_ddl CASCADE")


def role_exists(admin: Admin, user: str) -> bool:
    session = AdminSession.of(admin)
    return session.step(f"reading replication user {user}", lambda conn: _role_exists(conn, user))


def _role_exists(conn: psycopg.Connection[Any], user: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is not None


def _current_database(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _ensure_role(conn: psycopg.Connection[Any], user: str, password: str) -> None:
    verifier = sql.Literal(encrypted_password(conn, user, password))
    verb = "ALTER" if _role_exists(conn, user) else "CREATE"
    conn.execute(
        sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(user), verifier)
    )


def _require_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
        raise AccessError(f"schema {schema!r} does not exist in database {_current_database(conn)!r}")


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _table_owner(conn: psycopg.Connection[Any], table: QualifiedName) -> str | None:
    row = conn.execute(
        "SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        table,
    ).fetchone()
    return str(row[0]) if row else None


def _revoke_schema(conn: psycopg.Connection[Any], spec: AccessSpec, schema: str) -> None:
    if not _schema_exists(conn, schema):
        return
    for owner in spec.table_owners or (None,):
        if owner is None or _role_exists(conn, owner):
            conn.execute(default_select(spec.user, schema, owner, revoke=True))
            conn.execute(default_select(spec.user, schema, owner, revoke=True, objects="SEQUENCES"))
    for objects in ("TABLES", "SEQUENCES"):
        conn.execute(
            sql.SQL("REVOKE SELECT ON ALL {} IN SCHEMA {} FROM {}").format(
                sql.SQL(objects), sql.Identifier(schema), sql.Identifier(spec.user)
            )
        )
    conn.execute(
        sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), sql.Identifier(spec.user))
    )


def _revoke_replication(conn: psycopg.Connection[Any], user: str, right: ReplicationRight) -> None:
    if right == "rds_replication":
        if _role_exists(conn, "rds_replication"):
            conn.execute(sql.SQL("REVOKE rds_replication FROM {}").format(sql.Identifier(user)))
    else:
        conn.execute(sql.SQL("ALTER ROLE {} WITH NOREPLICATION").format(sql.Identifier(user)))


def _ensure_heartbeat_rights(conn: psycopg.Connection[Any], user: str, table: QualifiedName) -> None:
    # The replicator creates (and so owns) its heartbeat table; here it gets a schema to do that
    # in, or the rights on a table an administrator created beforehand.
    schema = sql.Identifier(table[0])
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, sql.Identifier(user)))
    owner = _table_owner(conn, table)
    if owner is not None and owner != user:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(
                table_identifier(table), sql.Identifier(user)
            )
        )


def _revoke_heartbeat_rights(
    conn: psycopg.Connection[Any], user: str, table: QualifiedName, drop_owned_table: bool = False
) -> None:
    if not _schema_exists(conn, table[0]):
        return
    owner = _table_owner(conn, table)
    if owner == user and drop_owned_table:
        conn.execute(sql.SQL("DROP TABLE {}").format(table_identifier(table)))
    elif owner is not None and owner != user:
        conn.execute(
            sql.SQL("REVOKE SELECT, INSERT, UPDATE, DELETE ON {} FROM {}").format(
                table_identifier(table), sql.Identifier(user)
            )
        )
    conn.execute(
        sql.SQL("REVOKE USAGE, CREATE ON SCHEMA {} FROM {}").format(
            sql.Identifier(table[0]), sql.Identifier(user)
        )
    )
