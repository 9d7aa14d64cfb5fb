"""Comparing while realtime streams: a difference the stream is about to resolve is not corruption.

The source is read in a snapshot taken at some WAL position ``L``; the destination as it is.
While realtime runs, the destination lags a little (rows the source has are not there yet) or,
having moved on, holds changes the source snapshot does not show. So, when a slot of this job
is streaming:

1. before the destination is read, its checkpoints must have passed ``L`` (what the source
   shows has been applied);
2. a range that still differs is compared again in a new source snapshot at ``L'``, once the
   checkpoints have passed ``L'``; a row is reported only if it differs every time, and a row
   whose source values changed in between is "still changing", not corrupt. Up to
   ``RECHECKS`` times, within ``timeout_s``.

Slots that are not streaming (no realtime running) leave the destination as it is: its
differences are real, reported at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.destinations.base import DestinationSession
from replicator.lsn import Lsn
from replicator.verify.compare import Found

log = logging.getLogger(__name__)

RECHECKS = 3
POLL_S = 0.2


@dataclass
class Live:
    """This job's slots that are streaming now, and where each one's checkpoint stands."""

    job: str
    slots: list[str]

    def __bool__(self) -> bool:
        return bool(self.slots)


def streaming(src: psycopg.Connection[Any], control: DestinationSession, job: str, slots: list[str]) -> Live:
    """The configured slots that exist, are in use, and have a checkpoint of ``job`` here."""
    if not slots or not control.state.present():
        return Live(job, [])
    active = {
        r[0]
        for r in src.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s) AND active", (slots,)
        ).fetchall()
    }
    return Live(job, [s for s in slots if s in active and control.state.slot_checkpoint(job, s) is not None])


def insert_position(src: psycopg.Connection[Any]) -> Lsn:
    """Every transaction committed before this call ends at or before the position returned."""
    row = src.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return Lsn.parse(row[0])


def wait_until_applied(control: DestinationSession, live: Live, lsn: Lsn, timeout_s: float) -> dict[str, Lsn]:
    """Wait until every streaming slot's checkpoint is at or past ``lsn``; the checkpoints that are
    not, if the time ran out (empty when all are)."""
    deadline = time.monotonic() + timeout_s
    while True:
        behind: dict[str, Lsn] = {}
        for slot in live.slots:
            checkpoint = control.state.slot_checkpoint(live.job, slot)
            if checkpoint is None or checkpoint < lsn:
                behind[slot] = checkpoint or Lsn(0)
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(POLL_S)


def narrow(before: Found, again: Found) -> int:
    """Keep in ``before`` only what differs in ``again`` too (taking ``again``'s view); returns the
    number of keys dropped because their source values changed in between (still changing)."""
    changing = 0
    kept = {}
    for key, (kind, s_val, d_val) in again.differences.items():
        if key not in before.differences:
            continue
        earlier = before.differences[key]
        if before.chunk is not None and earlier[1] != s_val:
            changing += 1  # the source row itself moved on: in flight, not corrupt
            continue
        kept[key] = (kind, s_val, d_val)
    before.differences = kept
    before.source_rows, before.dest_rows = again.source_rows, again.dest_rows
    return changing
