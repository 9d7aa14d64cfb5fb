"""Changed rows of one table: which to read, and applying them with the watermark, atomically.

A pass reads the rows past the table's stored watermark (see ``xmin`` and ``updatekey``) in
the pass's snapshot, relays them as ``COPY`` into a temporary table at the destination, merges
them by key (``INSERT ... ON CONFLICT DO UPDATE``) and stores the watermark for the next pass,
all in one destination transaction. Killed before the commit, nothing of the pass is there
and the old watermark reads the same rows again; after it, both are. Nothing is lost and,
since rows merge by key, nothing is duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator import state
from replicator.delta import updatekey, xmin
from replicator.delta.tables import DeltaTable
from replicator.destinations import postgres as dest
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
    previous: state.Watermark | None,
    snapshot: PassSnapshot,
    reading: updatekey.Reading | None,
    horizon: updatekey.Horizon | None,
) -> state.Watermark:
    """The watermark to store once this pass's rows of ``t`` are applied."""
    if t.kind == "xmin":
        return state.Watermark("xmin", xmin.watermark_value(snapshot.xmin))
    assert reading is not None and horizon is not None
    prev = previous.value if previous is not None and previous.kind == "update-key" else None
    return state.Watermark("update-key", updatekey.next_value(t.st.update_key, prev, reading, horizon))


def changed_rows(
    t: DeltaTable, mark: state.Watermark | None, snapshot: PassSnapshot
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
    dst: psycopg.Connection[Any],
    job_id: str,
    t: DeltaTable,
    target: dest.DestTable,
    columns: tuple[str, ...],
    binary: bool,
    where: sql.Composable | None,
    mark: state.Watermark,
    soft: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Upsert the rows matching ``where`` (None: all) and store ``mark``; returns the rows read."""
    query = select_sql(t.st, [sql.Identifier(c) for c in columns], [] if where is None else [where])
    copy_out = sql.SQL("COPY ({}) TO STDOUT (FORMAT {})").format(
        query, sql.SQL("binary" if binary else "text")
    )
    with dst.transaction():
        stage = dest.create_stage(dst, target, columns)
        result = relay_copy(
            src, copy_out.as_string(None).encode(), dst, dest.copy_in_sql(stage, columns, binary), on_progress
        )
        if result.rows:
            dest.merge_stage(dst, target, stage, columns, t.st.key, undelete=soft)
        state.save_watermark(dst, job_id, *t.ident, mark)
    return result.rows
