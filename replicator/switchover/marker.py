"""Has the destination applied everything the source committed before now? A marker says.

Waiting for the server's current WAL position would never end: writes to other databases or to
tables we do not replicate move it, and never reach our checkpoint (it advances with what the
slot delivers). So the marker is a transaction of our own that does travel through every slot:

- ``pg_logical_emit_message(true, ...)``: a transactional message in the WAL, named for this
  switchover (decoders that read logical messages see it);
- the heartbeat row updated in the same transaction (the heartbeat table is in every slot's
  publication): what the slot delivers, so the checkpoint moves past it;
- ``pg_current_wal_insert_lsn()`` read in it, before its commit: every transaction that
  committed before it ends at or before that position.

Once each slot's checkpoint at the destination is at or past that position, the destination
holds everything committed before the marker. Without a heartbeat table (``heartbeat.enable:
false``) the checkpoint moves only when the stream records positions it confirms while idle.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.config.extractor import Heartbeat
from replicator.destinations.base import DestinationSession
from replicator.lsn import Lsn
from replicator.source.heartbeat import HeartbeatWriter, heartbeat_table

POLL_S = 0.1
MESSAGE_PREFIX = "replicator.switchover"


@dataclass(frozen=True)
class Marker:
    lsn: Lsn
    token: str
    carried_by_heartbeat: bool


def write_marker(src: psycopg.Connection[Any], heartbeat: Heartbeat) -> Marker:
    """Write the marker transaction at the source (read-write even in a read-only database)."""
    token = uuid.uuid4().hex
    table = heartbeat_table(heartbeat)
    with src.transaction():
        src.execute("SET TRANSACTION READ WRITE")
        src.execute("SELECT pg_logical_emit_message(true, %s, %s)", (MESSAGE_PREFIX, token))
        carried = heartbeat.enable and _exists(src, table.identifier().as_string(src))
        if carried:
            HeartbeatWriter(src, heartbeat).beat()
        row = src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return Marker(Lsn.parse(row[0]), token, carried)


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
    return bool(row and row[0] is not None)


def wait_for(
    control: DestinationSession, job: str, slots: list[str], marker: Marker, timeout_s: float
) -> dict[str, Lsn | None]:
    """Wait until every slot's checkpoint is at or past the marker; the checkpoints still behind
    when ``timeout_s`` ran out (empty: all passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        behind: dict[str, Lsn | None] = {}
        for slot in slots:
            checkpoint = control.state.slot_checkpoint(job, slot)
            if checkpoint is None or checkpoint < marker.lsn:
                behind[slot] = checkpoint
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(POLL_S)


def checkpoints(control: DestinationSession, job: str, slots: list[str]) -> dict[str, Lsn | None]:
    return {slot: control.state.slot_checkpoint(job, slot) for slot in slots}
