"""Preparing a realtime (or full) run: which tables go through which slot, publications, slots,
heartbeat, destination tables, and where each slot's stream resumes.

Tables are spread over the configured slots by a stable hash of their name, so a table stays
on its slot from run to run (as long as the list of slots does not change). With pgoutput each
slot has its own publication: the configured name for a single slot, ``NAME_SLOT`` for several.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.catalog import Catalog, load_catalog
from replicator.config import ConfigFile, ConnectionConfig
from replicator.destinations.base import DestinationSession, StateStore, StreamTable, Target
from replicator.errors import ConfigError, DestinationError, SourceError
from replicator.filters import SelectedTable, select_tables
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.objectplan import PlannedObjects
from replicator.realtime.positions import SlotAhead, slot_ahead_message
from replicator.source import rowfilter
from replicator.source.heartbeat import ensure_heartbeat_table
from replicator.source.publication import (
    INSERT_ONLY,
    PublishedTable,
    ensure_empty_publication,
    ensure_publication,
    insert_only_publication,
    publication_exists,
)
from replicator.source.rowfilter import RowFilter
from replicator.source.slots import get_slot

log = logging.getLogger(__name__)

@dataclass
class SlotPlan:
    slot: str
    plugin: str
    publication: str | None  # pgoutput only
    tables: list[SelectedTable] = field(default_factory=list)  # streamed (and, in full mode, snapshotted)
    # UNLOGGED tables: no WAL, so never in a publication; full mode snapshots them once.
    snapshot_only: list[SelectedTable] = field(default_factory=list)
    # Tables dropped at the source after the slot's checkpoint, still fed until the stream reaches
    # their DROP (schema changes followed: source oid -> where they go; see ddlsetup.py).
    ghosts: dict[int, StreamTable] = field(default_factory=dict)

    @property
    def table_keys(self) -> set[tuple[str, str]]:
        """The tables a full run snapshots for this slot (and the ghosts its stream still feeds)."""
        return {(t.table.schema, t.table.name) for t in [*self.tables, *self.snapshot_only]} | {
            g.table for g in self.ghosts.values()
        }

    @property
    def identified(self) -> list[SelectedTable]:
        """Streamed tables whose updates and deletes the source can log (a replica identity)."""
        return [t for t in self.tables if t.table.identity_gap is None]

    @property
    def insert_only(self) -> list[SelectedTable]:
        """Streamed tables without a replica identity: published for inserts and truncates only."""
        return [t for t in self.tables if t.table.identity_gap is not None]

    @property
    def insert_only_publication(self) -> str | None:
        """pgoutput: the publication of ``insert_only`` (streamed on the same slot), if any."""
        if self.publication is None or not self.insert_only:
            return None
        return insert_only_publication(self.publication)

    def publications(self, heartbeat: bool) -> list[str]:
        """The publications the slot's pgoutput stream reads (those that exist)."""
        if self.publication is None:
            return []
        names = [self.publication] if self.identified or heartbeat or not self.insert_only else []
        extra = self.insert_only_publication
        return [*names, extra] if extra else names


def plan_slots(
    source: ConfigFile[ConnectionConfig], tables: list[SelectedTable], sticky: dict[int, str] | None = None
) -> list[SlotPlan]:
    """``sticky``: source table oid -> the slot that streams it already (a table a schema change
    brought to a slot, or renamed since the hash placed it, stays there)."""
    cfg = source.value
    if not cfg.slots:
        raise ConfigError(
            f"{source.where()}: replication-slots: required for realtime and full modes, e.g.\n"
            "  replication-slots:\n    replicator_slot: [pgoutput]"
        )
    if "pgoutput" in cfg.slots.values() and not cfg.publication:
        raise ConfigError(
            f"{source.where()}: publication: required for pgoutput slots (the publication names the tables "
            "the "
            f"slot decodes; it is created for the filtered tables if missing), e.g. publication: "
            "replicator_pub"
        )
    base = cfg.publication or ""
    pgoutput_slots = [n for n, plugin in cfg.slots.items() if plugin == "pgoutput"]
    plans = [
        SlotPlan(
            slot=name,
            plugin=plugin,
            publication=(base if len(pgoutput_slots) == 1 else f"{base}_{name}")
            if plugin == "pgoutput"
            else None,
        )
        for name, plugin in cfg.slots.items()
    ]
    by_name = {p.slot: i for i, p in enumerate(plans)}
    for t in tables:
        index = zlib.crc32(f"{t.table.schema}.{t.table.name}".encode()) % len(plans)
        index = by_name.get((sticky or {}).get(t.table.oid, ""), index)
        (plans[index].snapshot_only if t.table.unlogged else plans[index].tables).append(t)
    return plans


def unlogged_warnings(tables: list[SelectedTable], mode: str) -> list[str]:
    """Tables logical replication cannot carry: UNLOGGED ones write no WAL, so no slot sees their changes."""
    done = "copied once by the snapshot, then not kept in sync" if mode == "full" else "not replicated"
    return [
        f"{t.display} is UNLOGGED: its changes are written to no WAL, so a replication slot never sees them; "
        f"it is left out of the publication and {done}. To stream it: ALTER TABLE {t.display} SET LOGGED; "
        f"to keep it in sync without a slot, use delta-snapshot"
        for t in tables if t.table.unlogged
    ]


def select_realtime_tables(
    job: Job, conn: psycopg.Connection[Any], with_snapshot: bool = False
) -> tuple[Catalog, list[SelectedTable]]:
    """The tables to stream, with the keys the ``realtime`` section gives them (checked against
    the ``snapshot`` section's: see ``check_keys_agree``). ``with_snapshot``: the `full` mode."""
    catalog = load_catalog(conn)
    selected = select_tables(catalog, job.filter, job.extractor, job.source.value.database, "realtime")
    snapshot = select_tables(catalog, job.filter, job.extractor, job.source.value.database, "snapshot")
    check_keys_agree(selected, snapshot, with_snapshot)
    hb = job.extractor.value.realtime.heartbeat
    heartbeat = (hb.schema_name or "public", hb.table_name)
    if job.extractor.value.realtime.threads > 1:
        log.warning(
            "%s: realtime.threads is %d, but realtime applies with one thread per replication slot: "
            "for parallel apply, list several slots under replication-slots in the source config",
            job.extractor.where("realtime", "threads"), job.extractor.value.realtime.threads,
        )
    return catalog, [t for t in selected if (t.table.schema, t.table.name) != heartbeat]


def check_keys_agree(
    realtime: list[SelectedTable], snapshot: list[SelectedTable], with_snapshot: bool
) -> None:
    """Realtime applies changes by the key the destination table was built with, so a
    ``row-identifier-key`` must say the same in both sections: the snapshot section's builds the
    destination key, the realtime section's is what realtime matches rows by.

    A key under ``snapshot`` only is refused (realtime once took its keys from there, silently);
    a key under ``realtime`` only is refused in the `full` mode, whose snapshot would build none.
    """
    by_table = {(t.table.schema, t.table.name): t for t in snapshot}
    for rt in realtime:
        st = by_table.get((rt.table.schema, rt.table.name))
        if st is None:
            continue
        rt_key = rt.key if rt.key_from == "row-identifier-key" else None
        st_key = st.key if st.key_from == "row-identifier-key" else None
        if rt_key == st_key or (st_key is None and not with_snapshot):
            continue
        if rt_key is None:
            assert st_key is not None
            raise ConfigError(
                f"{st.key_where}: row-identifier-key: {rt.display}'s key ({', '.join(st_key)}) is set under "
                f"snapshot but not under realtime, which applies changes by key: add it under realtime: "
                f"per-table-config too"
            )
        raise ConfigError(
            f"{rt.key_where}: row-identifier-key: {rt.display}'s key ({', '.join(rt_key)}) under realtime "
            + (
                f"differs from its key ({', '.join(st_key)}) under snapshot at {st.key_where}"
                if st_key
                else "is not set under snapshot, so the snapshot of the full mode would build no key"
            )
            + "; set the same row-identifier-key in both sections"
        )


def identity_warnings(
    tables: list[SelectedTable], changed: set[tuple[str, str]] | None = None
) -> list[tuple[int, str]]:
    """(log level, message) for tables whose updates and deletes the source cannot log.

    They are published for inserts and truncates only (so the source's own UPDATEs keep
    working): a warning when the table is updated or deleted from (``changed``: per the source's
    statistics), a note when it looks insert-only (logs, pgbench_history), which keeps
    replicating as it is.
    """
    out = []
    for t in tables:
        gap = t.table.identity_gap
        if gap is None or t.table.unlogged:
            continue
        key = (t.table.schema, t.table.name)
        level = logging.WARNING if changed is None or key in changed else logging.INFO
        out.append((
            level,
            f"{t.display}: {gap}: replicated for INSERT and TRUNCATE only; its UPDATEs and DELETEs are not "
            f"replicated (the source cannot log which row they touch). Fix: ALTER TABLE {t.display} REPLICA "
            f"IDENTITY FULL; or add a primary key",
        ))
    return out


def tables_changed_in_place(
    conn: psycopg.Connection[Any], tables: list[SelectedTable]
) -> set[tuple[str, str]]:
    """The tables the source's statistics have seen updated or deleted from (not insert-only)."""
    oids = [t.table.oid for t in tables if t.table.identity_gap is not None]
    if not oids:
        return set()
    rows = conn.execute(
        "SELECT schemaname, relname FROM pg_stat_user_tables WHERE relid = ANY(%s) "
        "AND n_tup_upd + n_tup_del + n_tup_hot_upd > 0",
        (oids,),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def decide_row_filters(
    conn: psycopg.Connection[Any], plans: list[SlotPlan]
) -> dict[tuple[str, str], RowFilter]:
    """How each table's filter ``conditions`` are applied while streaming (``source/rowfilter.py``):
    a publication row filter where that is safe, else at the destination. Writes nothing."""
    decided = {}
    for plan in plans:
        insert_only = {(t.table.schema, t.table.name) for t in plan.insert_only}
        for t in plan.tables:
            key = (t.table.schema, t.table.name)
            rf = rowfilter.decide(conn, plan.plugin, t, key in insert_only)
            if rf is None:
                continue
            decided[key] = rf
            if rf.native:
                log.info("%s: conditions applied by the publication (row filter WHERE %s)",
                         t.display, rf.printed)
            else:
                log.info("%s: conditions evaluated at the destination while streaming: %s",
                         t.display, rf.reason)
    return decided


def prepare_source(
    job: Job,
    conn: psycopg.Connection[Any],
    plans: list[SlotPlan],
    row_filters: dict[tuple[str, str], RowFilter] | None = None,
) -> PublishedTable | None:
    """Heartbeat table and publications (created or validated)."""
    filters = row_filters or {}
    hb_cfg = job.extractor.value.realtime.heartbeat
    heartbeat = ensure_heartbeat_table(conn, hb_cfg) if hb_cfg.enable else None
    for plan in plans:
        if plan.publication is None:
            continue
        published = [_published(t, filters) for t in plan.identified]
        keyless = [_published(t, filters) for t in plan.insert_only]
        if heartbeat is not None:
            published.append(heartbeat)
        created = bool(published) and ensure_publication(conn, plan.publication, published, not_here=keyless)
        if keyless:
            assert plan.insert_only_publication is not None
            ensure_publication(conn, plan.insert_only_publication, keyless, publish=INSERT_ONLY)
        elif created:
            # Made with the main one even while empty: pgoutput (before PostgreSQL 18) reads
            # publications as of each change it decodes, so one created after the slot's position
            # would make the stream fail on every change before it. A keyless table that joins later
            # is then added to a publication the slot can read.
            ensure_empty_publication(conn, insert_only_publication(plan.publication), INSERT_ONLY)
    return heartbeat


def refuse_unreadable_publications(
    conn: psycopg.Connection[Any], plans: list[SlotPlan], checkpoints: dict[str, Lsn | None]
) -> None:
    """Before anything is written: a job that has streamed (a checkpoint) from a slot that exists,
    but has no insert-only publication (made before that was created with the main one), cannot
    create it now (see ``prepare_source``); say why and what to do instead. A slot that has not
    been streamed from yet (made by hand before the first run) is not refused."""
    for plan in plans:
        name = plan.insert_only_publication
        if name is None or checkpoints.get(plan.slot) is None or get_slot(conn, plan.slot) is None:
            continue
        if publication_exists(conn, name):
            continue
        tables = ", ".join(t.display for t in plan.insert_only)
        raise SourceError(
            f"{tables}: no replica identity, so its inserts would be published in {name!r}, which does not "
            f"exist; slot {plan.slot!r} is older than it would be, and pgoutput cannot read a publication "
            f"created after a slot's position (every run would fail on the changes before it). Fix one of: "
            f"ALTER TABLE ... REPLICA IDENTITY FULL (or add a primary key); leave the table out with a "
            f"filter; or drop the slot (SELECT pg_drop_replication_slot('{plan.slot}')) and run `full`, "
            f"which copies the tables again and creates both publications before the new slot"
        )


def _published(t: SelectedTable, filters: dict[tuple[str, str], RowFilter]) -> PublishedTable:
    rf = filters.get((t.table.schema, t.table.name))
    if rf is None or not rf.native:
        return PublishedTable(t.table.schema, t.table.name, _published_columns(t))
    return PublishedTable(
        t.table.schema, t.table.name, _published_columns(t),
        row_filter=rf.condition, row_filter_printed=rf.printed,
    )


def _published_columns(t: SelectedTable) -> tuple[str, ...] | None:
    if len(t.columns) == len(t.table.columns):
        return None
    return tuple(c.name for c in t.columns if not c.is_generated)


def check_destination_conditions(
    dst: DestinationSession, tables: list[SelectedTable], row_filters: dict[tuple[str, str], RowFilter]
) -> None:
    """Before anything is written: conditions the destination will evaluate must be ones it can
    (a table not there yet is stood in for by the source's columns; prepare_destination checks
    again once it exists)."""
    for st in tables:
        rf = row_filters.get((st.table.schema, st.table.name))
        if rf is not None and not rf.native:
            columns = [(c.name, c.type_sql) for c in st.columns]
            dst.verify_condition((st.table.schema, st.table.name), rf.condition, st.condition_where, columns)


def prepare_destination(
    dst: DestinationSession,
    catalog: Catalog,
    tables: list[SelectedTable],
    planned: dict[tuple[str, str], PlannedObjects] | None = None,
    row_filters: dict[tuple[str, str], RowFilter] | None = None,
) -> dict[tuple[str, str], Target]:
    """Make sure every table exists at the destination (created like a snapshot would: key,
    indexes, constraints, then foreign keys between the new tables), ready to receive changes;
    conditions it evaluates must be ones it can evaluate."""
    planned = planned or {}
    filters = row_filters or {}
    targets = {}
    created = []
    for st in tables:
        key = (st.table.schema, st.table.name)
        found = dst.describe(key)
        if found is None:
            objects = planned[key].objects if key in planned else None
            with dst.transaction():
                notes = dst.create_table(catalog, st, objects)
                dst.build_key(st, objects.primary_key.name if objects and objects.primary_key else None)
                if objects is not None:
                    notes += dst.build_objects(st, objects)
            for note in notes:
                log.warning("%s", note)
            created.append(key)
            found = dst.describe(key)
            assert found is not None
        found = dst.ready_for_changes(found)
        match_key = identity_match_key(st)
        if match_key != st.key and not dst.has_unique_key(key, match_key):
            log.info(
                "%s: the source identifies rows by (%s), its REPLICA IDENTITY index; adding a unique index "
                "on them at the destination, by which changes are applied", st.display, ", ".join(match_key),
            )
            dst.add_unique_key(key, match_key)
        nullable = any((c := st.table.column(k)) is not None and not c.not_null for k in match_key)
        rf = filters.get(key)
        condition = rf.condition if rf is not None and not rf.native else None
        if condition is not None:
            dst.verify_condition(key, condition, st.condition_where)
        fallback = bool(match_key) and dst.enforces_uniqueness_besides(key, match_key)
        targets[key] = Target(
            found, match_key, key_nullable=nullable, in_order_fallback=fallback, condition=condition,
            source_condition=rf.condition if rf is not None else None,
        )

    for key in created:
        fks = [fk for fk in planned[key].objects.foreign_keys] if key in planned else []
        if fks:
            with dst.transaction():
                notes = dst.add_foreign_keys(key, fks) + dst.validate_constraints(key, [f.name for f in fks])
            for note in notes:
                log.warning("%s", note)
    return targets


def check_replica_role(
    dst: DestinationSession, tables: list[SelectedTable], planned: dict[tuple[str, str], PlannedObjects]
) -> None:
    """Realtime applies changes table by table, not in source order: a foreign key at the
    destination would refuse a row whose referenced row comes later in the same transaction,
    and the destination's triggers would fire on copies. Writer sessions switch both off
    (``session_replication_role = replica``) where the destination user may; where it may not,
    and the destination tables have (or will have) either, refuse before anything is written."""
    if dst.replica_role():
        return
    keys = [(t.table.schema, t.table.name) for t in tables]
    needs = dst.triggers_on(keys)
    existing = {k for k in keys if dst.describe(k) is not None}
    needs += [
        f"{'.'.join(k)}: foreign key {fk.name} (to be created)"
        for k in keys if k not in existing and k in planned for fk in planned[k].objects.foreign_keys
    ]  # fmt: skip
    if needs:
        shown = ", ".join(needs[:5]) + (f" and {len(needs) - 5} more" if len(needs) > 5 else "")
        raise DestinationError(
            f"the destination tables have triggers or foreign keys ({shown}) that would fire on replicated "
            f"changes, and the destination user may not switch them off for its sessions "
            f"(session_replication_role = replica, as PostgreSQL's own apply does); fix: "
            f"{dst.replica_role_fix()}"
        )


def identity_match_key(st: SelectedTable) -> tuple[str, ...]:
    """The columns realtime finds a table's rows by: those the source's replica identity logs.

    An UPDATE or DELETE carries the old row's replica identity only: the primary key (DEFAULT),
    the columns of a chosen unique index (USING INDEX), or the whole row (FULL). When that index
    is not the table's key, matching by the key finds nothing (a DELETE's old key is all NULLs)
    and misses an UPDATE of the key that leaves the index's columns alone; the index's columns,
    unique and NOT NULL at the source, find the row in every case.
    """
    table = st.table
    ident = table.identity_index_columns
    if table.replica_identity == "f" or not ident or set(ident) == set(st.key):
        return st.key
    missing = [c for c in ident if c not in {col.name for col in st.columns}]
    if missing:
        raise ConfigError(
            f"{st.display}: its REPLICA IDENTITY index is on ({', '.join(ident)}), and the filter leaves out "
            f"{', '.join(missing)}: realtime could not find the rows an UPDATE or DELETE touches. Add "
            f"{', '.join(missing)} to the table's allow list, or ALTER TABLE {st.display} REPLICA IDENTITY "
            f"DEFAULT (its primary key)"
        )
    return ident


def start_position(
    state: StateStore, job_id: str, slot: str, slot_confirmed: Lsn | None, start_lsn: Lsn | None = None
) -> Lsn:
    """Where the stream resumes: our checkpoint; else the configured start-lsn; else the slot's position.

    (Re)checked at every (re)connection: a slot confirmed past our checkpoint means changes were
    consumed without being applied here (``positions.py`` checks it before the first write too).
    """
    checkpoint = state.slot_checkpoint(job_id, slot)
    if checkpoint is not None and slot_confirmed is not None and slot_confirmed > checkpoint:
        raise SlotAhead(slot_ahead_message(slot, slot_confirmed, checkpoint))
    if checkpoint is None and start_lsn is not None:
        return max(start_lsn, slot_confirmed or Lsn(0))
    return checkpoint or slot_confirmed or Lsn(0)
