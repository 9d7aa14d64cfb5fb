"""Filter ``conditions`` while streaming: a publication row filter where that is safe, else the
destination evaluates them.

A publication row filter (PostgreSQL 15+, pgoutput) makes the source send only the changes of
rows that match, and turns an UPDATE that moves a row out of the filter into a DELETE (into an
INSERT when it moves in). But it is only safe when every column it reads is in the replica
identity: otherwise PostgreSQL makes the **source's** UPDATEs and DELETEs of the table fail. It
also accepts only immutable built-in functions. So each table's condition is tried, without
keeping anything: ``CREATE PUBLICATION`` with the filter, in a transaction that is rolled back,
tells whether the server accepts it and which columns it reads (``pg_publication_rel.prqual``).
A table published for inserts and truncates only (no replica identity, see publication.py)
needs no identity coverage. Everywhere else (wal2json, older servers, a filter the server refuses
or whose columns the identity does not log) the destination evaluates the condition on the rows
each batch wrote, and deletes those that do not match (``destinations/postgres/rowfilter.py``).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.conditions import require_expression
from replicator.filters import SelectedTable

log = logging.getLogger(__name__)

ROW_FILTERS_FROM = 150000
_VARATTNO = re.compile(r":varattno (-?\d+)")


@dataclass(frozen=True)
class RowFilter:
    """How one table's condition is applied while streaming."""

    condition: str
    native: bool  # True: in the publication; False: evaluated at the destination
    printed: str | None = None  # native: the filter as the server prints it (pg_get_expr)
    reason: str = ""  # why not native


def decide(
    conn: psycopg.Connection[Any], plugin: str, table: SelectedTable, insert_only: bool
) -> RowFilter | None:
    """How ``table``'s condition is applied (None: it has none). ``conn``: autocommit, on the source."""
    condition = table.condition
    if not condition:
        return None
    require_expression(condition, table.condition_where)  # pasted into CREATE PUBLICATION below
    if plugin != "pgoutput":
        return RowFilter(condition, False, reason=f"{plugin} has no row filters")
    if conn.info.server_version < ROW_FILTERS_FROM:
        return RowFilter(condition, False, reason="publication row filters need PostgreSQL 15")
    tried = _try(conn, table, condition)
    if isinstance(tried, str):
        return RowFilter(condition, False, reason=tried)
    printed, attnums = tried
    if not insert_only and table.table.replica_identity != "f":
        identity = set(table.table.identity_index_columns)
        names = {c.attnum: c.name for c in table.table.columns}
        read = {names.get(n, "?") for n in attnums} if 0 not in attnums else set(names.values())
        outside = sorted(read - identity)
        if outside:
            return RowFilter(
                condition, False,
                reason=f"it reads {', '.join(outside)}, which the replica identity does not log (a row "
                f"filter would make the source's UPDATEs and DELETEs of {table.display} fail)",
            )
    return RowFilter(condition, True, printed=printed)


def _try(conn: psycopg.Connection[Any], table: SelectedTable, condition: str) -> tuple[str, set[int]] | str:
    """(the filter as the server prints it, the attnums it reads), or why the server refuses it."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL statement_timeout = '10s'")
            probe = f"_replicator_row_filter_probe_{os.getpid()}"
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WHERE ({})").format(
                    sql.Identifier(probe), table.table.ident, sql.SQL(condition)
                )
            )
            row = conn.execute(
                "SELECT pr.prqual::text, pg_get_expr(pr.prqual, pr.prrelid) "
                "FROM pg_catalog.pg_publication_rel pr "
                "JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = %s",
                (probe,),
            ).fetchone()
    except psycopg.Error as e:
        return f"the source refuses it as a row filter: {(e.diag.message_primary or str(e)).strip()}"
    assert row is not None
    return str(row[1]), {int(n) for n in _VARATTNO.findall(str(row[0]))}
