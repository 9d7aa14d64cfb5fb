"""The publications provisioning manages for the replication user: as declared, kept exact.

A table without a replica identity goes to an insert-only companion publication rather than the
main one (which would make the source's UPDATEs and DELETEs of it fail); FOR ALL TABLES is refused
while such a table exists. Run inside a provisioning step's transaction (``pgaccess``).
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import sql

from replicator.provision.accessspec import ALL_TABLES, QualifiedName, table_identifier
from replicator.provision.accesssql import create_publication, drop_from_publication, publish_all_operations
from replicator.provision.adminsession import AccessError
from replicator.source.publication import INSERT_ONLY, insert_only_publication


def ensure_publication(
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
                sql.Identifier(name), sql.SQL(", ").join(table_identifier(t) for t in tables)
            )
        )
    else:
        for t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        ).fetchall():
            conn.execute(drop_from_publication(name, (t[0], t[1])))


def drop_publications(conn: psycopg.Connection[Any], name: str) -> None:
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


def refuse_keyless_under_all_tables(conn: psycopg.Connection[Any], name: str) -> None:
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
