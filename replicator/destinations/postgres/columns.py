"""Following the source's columns between two delta passes: rename, drop (or keep), add, retype.

Called in the transaction that then merges the table's rows and stores its watermark, so the
new shape, the rows that fill it and the watermark commit together (PostgreSQL DDL is
transactional): a kill leaves the old shape, the old rows and the old watermark.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog, Column
from replicator.destinations.base import ColumnChanges, DestTable
from replicator.destinations.postgres.ddl import describe_table, ensure_types, ident
from replicator.destinations.postgres.types import column_sql
from replicator.errors import DestinationError

log = logging.getLogger(__name__)


def alter_columns(
    conn: psycopg.Connection[Any],
    table: DestTable,
    catalog: Catalog,
    changes: ColumnChanges,
    keep_dropped: bool,
) -> DestTable:
    """Apply ``changes`` to ``table`` (call in a transaction); the table as it is afterwards."""
    name = ident(table)
    for old, new in changes.renamed:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                name, sql.Identifier(old), sql.Identifier(new)
            )
        )
    drop_not_null = sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL")
    for column in changes.orphaned:
        conn.execute(drop_not_null.format(name, sql.Identifier(column)))
    for column in changes.dropped:
        if keep_dropped:
            conn.execute(drop_not_null.format(name, sql.Identifier(column)))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(name, sql.Identifier(column)))
    for c in changes.replaced:  # at the end of the table, as at the source
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(name, sql.Identifier(c.name)))
    ensure_types(conn, catalog, changes.added + changes.retyped + changes.replaced)
    has_rows = _has_rows(conn, table) if changes.added or changes.replaced else False
    for c in changes.replaced + changes.added:
        # NOT NULL only where the table is empty: the rows there get their values from the pass's
        # read of every row, in this transaction, after this statement.
        shape = replace(c, not_null=False) if has_rows else c
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(name, column_sql(shape, as_generated=False))
        )
    for c in changes.retyped:
        _retype(conn, table, c)
    found = describe_table(conn, table.schema, table.name)
    if found is None:
        raise DestinationError(
            f"destination table {table.display} disappeared while its columns were altered"
        )
    return found


def _retype(conn: psycopg.Connection[Any], table: DestTable, c: Column) -> None:
    """The destination's values are cast when they can be; the pass then reads every row again, so
    what a cast gets wrong (the source's USING may have done something else) is overwritten. When
    no cast exists, the column takes the type empty (NULLs, its NOT NULL dropped), in its place,
    for that read to fill."""
    name, col = ident(table), sql.Identifier(c.name)
    typ = sql.SQL(c.type_sql)
    collate = sql.SQL(" COLLATE {}").format(sql.SQL(c.collation)) if c.collation else sql.SQL("")
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}{} USING {}::{}").format(
                    name, col, typ, collate, col, typ
                )
            )
        return
    except psycopg.Error as e:
        log.info(
            "%s.%s: the destination's values do not cast to %s (%s): the column is emptied and every row "
            "read from the source", table.display, c.name, c.type_sql, e.diag.message_primary or str(e),
        )  # fmt: skip
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(name, col))
    conn.execute(
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}{} USING NULL").format(name, col, typ, collate)
    )


def _has_rows(conn: psycopg.Connection[Any], table: DestTable) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident(table))).fetchone()
    return bool(row and row[0])
