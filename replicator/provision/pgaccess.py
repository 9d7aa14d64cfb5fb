"""The replication user and its rights, as idempotent SQL (run by the Pulumi dynamic provider).

Every function here may run again on a database where it already ran, or half ran: roles,
grants and publications are created only when missing and granted again harmlessly, so a
``pulumi up`` that was interrupted is repaired by the next one. Each step runs in one
transaction, so a failure leaves nothing half done, and a step that a concurrent session made
fail (a deadlock, "tuple concurrently updated", a connection ended by a failover) is redone
(``adminsession``). The statement builders are shared with ``replicator check``, whose fixes
must be exactly what the program would have run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from replicator.provision.adminsession import AccessError, Admin, AdminSession
from replicator.source import ddlcapture
from replicator.source.publication import INSERT_ONLY, insert_only_publication, publication_options

ReplicationRight = Literal["rds_replication", "attribute"]
QualifiedName = tuple[str, str]  # (schema, table)

ALL_TABLES = "*"


@dataclass(frozen=True)
class AccessSpec:
    """What the replication user must be able to do in one database."""

    user: str
    schemas: tuple[str, ...] = ("public",)
    # rds_replication on RDS/Aurora; the REPLICATION attribute on self-hosted PostgreSQL.
    replication_right: ReplicationRight = "rds_replication"
    # Roles whose future tables the user may read (ALTER DEFAULT PRIVILEGES FOR ROLE ...);
    # empty means the admin role that runs this.
    table_owners: tuple[str, ...] = ()
    heartbeat_table: QualifiedName | None = None
    publication: str | None = None
    # Managed publication members: (schema, table) pairs, or ALL_TABLES for FOR ALL TABLES
    # (superuser only, so not on RDS). None leaves the publication to someone else.
    publication_tables: tuple[QualifiedName, ...] | Literal["*"] | None = None
    # The DDL capture (event triggers: schema changes into the WAL, see replicator.source.ddlcapture),
    # installed by this admin session, which also becomes a member of the replication user (the owner
    # of the publications the replicator creates) so the trigger may add new tables to them.
    ddl_capture: bool = False

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> AccessSpec:
        """From the dynamic provider's property bag (plain JSON values)."""
        hb = props.get("heartbeat_table")
        tables = props.get("publication_tables")
        if tables is not None and tables != ALL_TABLES:
            tables = tuple(split_name(t) for t in tables)
        return cls(
            user=props["user"],
            schemas=tuple(props.get("schemas") or ("public",)),
            replication_right=props.get("replication_right", "rds_replication"),
            table_owners=tuple(props.get("table_owners") or ()),
            heartbeat_table=split_name(hb) if hb else None,
            publication=props.get("publication") or None,
            publication_tables=tables,
            ddl_capture=bool(props.get("ddl_capture")),
        )


def split_name(name: str) -> QualifiedName:
    """``"sales.orders"`` -> ``("sales", "orders")``; a bare name is in ``public``."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", schema)


def _table(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(*name)


# -- statement builders (shared with `replicator check`) ---------------------------------------------


def grant_replication(user: str, right: ReplicationRight) -> sql.Composed:
    if right == "rds_replication":
        return sql.SQL("GRANT rds_replication TO {}").format(sql.Identifier(user))
    return sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(user))


def grant_schema_usage(user: str, schema: str) -> sql.Composed:
    return sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(user))


def grant_select_all(user: str, schema: str) -> sql.Composed:
    return sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(user)
    )


def grant_select(user: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("GRANT SELECT ON {} TO {}").format(_table(table), sql.Identifier(user))


def grant_select_all_sequences(user: str, schema: str) -> sql.Composed:
    """Sequence values (``pg_sequences.last_value`` reads NULL without SELECT or USAGE on the sequence)."""
    return sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(user)
    )


def default_select(
    user: str,
    schema: str,
    owner: str | None,
    revoke: bool = False,
    objects: Literal["TABLES", "SEQUENCES"] = "TABLES",
) -> sql.Composed:
    """ALTER DEFAULT PRIVILEGES: tables (or sequences) created later in ``schema`` are readable too."""
    kind = sql.SQL(objects)
    action = (
        sql.SQL("REVOKE SELECT ON {} FROM {}") if revoke else sql.SQL("GRANT SELECT ON {} TO {}")
    ).format(kind, sql.Identifier(user))
    for_role = sql.SQL("FOR ROLE {} ").format(sql.Identifier(owner)) if owner else sql.SQL("")
    return sql.SQL("ALTER DEFAULT PRIVILEGES {}IN SCHEMA {} {}").format(
        for_role, sql.Identifier(schema), action
    )


def grant_connect(user: str, database: str) -> sql.Composed:
    return sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(database), sql.Identifier(user)
    )


def create_publication(
    name: str, tables: tuple[QualifiedName, ...] | Literal["*"], server_version: int = 150000
) -> sql.Composed:
    """CREATE PUBLICATION with the options of the replicator's own (``publication_options``)."""
    options = sql.SQL(" WITH ({})").format(publication_options(server_version))
    if isinstance(tables, str):  # ALL_TABLES
        return sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES{}").format(sql.Identifier(name), options)
    if not tables:
        return sql.SQL("CREATE PUBLICATION {}{}").format(sql.Identifier(name), options)
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
        sql.Identifier(name), sql.SQL(", ").join(_table(t) for t in tables), options
    )


def publish_all_operations(name: str, server_version: int = 150000, publish: str = "") -> sql.Composed:
    """What the publication publishes (default: every operation), and via the partition root (13+)."""
    options = publication_options(server_version, publish) if publish else publication_options(server_version)
    return sql.SQL("ALTER PUBLICATION {} SET ({})").format(sql.Identifier(name), options)


def add_to_publication(name: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), _table(table))


def drop_from_publication(name: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), _table(table))


# -- the idempotent steps ----------------------------------------------------------------------------


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
        _refuse_keyless_under_all_tables(conn, spec.publication)


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
        _ensure_publication(conn, spec.publication, spec.publication_tables)
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
        _drop_publications(conn, old.publication)
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
        _drop_publications(conn, spec.publication)
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


def reassign_and_drop_owned(user: str) -> sql.Composed:
    """The statements that free a role for DROP ROLE in one database (shared with messages)."""
    return sql.SQL("REASSIGN OWNED BY {u} TO CURRENT_USER; DROP OWNED BY {u}").format(u=sql.Identifier(user))


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
                _table(table), sql.Identifier(user)
            )
        )


def _revoke_heartbeat_rights(
    conn: psycopg.Connection[Any], user: str, table: QualifiedName, drop_owned_table: bool = False
) -> None:
    if not _schema_exists(conn, table[0]):
        return
    owner = _table_owner(conn, table)
    if owner == user and drop_owned_table:
        conn.execute(sql.SQL("DROP TABLE {}").format(_table(table)))
    elif owner is not None and owner != user:
        conn.execute(
            sql.SQL("REVOKE SELECT, INSERT, UPDATE, DELETE ON {} FROM {}").format(
                _table(table), sql.Identifier(user)
            )
        )
    conn.execute(
        sql.SQL("REVOKE USAGE, CREATE ON SCHEMA {} FROM {}").format(
            sql.Identifier(table[0]), sql.Identifier(user)
        )
    )


def _ensure_publication(
    conn: psycopg.Connection[Any], name: str, tables: tuple[QualifiedName, ...] | Literal["*"]
) -> None:
    """The publication as declared, and its insert-only companion, as ``replicator run`` expects them.

    A table without a replica identity in a publication that publishes updates and deletes makes
    the *source's* UPDATEs and DELETEs of it fail: such tables go to ``<name>_insert_only``
    (inserts and truncates), streamed on the same slot (``replicator.source.publication``). That
    one is created even while empty: pgoutput reads publications as of each change it decodes, so
    one created after the replicator's slot would make the stream fail.
    """
    version = conn.info.server_version
    row = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    want_all = tables == ALL_TABLES
    if row is not None and bool(row[0]) != want_all:
        # FOR ALL TABLES cannot be altered into a table list or back: recreate it.
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        row = None
    if isinstance(tables, str):
        if row is None:
            conn.execute(create_publication(name, tables, version))
        unused = sql.Identifier(insert_only_publication(name))
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(unused))
        conn.execute(publish_all_operations(name, version))
        return
    keyless = set(_without_identity(conn, tables))
    _ensure_members(conn, name, tuple(t for t in tables if t not in keyless), row is not None, version)
    companion = insert_only_publication(name)
    _ensure_members(
        conn, companion, tuple(t for t in tables if t in keyless),
        conn.execute("SELECT FROM pg_publication WHERE pubname = %s", (companion,)).fetchone() is not None,
        version,
    )
    conn.execute(publish_all_operations(name, version))
    conn.execute(publish_all_operations(companion, version, INSERT_ONLY))


def _ensure_members(
    conn: psycopg.Connection[Any], name: str, tables: tuple[QualifiedName, ...], exists: bool, version: int
) -> None:
    if not exists:
        conn.execute(create_publication(name, tables, version))
    elif tables:
        # SET TABLE replaces the whole member list, dropping members, row filters and column
        # lists someone added by hand: the publication becomes exactly what was declared.
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(_table(t) for t in tables)
            )
        )
    else:
        for t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        ).fetchall():
            conn.execute(drop_from_publication(name, (t[0], t[1])))


def _drop_publications(conn: psycopg.Connection[Any], name: str) -> None:
    for pub in (name, insert_only_publication(name)):
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(pub)))


# Tables whose UPDATEs and DELETEs a publication publishing them would make fail: no replica identity
# (NOTHING, DEFAULT without a primary key, or USING INDEX whose index is gone).
_WITHOUT_IDENTITY = """
SELECT n.nspname, c.relname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
  AND (c.relreplident = 'n'
       OR (c.relreplident = 'd' AND NOT EXISTS (
             SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
       OR (c.relreplident = 'i' AND NOT EXISTS (
             SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))
"""


def _without_identity(
    conn: psycopg.Connection[Any], tables: tuple[QualifiedName, ...]
) -> list[QualifiedName]:
    rows = conn.execute(
        _WITHOUT_IDENTITY + " AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([t[0] for t in tables], [t[1] for t in tables]),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _refuse_keyless_under_all_tables(conn: psycopg.Connection[Any], name: str) -> None:
    """FOR ALL TABLES publishes every table's updates: refused while some table has no replica identity."""
    rows = conn.execute(
        _WITHOUT_IDENTITY + " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_%%' AND NOT c.relispartition ORDER BY 1, 2"
    ).fetchall()
    if not rows:
        return
    names = ", ".join(f"{s}.{t}" for s, t in rows[:10])
    if len(rows) > 10:
        names += f" and {len(rows) - 10} more"
    raise AccessError(
        f"publication {name}: FOR ALL TABLES would publish the updates and deletes of {names}, which have no "
        "primary key or replica identity, and PostgreSQL would then refuse every UPDATE and DELETE of them "
        "at the source. Give each a primary key (or ALTER TABLE ... REPLICA IDENTITY FULL), or list the "
        "tables in publicationTables instead: tables without a key then go to a publication of their own "
        f"({insert_only_publication(name)}) that publishes their inserts only"
    )
