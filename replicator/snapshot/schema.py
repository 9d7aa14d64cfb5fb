"""A snapshot's schema work around the load: what the tables have besides rows.

- Before: the source's objects are read in the snapshot (``tableobjects``) and trimmed to what
  the destination can have; what is left out is said once, by name. A table that will be
  emptied may not be held by a foreign key (``clear_the_way``): keys between the tables of
  this replication are dropped, to be made again after the load; any other one is refused
  before anything is touched.
- With each table's last chunk (``runner._finalize``): its key, indexes and CHECK, UNIQUE and
  EXCLUDE constraints, in the worker that loaded it, so tables build in parallel.
- After every table (``finish``): foreign keys, added ``NOT VALID`` one by one (no scan, brief
  locks) then validated in parallel, one worker per referencing table (validation locks only
  that table against schema changes); and sequences moved to at least the source's values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession, DestTable, ForeignKeyAt, TableName, TableState
from replicator.errors import DestinationError
from replicator.filters import SelectedTable
from replicator.job import Job
from replicator.objectplan import PlannedObjects, plan_objects
from replicator.tableobjects import read_objects, sequence_values

log = logging.getLogger(__name__)

APP = "replicator/snapshot"


def plan(
    job: Job, src: psycopg.Connection[Any], selected: list[SelectedTable], report: Iterable[TableName]
) -> dict[TableName, PlannedObjects]:
    """The objects each selected table gets at the destination (read in ``src``'s transaction);
    notes about those left out are logged for the ``report`` tables."""
    planned = plan_objects(
        read_objects(src, selected), selected, soft_deletes=job.destination.value.deletes == "soft"
    )
    for key in report:
        for note in planned[key].notes if key in planned else ():
            log.warning("%s", note)
    return planned


def refuse_triggers(control: DestinationSession, tables: list[SelectedTable]) -> None:
    """Refuse, before anything is written, to load tables whose triggers would fire on the copy
    because the destination user may not switch them off (``session_replication_role``)."""
    if control.replica_role():
        return
    found = [t for t in control.triggers_on([(st.table.schema, st.table.name) for st in tables])
             if ": trigger " in t]  # fmt: skip
    if found:
        raise DestinationError(
            f"the destination tables have triggers that would fire on every copied row ({', '.join(found)}), "
            f"and the destination user may not switch them off for its sessions "
            f"(session_replication_role = replica); fix: {control.replica_role_fix()} (or drop the triggers)"
        )


def clear_the_way(
    job_id: str,
    control: DestinationSession,
    emptied: list[DestTable],
    planned: dict[TableName, PlannedObjects],
    ours: set[TableName],
) -> None:
    """Before ``emptied`` are emptied and reloaded: drop the foreign keys that touch them and that
    the source defines on a replicated table (``finish`` makes them again once both ends are
    loaded), and refuse any other foreign key that would stop the TRUNCATE. Tables an earlier
    run created (``ours``) also lose their indexes and constraints, rebuilt after the load
    (faster than keeping them up to date row by row). Call in the transaction that empties them."""
    if not emptied:
        return
    gone = {t.key for t in emptied}
    defined = {(key, fk.name) for key, p in planned.items() for fk in p.objects.foreign_keys}
    blocking = []
    for fk in control.foreign_keys_touching(gone):
        if (fk.table, fk.name) in defined:
            log.info(
                "%s: foreign key %s dropped for the reload (made again after it)", ".".join(fk.table), fk.name
            )
            control.drop_foreign_key(fk)
            control.state.remember_dropped_foreign_key(job_id, fk.table, fk.name)
        elif fk.references in gone and fk.table not in gone:
            blocking.append(fk)
    if blocking:
        raise DestinationError(
            "the destination cannot empty the tables to reload; nothing was changed:\n  "
            + "\n  ".join(_blocking(fk) for fk in blocking)
        )
    for table in emptied:
        if table.key in ours and table.key in planned:
            control.drop_objects(table.key, planned[table.key].objects)


def _blocking(fk: ForeignKeyAt) -> str:
    table, references = ".".join(fk.table), ".".join(fk.references)
    return (
        f"{table} has foreign key {fk.name} referencing {references}, which this run empties; fix: "
        f"ALTER TABLE {table} DROP CONSTRAINT {fk.name}; (or replicate {table} too)"
    )


def finish(
    job: Job,
    control: DestinationSession,
    src: psycopg.Connection[Any],
    selected: list[SelectedTable],
    planned: dict[TableName, PlannedObjects],
    threads: int,
) -> None:
    """Foreign keys between loaded tables, validated in parallel; sequences at the source's values."""
    states = control.state.load_snapshot(job.job_id)
    loaded = {key for key, ts in states.items() if ts.done}
    ours = {key for key, ts in states.items() if _created_by_us(ts)}
    dropped = control.state.dropped_foreign_keys(job.job_id)  # by a reload, from any table
    todo: dict[TableName, list[str]] = {}
    for st in selected:
        key = (st.table.schema, st.table.name)
        fks = (
            [
                fk
                for fk in planned[key].objects.foreign_keys
                if (key in ours or (key, fk.name) in dropped) and key in loaded and fk.references in loaded
            ]
            if key in planned
            else []
        )
        if not fks:
            continue
        with control.transaction():
            for note in control.add_foreign_keys(key, fks):
                log.warning("%s", note)
            control.state.forget_dropped_foreign_keys(job.job_id, key, [fk.name for fk in fks])
        todo[key] = [fk.name for fk in fks if fk.validated]
    _validate_all(job, todo, threads)
    sync_sequences(control, src, planned.values())


def _created_by_us(ts: TableState) -> bool:
    return ts.created_by_us


def _validate_all(job: Job, todo: dict[TableName, list[str]], threads: int) -> None:
    """Validate each table's foreign keys; tables in parallel (each its own session)."""
    work = [(table, names) for table, names in todo.items() if names]
    if not work:
        return
    destination = open_destination(job.destination.value)

    def validate(item: tuple[TableName, list[str]]) -> list[str]:
        table, names = item
        with destination.open_session(APP) as session:
            return session.validate_constraints(table, names)

    with ThreadPoolExecutor(
        max_workers=max(1, min(threads, len(work))), thread_name_prefix="validate"
    ) as pool:
        for notes in pool.map(validate, work):
            for note in notes:
                log.warning("%s", note)


def sync_sequences(
    control: DestinationSession, src: psycopg.Connection[Any], planned: Iterable[PlannedObjects]
) -> list[TableName]:
    """Destination sequences moved forward to the source's current values; those moved."""
    names = sorted({s.qualified for p in planned for s in p.objects.all_sequences})
    if not names:
        return []
    values = sequence_values(src, names)
    unreadable = [".".join(v.name) for v in values if not v.readable]
    if unreadable:
        log.warning(
            "cannot read sequence value(s) of %s at the source (needs SELECT or USAGE on them): the "
            "destination's are left as they are; `replicator check` prints the grant",
            ", ".join(unreadable),
        )
    return control.set_sequences(values)
