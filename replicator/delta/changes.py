"""Changed rows of one table: which to read, and applying them with the watermark, atomically.

A pass reads the rows past the table's stored watermark (see ``xmin`` and ``updatekey``) in
the pass's snapshot, relays them as ``COPY`` to the destination, which merges them by key, and
stores the watermark for the next pass, all in one destination transaction. Killed before
the commit, nothing of the pass is there and the old watermark reads the same rows again;
after it, both are. Nothing is lost and, since rows merge by key, nothing is duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.delta import updatekey, xmin
from replicator.delta.tables import DeltaTable
from replicator.destinations.base import DestinationSession, DestTable, Watermark
from replicator.relay import relay_copy
from replicator.snapshot.plan import select_sql

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassSnapshot:
    """The exported snapshot every reader of a pass shares, with its transaction-ID bounds."""

    name: str
    xmin: int  # xid8: oldest transaction still running
    xmax: int  # xid8: first transaction ID not yet assigned


def next_watermark(
    t: DeltaTable,
    previous: Watermark | None,
    snapshot: PassSnapshot,
    reading: updatekey.Reading | None,
    horizon: updatekey.Horizon | None,
) -> Watermark:
    """The watermark to store once this pass's rows of ``t`` are applied."""
    if t.kind == "xmin":
        return Watermark("xmin", xmin.watermark_value(snapshot.xmin))
    assert reading is not None and horizon is not None
    prev = previous.value if previous is not None and previous.kind == "update-key" else None
    return Watermark("update-key", updatekey.next_value(t.st.update_key, prev, reading, horizon))


def changed_rows(
    t: DeltaTable, mark: Watermark | None, snapshot: PassSnapshot
) -> sql.Composable | None:
    """The predicate selecting rows changed since ``mark``; None when every row must be read."""
    if mark is None:
        return None
    if mark.kind != t.kind:
        log.warning(
            "%s: the last pass tracked changes by %s, this one by %s: reading every row once",
            t.display,
            mark.kind,
            t.kind,
        )
        return None
    if t.kind == "xmin":
        since = xmin.since(mark.value)
        window = xmin.window(since, snapshot.xmax) if since is not None else None
        if window is None:
            log.warning(
                "%s: the last pass is too far back in transaction IDs (watermark %s, now %s) to compare "
                "32-bit xmin values: reading every row once",
                t.display,
                since,
                snapshot.xmax,
            )
            return None
        return xmin.predicate(window)
    bound = updatekey.bound(mark.value, t.st.update_key)
    if bound is None:
        log.info("%s: no usable update-key bound yet: reading every row", t.display)
        return None
    return updatekey.predicate(t.st, bound)


def apply_changes(
    src: psycopg.Connection[Any],
    dst: DestinationSession,
    job_id: str,
    t: DeltaTable,
    target: DestTable,
    columns: tuple[str, ...],
    binary: bool,
    where: sql.Composable | None,
    mark: Watermark,
    on_progress: Callable[[int, int], None] | None = None,
    then: Callable[[int], None] | None = None,
) -> int:
    """Upsert the rows matching ``where`` (None: all) and store ``mark``; returns the rows read.
    ``then(rows)``: more work for the same transaction (the pass's deletes), before the commit."""
    query = select_sql(t.st, [sql.Identifier(c) for c in columns], [] if where is None else [where])
    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT {})").format(
        query, sql.SQL("binary" if binary else "text")
    )
    copy_out_sql = copy_out.as_string(None).encode()
    with dst.transaction():
        result = dst.load(
            target, columns, binary, lambda sink: relay_copy(src, copy_out_sql, sink, on_progress),
            merge_key=t.st.key,
        )
        if then is not None:
            then(result.rows)
        dst.state.save_watermark(job_id, t.ident, mark)
    return result.rows


def describe_watermark(mark: Watermark) -> str:
    """A stored watermark in a few words (``replicator status``)."""
    value = mark.value
    if mark.kind == "xmin":
        return f"rows written by transaction {value.get('xmin')} and later"
    since = value.get("since")
    columns = value.get("columns", [])
    waiting = len(value.get("readings", []))
    bounds = (
        " or ".join(
            f"{c} >= {b}" if b is not None else f"{c} not null" for c, b in zip(columns, since, strict=False)
        )
        if since is not None
        else "every row"
    )
    return bounds + (f" ({waiting} reading(s) wait for open transactions)" if waiting else "")
