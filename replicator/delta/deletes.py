"""replicate-deletes: remove from the destination the keys that are gone from the source.

Changed-row scans cannot see a deleted row, so deletes are found by comparing key sets, in
ordered key ranges of ``chunk_rows`` keys (``min-job-size-rows``), so that neither side ever
holds more than one range at a time; the pass's workers compare ranges in parallel:

1. The source finds the range's last key (the ``chunk_rows``-th after the previous range, an
   index scan for a primary key), then its key count and a digest (sum of a 64-bit hash of
   each key's text). Without a ``chunk_rows``-th key the range is the last and open-ended, so
   keys past the source's last one are checked too.
2. The destination computes the same count and digest for that range. Equal: nothing to
   delete. (This runs after the pass has upserted its changes from the same snapshot, so the
   destination holds every source key and can only have more; the digest guards the rest.)
3. Otherwise the source's keys of the range are relayed as ``COPY`` (never decoded; one row
   of arrays per range) into a temporary table at the destination, and the destination rows
   of the range whose key is not there are deleted, or marked deleted with ``deletes: soft``.
   Deletes rarely come alone, so right after a range that had some, the next one skips
   steps 1's digest and 2 and goes straight to this. Each range commits on its own:
   deleting is idempotent and every pass compares afresh, so a kill midway loses nothing.

Both sides must order keys the same way. Integer, numeric, uuid and date/time keys do; text
depends on the collation, which may differ between the servers, so collatable key columns
are compared under ``COLLATE "C"`` (byte order) on both sides: right everywhere, at the cost
of a sort instead of an index walk at the source. The digests compare text forms, so both
connections use the same output settings (``SESSION_SETTINGS``); if the forms differ anyway
(say, a destination table created by hand with other types), the digests differ and step 3,
which compares typed values, decides.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from replicator.delta.tables import DeltaTable
from replicator.destinations.base import DestinationSession, DestTable
from replicator.keyorder import DIGEST_SESSION_SETTINGS, Bound, Digest, KeyOrder
from replicator.relay import relay_copy
from replicator.snapshot.plan import select_sql
from replicator.typemap import is_user_oid

# Identical text forms of key values on both servers (for the digests).
SESSION_SETTINGS = DIGEST_SESSION_SETTINGS


@dataclass
class TableDeletes:
    """One table's key comparison in a pass: shared by the workers that take its ranges."""

    table: DeltaTable
    target: DestTable
    order: KeyOrder
    binary: bool
    removed: int = 0
    # Deletes are seldom alone: right after a range that had some, digests are wasted work.
    recent_deletes: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class KeyRange:
    """Keys in ``(lower, upper]`` of one table; a missing bound is open."""

    deletes: TableDeletes
    lower: Bound | None
    upper: Bound | None


def key_order(src: psycopg.Connection[Any], t: DeltaTable) -> KeyOrder:
    rows = src.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attcollation <> 0 AND attname = ANY(%s)",
        (t.st.table.oid, list(t.st.key)),
    ).fetchall()
    return KeyOrder(t.key_columns, frozenset(r[0] for r in rows))


def key_ranges(src: psycopg.Connection[Any], work: TableDeletes, chunk_rows: int) -> list[KeyRange]:
    """Cut the table's keys (``src`` reads in the pass's snapshot) into ranges of ``chunk_rows`` keys.

    Only the boundaries are read here (one index probe each); the ranges are then compared in
    parallel by ``compare_range``.
    """
    ranges = []
    lower: Bound | None = None
    while True:
        upper = _range_end(src, work.table, work.order, lower, chunk_rows)
        ranges.append(KeyRange(work, lower, upper))
        if upper is None:
            return ranges
        lower = upper


def compare_range(src: psycopg.Connection[Any], dst: DestinationSession, r: KeyRange) -> None:
    """Delete (or soft-delete) the destination rows of ``r`` whose key the source no longer has."""
    w = r.deletes
    if w.recent_deletes or _source_digest(src, w.table, w.order, r.lower, r.upper) != dst.key_range_digest(
        w.target, w.order, r.lower, r.upper
    ):
        found = _remove_absent(src, dst, w, r.lower, r.upper)
        with w.lock:
            w.removed += found
            w.recent_deletes = found > 0
    else:
        w.recent_deletes = False


def _range_end(
    src: psycopg.Connection[Any],
    t: DeltaTable,
    order: KeyOrder,
    lower: Bound | None,
    chunk_rows: int,
) -> Bound | None:
    """The range after ``lower`` ends at the ``chunk_rows``-th key; None: it is the last, open-ended."""
    keys = [sql.Identifier(c.name) for c in order.columns]
    # The text forms are made outside the OFFSET: inside, every skipped row would be formatted
    # too (a quarter of a second per million keys).
    query = sql.SQL("SELECT {} FROM ({} ORDER BY {} LIMIT 1 OFFSET {}) AS s").format(
        sql.SQL(", ").join(sql.SQL("s.{}::text").format(k) for k in keys),
        select_sql(t.st, keys, order.after(lower)),
        order.order_by(),
        sql.Literal(chunk_rows - 1),
    )
    row = src.execute(query).fetchone()
    return tuple(row) if row is not None else None


def _source_digest(
    src: psycopg.Connection[Any],
    t: DeltaTable,
    order: KeyOrder,
    lower: Bound | None,
    upper: Bound | None,
) -> Digest:
    digest = sql.SQL("count(*), coalesce(sum({}), 0)").format(order.digest_sql())
    found = src.execute(select_sql(t.st, [digest], order.between(lower, upper))).fetchone()
    assert found is not None
    return int(found[0]), Decimal(found[1])


def _remove_absent(
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    w: TableDeletes,
    lower: Bound | None,
    upper: Bound | None,
) -> int:
    t, order = w.table, w.order
    # The range's keys travel as one row of arrays: relaying row by row would cost a trip
    # through Python per key. Binary arrays carry their element type's OID, equal on both
    # servers only for built-in types.
    binary = w.binary and not any(is_user_oid(c.type_oid) for c in order.columns)
    arrays = [sql.SQL("array_agg({})").format(sql.Identifier(k)) for k in order.names]
    copy_out = (
        sql.SQL("COPY ({}) TO STDOUT (FORMAT {})")
        .format(
            select_sql(t.st, arrays, order.between(lower, upper)), sql.SQL("binary" if binary else "text")
        )
        .as_string(None)
        .encode()
    )
    return dst.delete_absent(
        w.target, order, lower, upper, binary, lambda sink: relay_copy(src, copy_out, sink)
    )
