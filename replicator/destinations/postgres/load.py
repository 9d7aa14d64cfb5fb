"""Loading rows into a PostgreSQL destination: the COPY sink of the relay, appended or merged by
key, and the key-range work of delta passes (digests, deleting keys absent from a stream)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from replicator.destinations.base import DestTable, Fill
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import KEY_PROBES, Stages, merge, names_sql
from replicator.keyorder import Bound, Digest, KeyOrder
from replicator.relay import PgCopyIn, RelayResult


def copy_in_sql(table: sql.Composable, columns: Sequence[str], binary: bool) -> bytes:
    fmt = sql.SQL("(FORMAT binary)" if binary else "(FORMAT text)")
    query = sql.SQL("COPY {} ({}) FROM STDIN {}").format(table, names_sql(columns), fmt)
    return query.as_string(None).encode()


def load(
    conn: psycopg.Connection[Any],
    stages: Stages,
    deletes: DeletePolicy,
    table: DestTable,
    columns: tuple[str, ...],
    binary: bool,
    fill: Fill,
    merge_key: tuple[str, ...] = (),
    expect_new: bool | None = None,
) -> RelayResult:
    """Relay rows into ``table`` (``fill`` feeds the sink): appended, or staged and merged by
    ``merge_key`` (which needs a unique index unless ``expect_new`` says where rows are; see
    ``stage.merge``). Call in a transaction."""
    if not merge_key:
        return fill(PgCopyIn(conn, copy_in_sql(ident(table), columns, binary)))
    stage = stages.take(table, columns, "load")
    result = fill(PgCopyIn(conn, copy_in_sql(stage, columns, binary)))
    if result.rows:
        nullable = any(not c.not_null for k in merge_key if (c := table.columns.get(k)) is not None)
        if expect_new is not None and not nullable:
            conn.execute(KEY_PROBES)  # the statements join the stage to the table (see stage.py)
        merge(
            conn, table, stage, columns, merge_key, result.rows,
            key_nullable=nullable, deletes=deletes, expect_new=expect_new,
        )  # fmt: skip
    return result


def key_range_digest(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    order: KeyOrder,
    lower: Bound | None,
    upper: Bound | None,
) -> Digest:
    preds = order.between(lower, upper, "d") + deletes.live(table, "d")
    query = sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {} d{}").format(
        order.digest_sql("d"),
        ident(table),
        sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(preds)) if preds else sql.SQL(""),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


def delete_absent(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    order: KeyOrder,
    lower: Bound | None,
    upper: Bound | None,
    binary: bool,
    fill: Fill,
) -> int:
    """Delete (or soft-delete) the rows of ``table`` in ``(lower, upper]`` whose key is not in the
    stream ``fill`` writes (one row of arrays, one per key column). Returns the rows removed.
    Call in a transaction."""
    key = order.names
    packed = _key_arrays(conn, table, key)
    fill(PgCopyIn(conn, copy_in_sql(packed, key, binary)))
    # The planner cannot see how many keys the arrays hold (it guesses 10), and then sorts
    # them for a merge join; hashing them is what works at every size.
    conn.execute("SET LOCAL enable_mergejoin = off")
    conn.execute("SET LOCAL enable_nestloop = off")
    idents = [sql.Identifier(k) for k in key]
    keys = sql.SQL("SELECT {} FROM {} p").format(
        sql.SQL(", ").join(sql.SQL("unnest(p.{0}) AS {0}").format(i) for i in idents), packed
    )
    same = sql.SQL(" AND ").join(sql.SQL("s.{0} = d.{0}").format(i) for i in idents)
    in_range = order.between(lower, upper, "d") or [sql.SQL("true")]
    absent = sql.SQL("{} AND NOT EXISTS (SELECT 1 FROM ({}) s WHERE {})").format(
        sql.SQL(" AND ").join(in_range), keys, same
    )
    return conn.execute(deletes.delete_aliased(table, absent)).rowcount


def _key_arrays(conn: psycopg.Connection[Any], table: DestTable, key: tuple[str, ...]) -> sql.Identifier:
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
