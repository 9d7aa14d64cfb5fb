"""replicate-deletes by key buckets: walk only the key ranges whose summaries differ.

The key walk (``walk``) streams both sides' keys in key order. Its cost is an ordered scan of
the key index on each side, and where a heap page changed since the last vacuum (on the
destination, every page a pass's changes touched; on a busy source, most), each key costs a
heap visit as well: at 1% of rows changed per pass, spread over the table, that is most keys.
For a single-column integer key (``keybuckets``), a pass instead:

1. asks both servers at once for the summary (count and two hash sums) of each bucket of
   ``2^shift`` consecutive key values: one sequential scan and hash aggregate each, which do
   not visit pages per key, and a few thousand rows sent;
2. walks, as ``walk`` does, only the keys in the buckets whose summaries differ (a few index
   range scans), so the gone keys are found by comparing the keys themselves, exactly.

Why a bucket with equal summaries holds no gone key. The source summarises its rows in the
pass's snapshot (under the filter's ``conditions``), the destination its live rows before this
pass's changes are merged (their transaction commits only after the gone keys are deleted, in
it). A gone key g is in the destination's bucket and not in the source's. For the two summaries
to be equal the source's bucket would need other keys the destination lacks, with the same
count and the same two hash sums as the gone ones: a chance of about 2^-64 (``keybuckets``),
whatever caused the difference (rows this pass inserts, or a destination that drifted).
Differences the other way (keys this pass inserts) make a bucket walked for nothing; the walk
counts them as *missing*, and ``walk.remove_gone``'s guard applies as before.

The width of a bucket comes from the source's statistics (``choose_shift``): about
``KEYS_PER_BUCKET`` keys in a bucket where the keys are densest, so that with deletes spread
over the table only those few buckets are walked. Without statistics, or when keys are so sparse
that buckets would hold a handful of keys each, or when most buckets differ anyway, the whole
key set is walked as before.
"""

from __future__ import annotations

import logging
import math
import struct
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any

import psycopg
from psycopg import sql

from replicator import keybuckets, keywalk
from replicator.delta import walk
from replicator.delta.tables import DeltaTable
from replicator.delta.walk import SPOOL_MEMORY, GoneKeys
from replicator.destinations.base import DestinationSession, DestTable
from replicator.keybuckets import SEQUENTIAL_HASHED, Buckets, Selection, Summary
from replicator.keyorder import KeyOrder
from replicator.snapshot.plan import select_sql

log = logging.getLogger(__name__)

KEYS_PER_BUCKET = 64  # where keys are densest; fewer buckets walk more keys, more cost more groups
MIN_KEYS_PER_BUCKET = 8  # sparser than this on average: the summaries would cost about a full walk
WALK_ALL_SHARE = 0.5  # more of the keys in differing buckets: walk them all (no per-range scans)


def bucketable(order: KeyOrder, target: DestTable) -> bool:
    """A single integer key column, of the same type at the destination."""
    if len(order.columns) != 1:
        return False
    col = order.columns[0]
    there = target.columns.get(col.name)
    return col.type_oid in keybuckets.BUCKET_OIDS and there is not None and there.type_sql == col.type_sql


def choose_shift(src: psycopg.Connection[Any], t: DeltaTable, order: KeyOrder) -> int | None:
    """The bucket width (as a shift) for ``t``'s key from the source's statistics; None: walk it all.

    ``pg_stats``' histogram splits the key values into ranges of about equal row counts; the
    median range's width over its rows is the typical distance between keys."""
    (name,) = order.names
    st = t.st
    row = src.execute(
        "SELECT s.histogram_bounds::text, c.reltuples FROM pg_class c "
        "LEFT JOIN pg_stats s ON s.schemaname = %s AND s.tablename = %s AND s.attname = %s "
        "WHERE c.oid = %s ORDER BY s.inherited DESC LIMIT 1",
        (st.table.schema, st.table.name, name, st.table.oid),
    ).fetchone()
    if row is None or row[0] is None or not row[1] or row[1] <= 0:
        return None
    bounds = [int(v) for v in str(row[0]).strip("{}").split(",") if v]
    if len(bounds) < 3:
        return None
    rows = float(row[1])
    per_range = rows / (len(bounds) - 1)
    widths = sorted(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    typical = max(widths[len(widths) // 2], 1)
    shift = max(0, round(math.log2(max(KEYS_PER_BUCKET * typical / per_range, 1))))

    def groups(shift: int) -> float:
        return sum(min(per_range, w / (1 << shift) + 1) for w in widths)

    if groups(shift) > rows / MIN_KEYS_PER_BUCKET:
        return None
    while groups(shift) > keybuckets.MAX_GROUPS / 2 and shift < keybuckets.MAX_SHIFT:
        shift += 1  # a big table: wider buckets, so that the summaries stay small in memory
    return shift if shift <= keybuckets.MAX_SHIFT else None


@contextmanager
def planned_without(conn: psycopg.Connection[Any], names: tuple[str, ...]) -> Iterator[None]:
    """Plan the next statements (in the current transaction) with these ``enable_*`` settings
    off, then as before (``SET LOCAL`` would last until the pass's snapshot ends)."""
    found = conn.execute(sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(sql.SQL("current_setting({})").format(sql.Literal(n)) for n in names)
    )).fetchone()  # fmt: skip
    assert found is not None
    conn.execute(sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(sql.SQL("set_config({}, 'off', true)").format(sql.Literal(n)) for n in names)
    ))  # fmt: skip
    yield
    conn.execute(sql.SQL("SELECT {}").format(
        sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, true)").format(sql.Literal(n), sql.Literal(v))
            for n, v in zip(names, found, strict=True)
        )
    ))  # fmt: skip


def source_summaries(
    src: psycopg.Connection[Any], t: DeltaTable, order: KeyOrder, buckets: Buckets
) -> dict[int, Summary]:
    """The source's bucket summaries in the pass's snapshot (``src`` is in it), under the filter."""
    (name,) = order.names
    query = sql.SQL("{} GROUP BY 1 LIMIT {}").format(
        select_sql(t.st, [buckets.select_list(sql.Identifier(name))]), sql.Literal(keybuckets.MAX_GROUPS + 1)
    )
    # A condition may be selective on an index: then the planner chooses the scan.
    with planned_without(src, ("enable_sort",) if t.st.condition else SEQUENTIAL_HASHED):
        return keybuckets.summaries(src.execute(query).fetchall(), "source")


def find_gone(
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    t: DeltaTable,
    target: DestTable,
    order: KeyOrder,
    shift: int,
    key_kinds: str,
) -> GoneKeys:
    """The destination's gone keys (``src`` reads in the pass's snapshot; ``dst`` must be idle)."""
    buckets = Buckets(shift)
    began = time.monotonic()
    with ThreadPoolExecutor(1, thread_name_prefix="bucket-summary") as pool:
        at_source_future = pool.submit(source_summaries, src, t, order, buckets)
        at_destination = dst.key_buckets(target, order, shift)
        at_source = at_source_future.result()
    summed = time.monotonic()
    if max(len(at_source), len(at_destination)) > keybuckets.MAX_GROUPS:
        log.debug("%s: more than %s key buckets (stale statistics?): walking every key", t.display,
                  f"{keybuckets.MAX_GROUPS:,}")  # fmt: skip
        return walk.find_gone(src, dst, t, target, order, key_kinds)
    differing = buckets.differing(at_source, at_destination)
    decoded = _single_gone_keys(src, t, order, buckets, differing, at_source, at_destination)
    left = Selection(shift, tuple(b for b in differing.buckets if b not in decoded))
    source_keys = sum(s[0] for s in at_source.values())
    destination_keys = sum(s[0] for s in at_destination.values())
    left_keys = sum(at_destination[b][0] for b in left.buckets if b in at_destination)
    walk_all = left_keys > WALK_ALL_SHARE * destination_keys
    log.debug(
        "%s: key buckets of 2^%d values: %s at the source, %s at the destination, summarised in %.2f s; "
        "%s differ, %s of them by one gone key found from the sums, %s to walk (%s destination keys)%s",
        t.display, shift, f"{len(at_source):,}", f"{len(at_destination):,}", summed - began,
        f"{len(differing.buckets):,}", f"{len(decoded):,}", f"{len(left.buckets):,}", f"{left_keys:,}",
        ": walking every key instead" if walk_all else "",
    )  # fmt: skip
    if walk_all:
        return walk.find_gone(src, dst, t, target, order, key_kinds)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    size = _BINARY_SIZE[order.columns[0].type_oid]
    for key_value in decoded.values():
        spool.write(struct.pack(">hi", 1, size) + key_value.to_bytes(size, "big", signed=True))
    if not left.buckets:
        return GoneKeys(spool, keywalk.WalkResult(source_keys, destination_keys, len(decoded), 0))
    (name,) = order.names
    key = sql.Identifier(name)
    query = left.keys(select_sql(t.st, [key], [left.in_bucket(key)]), key, name)
    walked = walk.walk_keys(src, dst, target, order, key_kinds, query, left, spool).walked
    # The counts of the whole table: the deletes choose how to find the keys by the table's size.
    result = keywalk.WalkResult(source_keys, destination_keys, walked.gone + len(decoded), walked.missing)
    return GoneKeys(spool, result)


_BINARY_SIZE = {21: 2, 23: 4, 20: 8}
CANDIDATES = "_replicator_candidates"


def _single_gone_keys(
    src: psycopg.Connection[Any],
    t: DeltaTable,
    order: KeyOrder,
    buckets: Buckets,
    differing: Selection,
    at_source: dict[int, Summary],
    at_destination: dict[int, Summary],
) -> dict[int, int]:
    """Buckets whose only difference is one key the destination has and the source does not
    (the usual case: deletes are rare and spread): bucket -> that key, without walking them.

    The key's offset is the difference of the offset sums; it is taken only if both of its
    hashes are exactly the difference of the hash sums (else something else differs too: the
    bucket is walked), and if the source, asked in the pass's snapshot, does not have it (so a
    key the source has is never deleted, whatever the sums say)."""
    candidates = {}
    for b in differing.buckets:
        if b in at_destination:
            found = buckets.single_extra(b, at_source.get(b), at_destination[b])
            if found is not None:
                candidates[b] = found
    if not candidates:
        return {}
    (name,) = order.names
    c = sql.Identifier(CANDIDATES, "c")
    at_source_sql = select_sql(t.st, [sql.SQL("1")], [sql.SQL("{} = {}").format(sql.Identifier(name), c)])
    query = sql.SQL(
        "SELECT {c}, {hashes}, EXISTS ({there}) FROM unnest({keys}::int8[]) AS {alias}(c)"
    ).format(
        c=c, hashes=keybuckets.hash_sql(c), there=at_source_sql,
        keys=sql.Literal("{" + ",".join(str(v) for v in candidates.values()) + "}"),
        alias=sql.Identifier(CANDIDATES),
    )  # fmt: skip
    checked = {int(r[0]): (int(r[1]), int(r[2]), bool(r[3])) for r in src.execute(query).fetchall()}
    decoded = {}
    for b, key_value in candidates.items():
        h1, h2, at_source_too = checked[key_value]
        if not at_source_too and keybuckets.single_matches(at_source.get(b), at_destination[b], (h1, h2)):
            decoded[b] = key_value
    return decoded
