"""PostgreSQL destination DDL: schemas, user types, tables, keys, columns the source gained.

A table's other objects (collations, sequences, defaults, identity, indexes, constraints) are
``objects.py``'s. Errors become ``DestinationError`` naming the object.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog, Column
from replicator.destinations.base import DestColumn, DestTable, TableName
from replicator.destinations.postgres import objects as table_objects
from replicator.destinations.postgres.types import column_sql, create_type_sql, types_in_order
from replicator.errors import DestinationError
from replicator.filters import SelectedTable
from replicator.tableobjects import TableObjects

log = logging.getLogger(__name__)

KEY_BUILD_MEMORY = "512MB"


def ident(table: DestTable) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def describe_table(conn: psycopg.Connection[Any], schema: str, name: str) -> DestTable | None:
    """The destination table's columns (types spelled as the catalog spells them), or None."""
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', '', true)")
        rows = conn.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '', a.attnotnull
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
                 AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum""",
            (schema, name),
        ).fetchall()
        exists = rows or conn.execute(
            """SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')""",
            (schema, name),
        ).fetchone()
    if not exists:
        return None
    return DestTable(schema, name, {r[0]: DestColumn(r[0], r[1], r[2], r[3]) for r in rows})


def ensure_types(conn: psycopg.Connection[Any], catalog: Catalog, columns: tuple[Column, ...]) -> None:
    """Create the schemas, extensions and user types these columns need, if missing."""
    for t in types_in_order(catalog, columns):
        ddl = create_type_sql(t)
        if ddl is None:
            continue
        if t.extension is None:
            if _type_oid(conn, t.schema, t.name) is not None:
                if t.kind == "e":
                    _add_missing_enum_labels(conn, t.schema, t.name, t.enum_labels)
                continue
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(t.schema)))
        try:
            with conn.transaction():
                conn.execute(ddl)
        except psycopg.Error as e:
            raise DestinationError(
                f"cannot create type {t.display} in the destination: {_reason(e)}"
            ) from None


def _add_missing_enum_labels(
    conn: psycopg.Connection[Any], schema: str, name: str, labels: tuple[str, ...]
) -> None:
    oid = _type_oid(conn, schema, name)
    have = {
        r[0] for r in conn.execute("SELECT enumlabel FROM pg_enum WHERE enumtypid = %s", (oid,)).fetchall()
    }
    for label in labels:
        if label not in have:
            conn.execute(
                sql.SQL("ALTER TYPE {} ADD VALUE IF NOT EXISTS {}").format(
                    sql.Identifier(schema, name), sql.Literal(label)
                )
            )


def _type_oid(conn: psycopg.Connection[Any], schema: str, name: str) -> int | None:
    row = conn.execute(
        """SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = %s AND t.typname = %s""",
        (schema, name),
    ).fetchone()
    return row[0] if row else None


def create_table(
    conn: psycopg.Connection[Any], catalog: Catalog, st: SelectedTable, objects: TableObjects | None = None
) -> list[str]:
    """Create the destination table like the source: same names, types, collations, NOT NULLs and
    generated columns; with ``objects``, its defaults, identity columns and their sequences.

    No keys or indexes yet (they are built after the load). A generated column whose expression
    the destination cannot compile becomes a plain column that receives the source's computed
    values. Returns a note for each object left out.
    """
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(st.table.schema)))
    if objects is not None:
        table_objects.ensure_collations(conn, objects.collation_defs)
    ensure_types(conn, catalog, st.columns)
    _create(conn, st)
    if objects is None:
        return []
    table_objects.create_sequences(conn, objects.sequences)
    return table_objects.shape_table(conn, (st.table.schema, st.table.name), objects)


def _create(conn: psycopg.Connection[Any], st: SelectedTable) -> None:

    def ddl(generated: bool) -> sql.Composed:
        cols = sql.SQL(", ").join(column_sql(c, as_generated=generated) for c in st.columns)
        return sql.SQL("CREATE TABLE {} ({})").format(ident_of(st), cols)

    if any(c.is_generated for c in st.columns):
        try:
            with conn.transaction():
                conn.execute(ddl(True))
            return
        except psycopg.Error as e:
            log.warning(
                "%s: generated column expression not valid in the destination (%s); "
                "creating plain columns that receive the source's values",
                st.display, _reason(e),
            )
    try:
        with conn.transaction():
            conn.execute(ddl(False))
    except psycopg.Error as e:
        raise DestinationError(f"cannot create table {st.display} in the destination: {_reason(e)}") from None


def has_rows(conn: psycopg.Connection[Any], table: DestTable) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident(table))).fetchone()
    return bool(row and row[0])


def truncate(conn: psycopg.Connection[Any], table: DestTable) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(ident(table)))


def truncate_all(conn: psycopg.Connection[Any], tables: list[DestTable]) -> None:
    """One TRUNCATE for all: foreign keys among them do not stand in its way."""
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(ident(t) for t in tables)))


def has_unique_key(conn: psycopg.Connection[Any], table: TableName, columns: tuple[str, ...]) -> bool:
    """Whether a unique index (no predicate, no expression) covers exactly ``columns``."""
    found = conn.execute(
        """SELECT EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL
                 AND i.indexprs IS NULL
                 AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
                      FROM pg_attribute a
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = %s)""",
        (sql.Identifier(*table).as_string(conn), sorted(columns)),
    ).fetchone()
    return bool(found and found[0])


def add_columns(conn: psycopg.Connection[Any], table: DestTable, columns: list[tuple[str, str]]) -> None:
    """Columns the source gained: (name, type as SQL)."""
    for name, type_sql in columns:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                ident(table), sql.Identifier(name), sql.SQL(type_sql)
            )
        )


def drop_not_null(conn: psycopg.Connection[Any], table: DestTable, columns: list[str]) -> None:
    """Columns the source lost take NULLs from now on."""
    for name in columns:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(ident(table), sql.Identifier(name))
        )


def build_key(conn: psycopg.Connection[Any], st: SelectedTable, name: str | None = None) -> None:
    """Primary key, named ``name`` when given (or, for a nullable row-identifier-key, a unique
    index treating NULLs as equal)."""
    if not st.key:
        return
    table = (st.table.schema, st.table.name)
    if has_unique_key(conn, table, st.key):
        return  # built already (a table emptied and reloaded keeps its key)
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in st.key)
    conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(KEY_BUILD_MEMORY)))
    nullable = [k for k in st.key if (c := st.table.column(k)) is not None and not c.not_null]
    try:
        with conn.transaction():
            if st.key_from == "primary-key" or not nullable:
                named = sql.SQL("CONSTRAINT {} ").format(sql.Identifier(name)) if name else sql.SQL("")
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD {}PRIMARY KEY ({})").format(ident_of(st), named, cols)
                )
            else:
                conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) NULLS NOT DISTINCT").format(
                        sql.Identifier(f"{st.table.name}_replicator_key"[:63]), ident_of(st), cols
                    )
                )
    except psycopg.Error as e:
        raise DestinationError(
            f"cannot build the key ({', '.join(st.key)}) of {st.display}: {_reason(e)}"
        ) from None


def add_unique_key(conn: psycopg.Connection[Any], table: TableName, columns: tuple[str, ...]) -> None:
    """A unique index on ``columns`` (the source's replica identity index, see realtime/setup.py)."""
    name = sql.Identifier(f"{table[1]}_replicator_identity"[:63])
    conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(KEY_BUILD_MEMORY)))
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE UNIQUE INDEX {} ON {} ({})").format(
                    name, sql.Identifier(*table), sql.SQL(", ").join(map(sql.Identifier, columns))
                )
            )
    except psycopg.Error as e:
        raise DestinationError(
            f"cannot build a unique index on ({', '.join(columns)}) of {'.'.join(table)}, the columns by "
            f"which the source identifies its rows (REPLICA IDENTITY USING INDEX): {_reason(e)}. If it holds "
            f"duplicates (rows an earlier version failed to delete), copy the table again: run `full` "
            f"with --fresh"
        ) from None


def copy_columns(st: SelectedTable, dest: DestTable) -> tuple[str, ...]:
    """Columns to move: selected at the source, present and not generated at the destination."""
    missing = [c.name for c in st.columns if c.name not in dest.columns]
    if missing:
        raise DestinationError(
            f"destination table {st.display} has no column(s) {', '.join(missing)}; "
            f"add them or drop the table so replicator recreates it"
        )
    return tuple(c.name for c in st.columns if not dest.columns[c.name].generated)


def ident_of(st: SelectedTable) -> sql.Identifier:
    """The destination table of a selected source table: the same names."""
    return sql.Identifier(st.table.schema, st.table.name)


def _reason(e: psycopg.Error) -> str:
    return (e.diag.message_primary or str(e)).strip()
