"""Logical slots versus switching logical replication off.

Restoring an adopted database's old parameter group sets ``rds.logical_replication = 0`` at its
next reboot. With logical slots still present, PostgreSQL then refuses to start ("logical
replication slot ... exists, but wal_level < logical"). So before restoring, the slots are named
and the restore refused, or, when the operator asked for it, the inactive ones are dropped (an
active one belongs to a running consumer: always refused).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.provision.adminsession import AccessError


@dataclass(frozen=True)
class LogicalSlot:
    name: str
    database: str
    active_pid: int | None

    def describe(self) -> str:
        state = f"active, pid {self.active_pid}" if self.active_pid else "inactive"
        return f"{self.name} (database {self.database}, {state})"


def logical_slots(conn: psycopg.Connection[Any]) -> list[LogicalSlot]:
    rows = conn.execute(
        "SELECT slot_name, database, active_pid FROM pg_replication_slots"
        " WHERE slot_type = 'logical' ORDER BY 1"
    ).fetchall()
    return [LogicalSlot(str(r[0]), str(r[1]), int(r[2]) if r[2] is not None else None) for r in rows]


def clear_for_logical_replication_off(
    conn: psycopg.Connection[Any],
    what: str,
    drop_inactive: bool,
    connect_to: Callable[[str], psycopg.Connection[Any]] | None = None,
) -> list[str]:
    """Refuse (naming the slots) unless no logical slot is left; returns the slots dropped.

    ``what`` says what is about to happen, for the message. ``connect_to`` opens an admin connection to
    another database: a logical slot is dropped from the database it was created in.
    """
    slots = logical_slots(conn)
    if not slots:
        return []
    inactive = [s for s in slots if s.active_pid is None]
    if drop_inactive and len(inactive) == len(slots):
        for slot in inactive:
            _drop(conn, slot, connect_to)
        return [s.name for s in inactive]
    listed = ", ".join(s.describe() for s in slots)
    if drop_inactive:
        fix = "stop the consumers of the active slots (or drop those slots), then run pulumi destroy again"
    else:
        fix = (
            "drop them (SELECT pg_drop_replication_slot('<name>'), once nothing consumes them), or "
            "set replicator:dropInactiveSlotsOnDestroy: true to have the inactive ones dropped; then run "
            "pulumi destroy again"
        )
    raise AccessError(
        f"refusing to {what}: that switches rds.logical_replication off at the next reboot, but logical "
        f"replication slots exist: {listed}; PostgreSQL does not start with logical slots and wal_level "
        f"below logical. To go on, {fix}"
    )


def _drop(
    conn: psycopg.Connection[Any],
    slot: LogicalSlot,
    connect_to: Callable[[str], psycopg.Connection[Any]] | None,
) -> None:
    statement = sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot.name))
    current = conn.execute("SELECT current_database()").fetchone()
    if current is not None and current[0] == slot.database:
        conn.execute(statement)
        return
    if connect_to is None:
        raise AccessError(f"slot {slot.name} belongs to database {slot.database}: drop it there")
    with connect_to(slot.database) as other:
        other.execute(statement)
