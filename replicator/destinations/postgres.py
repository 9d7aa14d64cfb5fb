"""PostgreSQL destination: schemas, types, tables and keys, and the statements that load rows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog, Column
from replicator.errors import DestinationError
from replicator.filters import SelectedTable
from replicator.typemap import column_sql, create_type_sql, types_in_order

log = logging.getLogger(__name__)

KEY_BUILD_MEMORY = "512MB"
# With `deletes: soft`, a row deleted at the source stays, with this set to true.
SOFT_DELETE_COLUMN = "__replicator_is_deleted"


@dataclass(frozen=True)
class DestColumn:
    name: str
    type_sql: str
    generated: bool
    not_null: bool = False


@dataclass(frozen=True)
class DestTable:
    schema: str
    name: str
    columns: dict[str, DestColumn]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


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
            raise DestinationError(f"cannot create type {t.display} in the destination: {_reason(e)}") from None


def _add_missing_enum_labels(conn: psycopg.Connection[Any], schema: str, name: str, labels: tuple[str, ...]) -> None:
    oid = _type_oid(conn, schema, name)
    have = {r[0] for r in conn.execute("SELECT enumlabel FROM pg_enum WHERE enumtypid = %s", (oid,)).fetchall()}
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


def create_table(conn: psycopg.Connection[Any], catalog: Catalog, st: SelectedTable) -> None:
    """Create the destination table like the source: same names, types, NOT NULLs and generated columns.

    No keys or indexes yet (they are built after the load), no defaults (values come from the source).
    A generated column whose expression the destination cannot compile becomes a plain column
    that receives the source's computed values.
    """
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(st.table.schema)))
    ensure_types(conn, catalog, st.columns)

    def ddl(generated: bool) -> sql.Composed:
        cols = sql.SQL(", ").join(column_sql(c, as_generated=generated) for c in st.columns)
        return sql.SQL("CREATE TABLE {} ({})").format(st.table.ident, cols)

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


def ensure_soft_delete_column(conn: psycopg.Connection[Any], table: DestTable) -> None:
    """``deletes: soft``: rows deleted at the source stay, flagged (adding a defaulted column is instant)."""
    if SOFT_DELETE_COLUMN not in table.columns:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} boolean NOT NULL DEFAULT false").format(
                table.ident, sql.Identifier(SOFT_DELETE_COLUMN)
            )
        )


def truncate(conn: psycopg.Connection[Any], table: DestTable) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(table.ident))


def build_key(conn: psycopg.Connection[Any], st: SelectedTable) -> None:
    """Primary key (or, for a nullable row-identifier-key, a unique index treating NULLs as equal)."""
    if not st.key:
        return
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in st.key)
    conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(KEY_BUILD_MEMORY)))
    nullable = [k for k in st.key if (c := st.table.column(k)) is not None and not c.not_null]
    try:
        with conn.transaction():
            if st.key_from == "primary-key" or not nullable:
                conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(st.table.ident, cols))
            else:
                conn.execute(
                    sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) NULLS NOT DISTINCT").format(
                        sql.Identifier(f"{st.table.name}_replicator_key"[:63]), st.table.ident, cols
                    )
                )
    except psycopg.Error as e:
        raise DestinationError(f"cannot build the key ({', '.join(st.key)}) of {st.display}: {_reason(e)}") from None


def copy_columns(st: SelectedTable, dest: DestTable) -> tuple[str, ...]:
    """Columns to move: selected at the source, present and not generated at the destination."""
    missing = [c.name for c in st.columns if c.name not in dest.columns]
    if missing:
        raise DestinationError(
            f"destination table {st.display} has no column(s) {', '.join(missing)}; "
            f"add them or drop the table so replicator recreates it"
        )
    return tuple(c.name for c in st.columns if not dest.columns[c.name].generated)


def copy_in_sql(table: DestTable | sql.Identifier, columns: tuple[str, ...], binary: bool) -> bytes:
    ident = table.ident if isinstance(table, DestTable) else table
    fmt = sql.SQL("(FORMAT binary)" if binary else "(FORMAT text)")
    return _bytes(
        sql.SQL("COPY {} ({}) FROM STDIN {}").format(
            ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns), fmt
        )
    )


def create_stage(conn: psycopg.Connection[Any], table: DestTable, columns: tuple[str, ...]) -> sql.Identifier:
    """A temporary table (dropped at commit) shaped like ``columns`` of ``table``."""
    stage = sql.Identifier("_replicator_stage")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            stage, sql.SQL(", ").join(sql.Identifier(c) for c in columns), table.ident
        )
    )
    return stage


def merge_stage(
    conn: psycopg.Connection[Any],
    table: DestTable,
    stage: sql.Identifier,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    undelete: bool = False,
) -> None:
    """Upsert the staged rows by key: a row already present takes the staged values.

    ``undelete``: also clear the soft-delete mark (a key deleted at the source came back).
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c not in key]
    if undelete:
        sets.append(sql.SQL("{} = false").format(sql.Identifier(SOFT_DELETE_COLUMN)))
    action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
            table.ident, cols, cols, stage, sql.SQL(", ").join(sql.Identifier(k) for k in key), action
        )
    )


def create_key_arrays(conn: psycopg.Connection[Any], table: DestTable, key: tuple[str, ...]) -> sql.Identifier:
    """A temporary table (dropped at commit) with one array column per key column of ``table``."""
    packed = sql.Identifier("_replicator_key_arrays")
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}[]").format(sql.Identifier(k), sql.SQL(table.columns[k].type_sql)) for k in key
    )
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(packed, cols))
    for k in key:
        # Stored once and read once: compressing a megabyte of keys would cost more than all the rest.
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STORAGE EXTERNAL").format(packed, sql.Identifier(k))
        )
    return packed


def delete_absent(
    conn: psycopg.Connection[Any],
    table: DestTable,
    packed: sql.Identifier,
    key: tuple[str, ...],
    in_range: sql.Composable,
    soft: bool,
) -> int:
    """Delete (or soft-delete) the rows of ``table`` in ``in_range`` whose key is not in ``packed``.

    ``packed`` holds the keys as one row of arrays (``create_key_arrays``); ``in_range`` refers
    to the destination table as ``d``. Returns the number of rows removed. Call in a transaction.
    """
    # The planner cannot see how many keys the arrays hold (it guesses 10), and then sorts
    # them for a merge join; hashing them is what works at every size.
    conn.execute("SET LOCAL enable_mergejoin = off")
    conn.execute("SET LOCAL enable_nestloop = off")
    idents = [sql.Identifier(k) for k in key]
    keys = sql.SQL("SELECT {} FROM {} p").format(
        sql.SQL(", ").join(sql.SQL("unnest(p.{0}) AS {0}").format(i) for i in idents), packed
    )
    match = sql.SQL(" AND ").join(sql.SQL("s.{0} = d.{0}").format(i) for i in idents)
    absent = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM ({}) s WHERE {})").format(in_range, keys, match)
    if soft:
        flag = sql.Identifier(SOFT_DELETE_COLUMN)
        query = sql.SQL("UPDATE {} d SET {} = true WHERE NOT d.{} AND {}").format(table.ident, flag, flag, absent)
    else:
        query = sql.SQL("DELETE FROM {} d WHERE {}").format(table.ident, absent)
    return conn.execute(query).rowcount


def _bytes(q: sql.Composable) -> bytes:
    return q.as_string(None).encode()


def _reason(e: psycopg.Error) -> str:
    return (e.diag.message_primary or str(e)).strip()
