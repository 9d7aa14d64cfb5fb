"""replicate-deletes by one walk over both key sets in key order, wherever the key's types allow.

Changed-row scans cannot see a deleted row, so a pass compares key sets. Here both servers
stream the table's keys in key order as binary ``COPY`` (the source in the pass's snapshot,
under the filter's ``conditions``: a row that stops matching is gone too; the destination its
live rows), and ``replicator.keywalk`` merges the two streams once, in C: a destination key
the source lacks is *gone*. The cost is one ordered read of the keys on each side (an
index-only scan for an integer key), whatever the number of deletes and however they are
spread; the range digests of ``deletes`` cost that much only when nothing was deleted, and up
to three times more when deletes are spread over the table.

Order. Both sides use ``KeyOrder``: text keys compare under ``COLLATE "C"`` (byte order, which
the walk compares as bytes; the source then sorts instead of walking an index whose collation
is another), and only when both servers send text in the encoding they store it in, the same
on both. Which types can be walked, and why: ``keywalk``. Other keys (numeric, enums, ...)
and destination key columns of another type than the source's go by ``deletes``' ranges.

Atomic with the pass's changes. The gone keys are spooled (``SPOOL_MEMORY`` in memory, the rest
in a temporary file: memory stays bounded at any number of deletes) and deleted in the same
destination transaction as the table's changed rows and watermark (``passes``), so a kill
at any instant leaves the table as it was or with all of the pass. The walk runs in another
worker, at the same time as the changed rows are merged: the two key sets it may act on are
disjoint from the rows merged (a gone key is not in the snapshot the changed rows come from),
so neither needs to wait for the other, until the deletes, which wait for the walk.

A guard. The destination holds every source key except the rows this pass merges, so more
*missing* keys than rows merged means the two sides do not compare as they should (a table
changed behind our back, or a comparison bug): the table's pass fails, and nothing of it is
written, rather than delete what may not be gone.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import IO, Any

import psycopg
from psycopg import sql

from replicator import keywalk
from replicator.delta.tables import DeltaTable
from replicator.destinations.base import DestinationSession, DestTable
from replicator.errors import DestinationError
from replicator.keybuckets import Selection
from replicator.keyorder import KeyOrder
from replicator.relay import BUFFER_BYTES, CopySink, PgCopyOut, RelayResult
from replicator.snapshot.plan import select_sql

SPOOL_MEMORY = 8 << 20  # gone keys held in memory before the spool moves to a temporary file


@dataclass
class GoneKeys:
    """One table's destination keys that the source no longer has, as binary COPY tuples."""

    spool: IO[bytes]
    walked: keywalk.WalkResult

    def close(self) -> None:
        self.spool.close()


def walk_kinds(
    t: DeltaTable,
    target: DestTable,
    order: KeyOrder,
    source_encoding: str | None,
    destination_encoding: str | None,
) -> str | None:
    """The key's kinds for ``keywalk``, or None when the key must be compared by ranges."""
    found = keywalk.kinds(order.columns)
    if found is None:
        return None
    for c in order.columns:
        there = target.columns.get(c.name)
        if there is None or there.type_sql != c.type_sql:
            return None
    if any(c.type_oid in keywalk.COLLATABLE for c in order.columns) and (
        source_encoding is None or source_encoding != destination_encoding
    ):
        return None
    return found


def source_text_encoding(src: psycopg.Connection[Any]) -> str | None:
    """Like ``DestinationSession.text_key_encoding``, for the source connection."""
    server = src.info.parameter_status("server_encoding")
    return server if server and src.info.parameter_status("client_encoding") == server else None


def find_gone(
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    t: DeltaTable,
    target: DestTable,
    order: KeyOrder,
    key_kinds: str,
) -> GoneKeys:
    """Walk both key sets (``src`` reads in the pass's snapshot; ``dst`` must be idle)."""
    keys = [sql.Identifier(k) for k in order.names]
    query = sql.SQL("{} ORDER BY {}").format(select_sql(t.st, keys), order.order_by())
    return walk_keys(src, dst, target, order, key_kinds, query)


def walk_keys(
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    target: DestTable,
    order: KeyOrder,
    key_kinds: str,
    source_keys: sql.Composable,
    only: Selection | None = None,
    spool: IO[bytes] | None = None,
) -> GoneKeys:
    """Walk the source's keys (``source_keys``: a query of them in ``order``'s order) against the
    destination's live keys (those in ``only``'s buckets, or all), the gone ones written to
    ``spool`` (after what it holds already; a new one if None)."""
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(source_keys)
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) if spool is None else spool

    def on_gone(data: bytes) -> None:
        out.write(data)

    try:
        walked = keywalk.walk(
            PgCopyOut(src, query.as_string(None).encode(), "source"),
            dst.live_keys(target, order, only),
            key_kinds,
            on_gone,
        )
    except BaseException:
        out.close()
        raise
    return GoneKeys(out, walked)


def remove_gone(
    dst: DestinationSession, t: DeltaTable, target: DestTable, order: KeyOrder, gone: GoneKeys, merged: int
) -> int:
    """Delete the gone keys (call in the transaction that merged the table's ``merged`` changed rows)."""
    walked = gone.walked
    if walked.missing > merged:
        raise DestinationError(
            f"{t.display}: comparing keys found {walked.missing:,} source keys that the destination lacks, "
            f"more than the {merged:,} rows this pass merged: the destination table no longer matches "
            f"what was copied (written to by something else?); nothing was deleted and this table's pass "
            f"was not applied; run with --fresh to copy it again"
        )
    if not walked.gone:
        return 0

    def fill(sink: CopySink) -> RelayResult:
        sink.start()
        try:
            sink.write(keywalk.COPY_HEADER)
            gone.spool.seek(0)
            size = 0
            while chunk := gone.spool.read(BUFFER_BYTES):
                sink.write(chunk)
                size += len(chunk)
            sink.write(keywalk.COPY_TRAILER)
        except BaseException:
            sink.abort("interrupted")
            raise
        sink.finish()
        return RelayResult(walked.gone, size)

    return dst.delete_keys(target, order.names, walked.gone, walked.destination_keys, fill)
