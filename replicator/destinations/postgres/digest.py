"""The destination half of ``replicator verify``: digests and row hashes of live rows, read only.

The expressions are ``rowdigest``'s and ``keyorder``'s, so they match what the source computes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Column
from replicator.destinations.base import DestTable, RowHashes
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.keyorder import Bound, Digest, KeyOrder
from replicator.rowdigest import bucket_of, digest, keys_and_hashes, row_hash, row_text


def _where(preds: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(preds)) if preds else sql.SQL("")


def row_digest(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    columns: tuple[Column, ...],
    order: KeyOrder,
    lower: Bound | None,
    upper: Bound | None,
) -> Digest:
    preds = order.between(lower, upper, "d") + deletes.live(table, "d")
    query = sql.SQL("SELECT {} FROM {} d{}").format(
        sql.SQL(", ").join(digest(columns, "d")), ident(table), _where(preds)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


def row_hashes(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    columns: tuple[Column, ...],
    order: KeyOrder,
    lower: Bound | None,
    upper: Bound | None,
) -> RowHashes:
    preds = order.between(lower, upper, "d") + deletes.live(table, "d")
    query = sql.SQL("SELECT {} FROM {} d{} ORDER BY {}").format(
        sql.SQL(", ").join(keys_and_hashes(order, columns, "d")),
        ident(table),
        _where(preds),
        order.order_by(),
    )
    width = len(order.columns)
    return [(tuple(r[:width]), int(r[width])) for r in conn.execute(query).fetchall()]


def bucket_digests(
    conn: psycopg.Connection[Any], deletes: DeletePolicy, table: DestTable, columns: tuple[Column, ...]
) -> dict[int, Digest]:
    query = sql.SQL(
        "SELECT {b}, count(*), sum(h) FROM (SELECT {h} AS h FROM {t} d{w}) s GROUP BY 1"
    ).format(
        b=bucket_of(sql.Identifier("h")), h=row_hash(columns, "d"), t=ident(table),
        w=_where(deletes.live(table, "d")),
    )  # fmt: skip
    return {int(r[0]): (int(r[1]), Decimal(r[2])) for r in conn.execute(query).fetchall()}


def bucket_rows(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    columns: tuple[Column, ...],
    buckets: Iterable[int],
) -> dict[int, tuple[int, str]]:
    query = sql.SQL(
        "SELECT h, count(*), min(r) FROM (SELECT {h} AS h, {r} AS r FROM {t} d{w}) s "
        "WHERE {b} = ANY(%s) GROUP BY h"
    ).format(
        h=row_hash(columns, "d"), r=row_text(columns, "d"), t=ident(table),
        w=_where(deletes.live(table, "d")), b=bucket_of(sql.Identifier("h")),
    )  # fmt: skip
    return {int(r[0]): (int(r[1]), str(r[2])) for r in conn.execute(query, (list(buckets),)).fetchall()}
