"""Row digests both servers compute identically: the shared language of ``replicator verify``.

``keyorder`` says how both servers order and cut a table's key; this says how they hash the
rows in a range: each row's compared columns as one text (``ROW(...)::text``, under
``keyorder.DIGEST_SESSION_SETTINGS`` so both print values alike), hashed to 64 bits; a range's
digest is the row count and the sum of those hashes (order does not matter, so each server
scans the range however it likes). Tables without a key are compared as multisets: rows fall
into ``BUCKETS`` buckets by hash, and each bucket's count and sum are compared.

The SQL here is the expressions; each side puts them in its own ``SELECT`` (the source reads
through the filter's condition, the destination only its live rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from replicator.catalog import Column
from replicator.keyorder import KeyOrder

BUCKETS = 64


def row_hash(columns: Sequence[Column], alias: str | None = None) -> sql.Composable:
    idents = [sql.Identifier(alias, c.name) if alias else sql.Identifier(c.name) for c in columns]
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(sql.SQL(", ").join(idents))


def row_text(columns: Sequence[Column], alias: str | None = None) -> sql.Composable:
    idents = [sql.Identifier(alias, c.name) if alias else sql.Identifier(c.name) for c in columns]
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(idents))


def digest(columns: Sequence[Column], alias: str | None = None) -> list[sql.Composable]:
    """``count(*), sum(hash)``: a range's digest."""
    return [sql.SQL("count(*)"), sql.SQL("coalesce(sum({}), 0)").format(row_hash(columns, alias))]


def keys_and_hashes(
    order: KeyOrder, columns: Sequence[Column], alias: str | None = None
) -> list[sql.Composable]:
    """Each row's key columns as text, then its hash (order by ``order.order_by()``)."""
    keys = [
        sql.SQL("{}::text").format(sql.Identifier(alias, c.name) if alias else sql.Identifier(c.name))
        for c in order.columns
    ]
    return [*keys, row_hash(columns, alias)]


def bucket_of(hash_column: sql.Composable) -> sql.Composable:
    return sql.SQL("({} & {})").format(hash_column, sql.Literal(BUCKETS - 1))
