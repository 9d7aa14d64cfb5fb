"""What ``verify`` compares: each selected table's columns, key order and chunks.

The filter decides the tables, their columns and rows (its ``conditions`` apply at the
source); the ``snapshot`` section's ``row-identifier-key`` (the key the destination table was
built with) is the key of a table without a primary key. A table without either is compared as
a multiset of rows.

Chunks are ranges of the key cut at the source, inside the comparison's snapshot, every
``CHUNK_ROWS`` keys in one ordered pass (an index walk for an integer key): both servers then
digest each range on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Column
from replicator.destinations.base import DestTable
from replicator.filters import SelectedTable
from replicator.keyorder import Bound, KeyOrder
from replicator.snapshot.plan import select_sql

CHUNK_ROWS = 50_000
_INTEGER_TYPES = {"smallint", "integer", "bigint"}


@dataclass(frozen=True)
class VerifyTable:
    st: SelectedTable
    dest: DestTable | None  # None: not at the destination
    columns: tuple[Column, ...]  # compared: selected at the source, present at the destination
    order: KeyOrder | None  # None: no key (or a nullable one), compared as a multiset
    missing_columns: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        return self.st.display


@dataclass(frozen=True)
class Chunk:
    table: VerifyTable
    lower: Bound | None
    upper: Bound | None


def verify_table(src: psycopg.Connection[Any], st: SelectedTable, dest: DestTable | None) -> VerifyTable:
    columns = tuple(c for c in st.columns if dest is None or c.name in dest.columns)
    missing = tuple(c.name for c in st.columns if dest is not None and c.name not in dest.columns)
    order = None
    key_columns = tuple(c for k in st.key if (c := st.table.column(k)) is not None)
    # A key that may hold NULLs cannot bound a range (a comparison with NULL is no answer):
    # such a table is compared as a multiset, like one without a key.
    if key_columns and all(c.not_null for c in key_columns):
        rows = src.execute(
            """SELECT attname FROM pg_attribute
               WHERE attrelid = %s AND attcollation <> 0 AND attname = ANY(%s)""",
            (st.table.oid, list(st.key)),
        ).fetchall()
        order = KeyOrder(key_columns, frozenset(r[0] for r in rows))
    return VerifyTable(st, dest, columns, order, missing)


def chunks(src: psycopg.Connection[Any], t: VerifyTable, chunk_rows: int = CHUNK_ROWS) -> list[Chunk]:
    """The table's key ranges (``src`` reads in the comparison's snapshot): every ``chunk_rows``-th
    key is a boundary (an integer key: equal widths between its ends, two index probes instead
    of a walk); the first and last ranges are open."""
    assert t.order is not None
    order = t.order
    if len(order.columns) == 1 and order.columns[0].type_sql in _INTEGER_TYPES:
        bounds = _integer_bounds(src, t, chunk_rows)
        edges: list[Bound | None] = [None, *bounds, None]
        return [Chunk(t, lo, hi) for lo, hi in zip(edges, edges[1:], strict=False)]
    keys = [sql.Identifier(c.name) for c in order.columns]
    numbered = select_sql(
        t.st, [*keys, sql.SQL("row_number() OVER (ORDER BY {}) AS _rn").format(order.order_by())]
    )
    query = sql.SQL("SELECT {} FROM ({}) s WHERE mod(s._rn, {}) = 0 ORDER BY s._rn").format(
        sql.SQL(", ").join(sql.SQL("s.{}::text").format(k) for k in keys), numbered, sql.Literal(chunk_rows)
    )
    found: list[Bound] = [tuple(r) for r in src.execute(query).fetchall()]
    walked: list[Bound | None] = [None, *found, None]
    return [Chunk(t, lo, hi) for lo, hi in zip(walked, walked[1:], strict=False)]


def _integer_bounds(src: psycopg.Connection[Any], t: VerifyTable, chunk_rows: int) -> list[Bound]:
    assert t.order is not None
    key = sql.Identifier(t.order.columns[0].name)
    row = src.execute(select_sql(t.st, [sql.SQL("min({0}), max({0})").format(key)])).fetchone()
    if row is None or row[0] is None:
        return []
    low, high = int(row[0]), int(row[1])
    rows = max(t.st.table.estimated_rows, 1)
    n = max(1, min(math.ceil(rows / chunk_rows), high - low + 1))
    step = (high - low) / n
    cuts = sorted({low + int(step * i) for i in range(1, n)})
    return [(str(c),) for c in cuts]
