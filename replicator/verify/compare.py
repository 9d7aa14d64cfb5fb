"""Comparing one chunk (a key range) or one keyless table, both servers at once.

Each server digests the range on its own (``rowdigest``: row count and the sum of a 64-bit hash
of each row's compared columns), the source inside the comparison's snapshot, the destination
as it is. Equal digests: done, nothing travels but two numbers. Otherwise each side sends its
rows' keys and hashes for the range (a chunk is at most ``plan.CHUNK_ROWS`` rows), and the
differing keys fall out: missing at the destination, extra there, or changed.

A table without a key is a multiset: its rows fall into hash buckets, each bucket's digest is
compared, and the rows of differing buckets are counted by hash on both sides.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

from replicator.destinations.base import DestinationSession, RowHashes
from replicator.keyorder import Digest
from replicator.rowdigest import bucket_of, digest, keys_and_hashes, row_hash, row_text
from replicator.snapshot.plan import select_sql
from replicator.verify.plan import Chunk, VerifyTable

T = TypeVar("T")
U = TypeVar("U")

Kind = Literal["missing", "extra", "changed"]
"""``missing`` at the destination, ``extra`` there, or ``changed`` (same key, other values)."""

KeyText = tuple[str | None, ...]


@dataclass
class Found:
    """What one range (or one keyless table) holds on each side, and how they differ."""

    table: VerifyTable
    chunk: Chunk | None  # None: a keyless table, compared whole
    source_rows: int
    dest_rows: int
    # keyed: key -> (kind, source hash, destination hash); keyless: row hash -> (kind, row text, copies)
    differences: dict[Any, tuple[Kind, Any, Any]] = field(default_factory=dict)


def both(
    pool: ThreadPoolExecutor, at_source: Callable[[], T], at_destination: Callable[[], U]
) -> tuple[T, U]:
    """Run both reads at once: the source's on a pool thread, the destination's here."""
    future = pool.submit(at_source)
    mine = at_destination()
    return future.result(), mine


def compare_chunk(
    pool: ThreadPoolExecutor, src: psycopg.Connection[Any], dst: DestinationSession, chunk: Chunk
) -> Found:
    t = chunk.table
    assert t.order is not None and t.dest is not None
    order, dest = t.order, t.dest
    preds = order.between(chunk.lower, chunk.upper)
    s_digest, d_digest = both(
        pool,
        lambda: _digest(src.execute(select_sql(t.st, digest(t.columns), preds)).fetchone()),
        lambda: dst.row_digest(dest, t.columns, order, chunk.lower, chunk.upper),
    )
    found = Found(t, chunk, s_digest[0], d_digest[0])
    if s_digest == d_digest:
        return found
    width = len(order.columns)

    def source_rows() -> RowHashes:
        rows = src.execute(select_sql(t.st, keys_and_hashes(order, t.columns), preds)).fetchall()
        return [(tuple(r[:width]), int(r[width])) for r in rows]

    s_rows, d_rows = both(
        pool, source_rows, lambda: dst.row_hashes(dest, t.columns, order, chunk.lower, chunk.upper)
    )
    found.differences = diff_keyed(dict(s_rows), dict(d_rows))
    return found


def diff_keyed(source: dict[KeyText, int], dest: dict[KeyText, int]) -> dict[Any, tuple[Kind, Any, Any]]:
    out: dict[Any, tuple[Kind, Any, Any]] = {}
    for key, h in source.items():
        other = dest.get(key)
        if other is None:
            out[key] = ("missing", h, None)
        elif other != h:
            out[key] = ("changed", h, other)
    for key, h in dest.items():
        if key not in source:
            out[key] = ("extra", None, h)
    return out


def compare_keyless(
    pool: ThreadPoolExecutor, src: psycopg.Connection[Any], dst: DestinationSession, t: VerifyTable
) -> Found:
    assert t.dest is not None
    dest = t.dest
    s_buckets, d_buckets = both(
        pool, lambda: _source_buckets(src, t), lambda: dst.bucket_digests(dest, t.columns)
    )
    found = Found(t, None, sum(c for c, _ in s_buckets.values()), sum(c for c, _ in d_buckets.values()))
    differing = sorted(b for b in set(s_buckets) | set(d_buckets) if s_buckets.get(b) != d_buckets.get(b))
    if not differing:
        return found
    s_rows, d_rows = both(
        pool,
        lambda: _source_bucket_rows(src, t, differing),
        lambda: dst.bucket_rows(dest, t.columns, differing),
    )
    for h in set(s_rows) | set(d_rows):
        s_count, s_text = s_rows.get(h, (0, ""))
        d_count, d_text = d_rows.get(h, (0, ""))
        if s_count > d_count:
            found.differences[h] = ("missing", s_text, s_count - d_count)
        elif d_count > s_count:
            found.differences[h] = ("extra", d_text, d_count - s_count)
    return found


def _digest(row: tuple[Any, ...] | None) -> Digest:
    assert row is not None
    return int(row[0]), Decimal(row[1])


def _source_buckets(src: psycopg.Connection[Any], t: VerifyTable) -> dict[int, Digest]:
    hashed = select_sql(t.st, [sql.SQL("{} AS h").format(row_hash(t.columns))])
    query = sql.SQL("SELECT {}, count(*), sum(h) FROM ({}) s GROUP BY 1").format(
        bucket_of(sql.Identifier("h")), hashed
    )
    return {int(r[0]): (int(r[1]), Decimal(r[2])) for r in src.execute(query).fetchall()}


def _source_bucket_rows(
    src: psycopg.Connection[Any], t: VerifyTable, buckets: list[int]
) -> dict[int, tuple[int, str]]:
    rows = select_sql(
        t.st, [sql.SQL("{} AS h").format(row_hash(t.columns)), sql.SQL("{} AS r").format(row_text(t.columns))]
    )
    query = sql.SQL("SELECT h, count(*), min(r) FROM ({}) s WHERE {} = ANY(%s) GROUP BY h").format(
        rows, bucket_of(sql.Identifier("h"))
    )
    return {int(r[0]): (int(r[1]), str(r[2])) for r in src.execute(query, (buckets,)).fetchall()}
