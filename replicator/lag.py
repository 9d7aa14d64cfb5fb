"""Apply lag: how far a slot's destination is behind its source. One definition, used by the live
metrics (``replicator.metrics``), the progress line and ``replicator status``.

Two figures, because each catches what the other misses:

- **bytes**: the source's current WAL position minus the slot's checkpoint (the position up to
  which the destination holds everything): the WAL the pipeline still has to go through. It
  grows when the pipeline stalls, whether or not the source writes to replicated tables, and it
  counts WAL the slot will decode and skip (other tables, other databases), so it is rarely
  exactly 0 on a busy server.
- **seconds**: ``0`` when the stream has no backlog; otherwise *now minus ``applied_through``*,
  the instant up to which the destination holds everything the source committed: the source
  commit time of the last transaction applied, or the last moment the pipeline was caught up,
  whichever is later. It is how stale the destination may be (an upper bound), the idiom of
  PostgreSQL's ``now() - pg_last_xact_replay_timestamp()`` on a standby. It stays 0 while the
  source is idle and the pipeline keeps up, does not jump to the age of the last transaction
  when a new one arrives after a quiet hour, and grows one second per second while the
  pipeline is stuck: what an alarm should catch.

"No backlog" is known exactly by a running pipeline: its last read found nothing more, and the
destination has committed everything read. ``status``, from outside, knows only positions: no
backlog there means bytes == 0, and it reads ``applied_through`` from the record the pipeline
writes every few seconds (``StateStore.save_slot_lag``), so on a healthy slot it shows a few seconds
at most, and on a stopped one the time since it stopped keeping up. ``applied_through`` is the
source's clock (commit times) or the replicator's (caught-up moments): keep clocks in sync
(NTP), or the seconds are off by the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from replicator.lsn import Lsn


@dataclass(frozen=True)
class ApplyLag:
    seconds: float | None  # None: unknown (a backlog, and no transaction applied yet to date it)
    bytes: int

    def describe(self) -> str:
        """``12.3 s, 4.5 MB`` (for the progress line and ``status``)."""
        seconds = "unknown" if self.seconds is None else f"{self.seconds:,.1f} s"
        return f"{seconds}, {size(self.bytes)}"


def apply_lag(
    *,
    source_lsn: Lsn,
    applied_lsn: Lsn,
    applied_through: datetime | None,
    now: datetime,
    caught_up: bool | None = None,
) -> ApplyLag:
    """The apply lag of a slot (see the module docstring for the definition).

    ``source_lsn``: the source's current WAL position; ``applied_lsn``: the slot's checkpoint;
    ``applied_through``: commit time of the last applied source transaction (or the instant the
    pipeline was last caught up); ``caught_up``: whether the stream has no backlog, as the running
    pipeline knows it (None, from outside: when nothing is behind).
    """
    behind = max(0, int(source_lsn) - int(applied_lsn))
    if caught_up is None:
        caught_up = behind == 0
    if caught_up:
        return ApplyLag(0.0, behind)
    if applied_through is None:
        return ApplyLag(None, behind)
    return ApplyLag(max(0.0, (now - applied_through).total_seconds()), behind)


def seconds_or_nan(lag: ApplyLag) -> float:
    return math.nan if lag.seconds is None else lag.seconds


@dataclass(frozen=True)
class SourceSlot:
    """What the source says about one slot, for the lag and the retained WAL."""

    slot: str
    source_lsn: Lsn  # the source's current WAL position (on a standby: last replayed)
    retained_bytes: int | None  # WAL the slot holds back (None: it reserves none yet)
    confirmed: Lsn | None  # confirmed_flush_lsn
    active: bool
    wal_status: str | None
    now: datetime  # the source's clock when asked


# On a standby (a replica decoded from, PostgreSQL 16+) there is no current WAL insert position.
_POSITIONS = """
SELECT s.slot_name, w.lsn::text, pg_catalog.pg_wal_lsn_diff(w.lsn, s.restart_lsn)::int8,
       s.confirmed_flush_lsn::text, s.active, s.wal_status, pg_catalog.clock_timestamp()
FROM pg_catalog.pg_replication_slots s,
     LATERAL (SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                          ELSE pg_catalog.pg_current_wal_lsn() END AS lsn) w
WHERE s.slot_type = 'logical' AND (%(slots)s::text[] IS NULL OR s.slot_name = ANY (%(slots)s::text[]))
ORDER BY s.slot_name
"""


def read_source_slots(conn: psycopg.Connection[Any], slots: list[str] | None = None) -> dict[str, SourceSlot]:
    """The source's view of ``slots`` (all logical slots of the server when None); one query."""
    out = {}
    for name, lsn, retained, confirmed, active, wal_status, now in conn.execute(
        _POSITIONS, {"slots": slots}
    ).fetchall():
        out[name] = SourceSlot(
            name, Lsn.parse(lsn), retained, Lsn.parse(confirmed) if confirmed else None, bool(active),
            wal_status, now,
        )  # fmt: skip
    return out


def size(n: int) -> str:
    """A byte count the way people read it (``4.5 MB``)."""
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"
