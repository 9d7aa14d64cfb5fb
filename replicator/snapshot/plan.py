"""Splitting a table into chunks that copy in parallel, and the query that reads one chunk.

Without a split key a table is cut into CTID page ranges (PostgreSQL 14+ reads a TID range
without scanning the rest); a partitioned table is cut per leaf partition. With a split key
the cuts are value ranges of that column. The first and last chunks are open-ended, so rows
outside the planned range (pages added since, values beyond the hints) are still copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from replicator.conditions import require_expression
from replicator.config.extractor import CopySettings
from replicator.destinations.base import ChunkPlan
from replicator.errors import ConfigError
from replicator.filters import SelectedTable
from replicator.typemap import without_typmod

ROWS_PER_PAGE_GUESS = 60  # for tables never analyzed: a typical row is ~100-150 bytes

_INTEGER_TYPES = {"smallint", "integer", "bigint", "oid"}
_TEMPORAL_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}


def chunk_count(rows: int, cfg: CopySettings) -> int:
    return max(1, min(cfg.max_jobs_per_chunk, math.ceil(rows / cfg.min_job_size_rows)))


def plan_table(conn: psycopg.Connection[Any], st: SelectedTable, cfg: CopySettings) -> list[ChunkPlan]:
    """Chunks for one table; ``conn`` reads the source inside the snapshot."""
    if st.split_key:
        return _plan_by_key(conn, st, cfg)
    relations = (
        [(p.schema, p.name) for p in st.table.partitions]
        if st.table.kind == "p"
        else [(st.table.schema, st.table.name)]
    )
    plans: list[ChunkPlan] = []
    for schema, name in relations:
        pages, rows = _size(conn, schema, name)
        n = chunk_count(rows, cfg)
        if pages == 0 or n == 1:
            plans.append(ChunkPlan(len(plans), schema, name, "all", None, None))
            continue
        bounds = [pages * i // n for i in range(1, n)]
        edges: list[int | None] = [None, *bounds, None]
        for lo, hi in zip(edges, edges[1:], strict=False):
            plans.append(
                ChunkPlan(
                    len(plans),
                    schema,
                    name,
                    "ctid",
                    None if lo is None else str(lo),
                    None if hi is None else str(hi),
                )
            )
    return plans


def _size(conn: psycopg.Connection[Any], schema: str, name: str) -> tuple[int, int]:
    """Current pages, and estimated rows (from statistics, else from the page count)."""
    row = conn.execute(
        """SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, c.reltuples, c.relpages
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = %s AND c.relname = %s""",
        (schema, name),
    ).fetchone()
    assert row is not None
    pages, reltuples, relpages = int(row[0]), float(row[1]), int(row[2])
    if reltuples > 0 and relpages > 0:
        rows = int(reltuples / relpages * pages)
    else:
        rows = pages * ROWS_PER_PAGE_GUESS
    return pages, rows


def _plan_by_key(conn: psycopg.Connection[Any], st: SelectedTable, cfg: CopySettings) -> list[ChunkPlan]:
    where = st.config_where
    assert st.split_key is not None
    col = st.table.column(st.split_key)
    assert col is not None  # checked when the extractor config was applied
    base_type = without_typmod(col.type_sql)
    if base_type not in _INTEGER_TYPES | _TEMPORAL_TYPES | {"numeric"}:
        raise ConfigError(
            f"{where}: split-key: column '{col.name}' of {st.display} has type {col.type_sql}; "
            f"a split key must be an integer, numeric, date or timestamp column"
        )
    key = sql.Identifier(col.name)
    typ = sql.SQL(col.type_sql)
    hints = st.split_hints
    rows = hints.row_count_estimate if hints and hints.row_count_estimate else _estimated_rows(conn, st)
    n = chunk_count(rows, cfg)
    lo: Any = hints.split_key_min_value if hints else None
    hi: Any = hints.split_key_max_value if hints else None
    if lo is None or hi is None:
        found = conn.execute(
            sql.SQL("SELECT min({k})::text, max({k})::text FROM {t}").format(k=key, t=st.table.ident)
        ).fetchone()
        assert found is not None
        lo = found[0] if lo is None else lo
        hi = found[1] if hi is None else hi
    if lo is None or hi is None or n == 1:
        return [ChunkPlan(0, st.table.schema, st.table.name, "key", None, None)]
    if base_type in _TEMPORAL_TYPES:
        step = sql.SQL(
            "({lo}::timestamptz + ({hi}::timestamptz - {lo}::timestamptz) * (i::float8 / {n}))::{t}"
        )
    else:
        step = sql.SQL("({lo}::numeric + ({hi}::numeric - {lo}::numeric) * i / {n})::{t}")
    query = sql.SQL(
        "SELECT bt FROM (SELECT DISTINCT b::text AS bt, b FROM "
        "(SELECT {step} AS b FROM generate_series(1, {m}) i) s) d ORDER BY b"
    ).format(
        step=step.format(lo=sql.Literal(str(lo)), hi=sql.Literal(str(hi)), n=sql.Literal(n), t=typ),
        m=sql.Literal(n - 1),
    )
    try:
        bounds = [r[0] for r in conn.execute(query).fetchall()]
    except psycopg.Error as e:
        raise ConfigError(
            f"{where}: split-hints: cannot split {st.display} between {lo!r} and {hi!r}: "
            f"{(e.diag.message_primary or str(e)).strip()}"
        ) from None
    edges: list[str | None] = [None, *bounds, None]
    return [
        ChunkPlan(i, st.table.schema, st.table.name, "key", lo_b, hi_b)
        for i, (lo_b, hi_b) in enumerate(zip(edges, edges[1:], strict=False))
    ]


def _estimated_rows(conn: psycopg.Connection[Any], st: SelectedTable) -> int:
    if st.table.kind == "p":
        return sum(_size(conn, p.schema, p.name)[1] for p in st.table.partitions)
    return _size(conn, st.table.schema, st.table.name)[1]


def relation_sql(st: SelectedTable, schema: str | None = None, name: str | None = None) -> sql.Composable:
    """The relation to read ``st`` (or one of its partitions) from, as a FROM item."""
    schema, name = schema or st.table.schema, name or st.table.name
    relation = sql.Identifier(schema, name)
    partitioned_root = st.table.kind == "p" and (schema, name) == (st.table.schema, st.table.name)
    # ONLY keeps inheritance children (selected as tables of their own) out; a partitioned
    # root must not have it, or it would read nothing.
    return relation if partitioned_root else sql.SQL("ONLY {}").format(relation)


def select_sql(
    st: SelectedTable,
    columns: Sequence[sql.Composable],
    predicates: Sequence[sql.Composable] = (),
    relation: sql.Composable | None = None,
) -> sql.Composed:
    """``SELECT columns FROM relation WHERE predicates [AND the filter's condition]``."""
    where = list(predicates)
    if st.condition:
        # Checked when the filter was loaded; checked again here, where it meets SQL.
        where.append(sql.SQL("({})").format(sql.SQL(require_expression(st.condition, st.condition_where))))
    query = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), relation or relation_sql(st))
    if where:
        query = sql.SQL("{} WHERE {}").format(query, sql.SQL(" AND ").join(where))
    return query


def chunk_select(
    st: SelectedTable, chunk: ChunkPlan, columns: tuple[str, ...], extra: sql.Composable | None = None
) -> sql.Composed:
    """``SELECT columns FROM relation WHERE chunk range [AND extra] [AND filter condition]``."""
    source = relation_sql(st, chunk.source_schema, chunk.source_table)
    predicates: list[sql.Composable] = [extra] if extra is not None else []
    if chunk.kind == "ctid":
        if chunk.lower is not None:
            predicates.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({chunk.lower},0)")))
        if chunk.upper is not None:
            predicates.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({chunk.upper},0)")))
    elif chunk.kind == "key":
        col = st.table.column(st.split_key or "")
        assert col is not None
        key, typ = sql.Identifier(col.name), sql.SQL(col.type_sql)
        lower = sql.SQL("{} >= {}::{}").format(key, sql.Literal(chunk.lower), typ) if chunk.lower else None
        upper = sql.SQL("{} < {}::{}").format(key, sql.Literal(chunk.upper), typ) if chunk.upper else None
        if chunk.lower is None and upper is not None:
            # NULL keys belong to no range; the first chunk takes them.
            upper = sql.SQL("({} OR {} IS NULL)").format(upper, key)
        predicates.extend(p for p in (lower, upper) if p is not None)
    return select_sql(st, [sql.Identifier(c) for c in columns], predicates, source)


def copy_out_sql(
    st: SelectedTable,
    chunk: ChunkPlan,
    columns: tuple[str, ...],
    binary: bool,
    extra: sql.Composable | None = None,
) -> bytes:
    fmt = "binary" if binary else "text"
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT {})").format(
        chunk_select(st, chunk, columns, extra), sql.SQL(fmt)
    )
    return query.as_string(None).encode()
