"""Where each slot's stream may start, checked before the first write of a realtime or full run.

Three facts decide it: the slot's confirmed position at the source (the server never sends
anything before it), our checkpoint in the destination (everything before it is applied), and
the configured ``start-lsn`` (used only when there is no checkpoint yet).

- **A lost slot** (gone at the source while the destination holds a checkpoint for it: dropped
  by someone, removed by ``max_slot_wal_keep_size``, or a failover to a server that never had
  it): the changes since the checkpoint can no longer be read. ``realtime`` refuses and names
  the fix; ``full`` recovers by itself, copying the slot's tables again in the snapshot of a
  new slot (which also removes rows deleted meanwhile) and streaming from there.
- **A slot ahead of the checkpoint**: something else confirmed changes we never applied (another
  consumer, ``pg_replication_slot_advance``). Positions we confirm are recorded in the
  checkpoint first, so this never happens on a normal restart: both modes refuse.
- **A start-lsn outside [the slot's confirmed position, the source's current WAL end]**: before
  the slot's position the server would silently start later; past the WAL end the slot would be
  confirmed up to a position that does not exist yet, skipping everything until then. Refused,
  with both bounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from replicator.destinations.base import StateStore
from replicator.errors import ConfigError, SourceError
from replicator.lsn import Lsn
from replicator.source.slots import get_slot

log = logging.getLogger(__name__)

Mode = Literal["realtime", "full"]


class ReadOnlyNode(SourceError):
    """The source is in recovery (a standby, an Aurora reader): a failover in progress, usually.
    Transient: the writer is waited for, within max-retries x retry-wait-duration-ms."""

    transient = True


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def read_only_node_message(where: str) -> str:
    # "the source is a read-only node" is what retry.on_read_only_node recognises.
    return (
        f"the source is a read-only node ({where} is in recovery: a standby or a reader, e.g. during a "
        f"failover); waiting for it to become the writer. If it stays one, point the source config at "
        f"the writer (the cluster endpoint, not a reader endpoint)"
    )


class LostSlot(SourceError):
    """The slot named in the config is gone while the destination holds a checkpoint for it."""

    transient = False


@dataclass(frozen=True)
class SlotStart:
    """One slot's facts at start: its confirmed position (None: no such slot) and our checkpoint."""

    slot: str
    confirmed: Lsn | None
    exists: bool
    checkpoint: Lsn | None

    @property
    def lost(self) -> bool:
        return not self.exists and self.checkpoint is not None


def lost_slot_message(slot: str, checkpoint: Lsn, where: str = "the source") -> str:
    return (
        f"replication slot {slot!r} no longer exists on {where}, but the destination holds a checkpoint "
        f"for it at {checkpoint}: the changes made since then can no longer be read (the slot was dropped, "
        f"lost its WAL, or a failover reached a server without it). Fix: run `replicator run full` with the "
        f"same configs: it copies this slot's tables again (removing rows deleted meanwhile) and streams "
        f"from a new slot"
    )


class SlotAhead(SourceError):
    """The slot was confirmed past our checkpoint: changes were consumed without being applied."""

    transient = False


def slot_ahead_message(slot: str, confirmed: Lsn, checkpoint: Lsn) -> str:
    drop = sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(slot)).as_string(None)
    return (
        f"replication slot {slot!r} was confirmed up to {confirmed} by something else, past the "
        f"destination's checkpoint {checkpoint}: the changes in between were consumed without being applied "
        f"here. Stop whatever else reads this slot; then drop it ({drop}) and run `replicator run full`, "
        f"which copies its tables again and streams from a new slot"
    )


def check_start_positions(
    src: psycopg.Connection[Any],
    state: StateStore | None,
    job_id: str,
    slots: list[str],
    mode: Mode,
    start_lsn: Lsn | None,
    start_lsn_where: str,
) -> dict[str, SlotStart]:
    """Each slot's start facts; raises (nothing written yet) when a stream could skip changes.

    ``state``: the destination's state store, or None when it holds no state yet.
    """
    starts: dict[str, SlotStart] = {}
    for slot in slots:
        info = get_slot(src, slot)
        checkpoint = state.slot_checkpoint(job_id, slot) if state is not None else None
        start = SlotStart(slot, info.confirmed_flush_lsn if info else None, info is not None, checkpoint)
        starts[slot] = start
        if start.lost:
            assert checkpoint is not None
            if mode == "realtime":
                raise LostSlot(lost_slot_message(slot, checkpoint))
            log.warning(
                "replication slot %s no longer exists, but the destination holds a checkpoint for it at %s: "
                "the changes since then can no longer be read; copying the slot's tables again in the "
                "snapshot of a new slot, then streaming from there",
                slot, checkpoint,
            )
            continue
        if checkpoint is not None and start.confirmed is not None and start.confirmed > checkpoint:
            raise SlotAhead(slot_ahead_message(slot, start.confirmed, checkpoint))
        if checkpoint is None and start_lsn is not None:
            _check_start_lsn(src, slot, start, start_lsn, start_lsn_where)
    return starts


def _check_start_lsn(
    src: psycopg.Connection[Any], slot: str, start: SlotStart, start_lsn: Lsn, where: str
) -> None:
    row = src.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    wal_end = Lsn.parse(row[0])
    if not start.exists:
        raise ConfigError(
            f"{where}: start-lsn: {start_lsn} given, but replication slot {slot!r} does not exist yet: a new "
            f"slot starts at the source's current WAL position ({wal_end}) and cannot go back. Remove "
            f"start-position, or create the slot first and give a position between its confirmed position "
            f"and the WAL end"
        )
    lower = start.confirmed or Lsn(0)
    if lower <= start_lsn <= wal_end:
        return
    side = (
        "before the slot's confirmed position: the server no longer has those changes and would start "
        f"at {lower} without saying so"
        if start_lsn < lower
        else "past the source's current WAL end: the slot would be confirmed up to a position that does "
        "not exist yet, and every change until then skipped"
    )
    raise ConfigError(
        f"{where}: start-lsn: {start_lsn} is outside what slot {slot!r} can stream, "
        f"[{lower} (its confirmed position), {wal_end} (the source's current WAL end)]: it is {side}. "
        f"Give a position in that range, or remove start-position to start at the slot's position"
    )
