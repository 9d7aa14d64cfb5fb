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
from replicator.errors import ConfigError
from replicator.filters import SelectedTable, select_tables
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.source.heartbeat import ensure_heartbeat_table
from replicator.source.publication import PublishedTable, ensure_publication

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


def identity_warnings(tables: list[SelectedTable]) -> list[str]:
    """Tables whose updates and deletes the source cannot log with enough to find the row."""
    return [
        f"{t.display}: {gap}: its UPDATEs and DELETEs cannot be replicated (and fail at the source once "
        f"it is published); fix: ALTER TABLE {t.display} REPLICA IDENTITY FULL; or add a primary key"
        for t in tables
        if (gap := t.table.identity_gap) is not None
    ]


def prepare_source(job: Job, conn: psycopg.Connection[Any], plans: list[SlotPlan]) -> PublishedTable | None:
    """Heartbeat table and publications (created or validated)."""
    hb_cfg = job.extractor.value.realtime.heartbeat
    heartbeat = ensure_heartbeat_table(conn, hb_cfg) if hb_cfg.enable else None
    for plan in plans:
        if plan.publication is None:
            continue
        published = [
            PublishedTable(t.table.schema, t.table.name, _published_columns(t)) for t in plan.tables
        ]
        if heartbeat is not None:
            published.append(heartbeat)
        if published:
            ensure_publication(conn, plan.publication, published)
    return heartbeat


def _published_columns(t: SelectedTable) -> tuple[str, ...] | None:
    if len(t.columns) == len(t.table.columns):
        return None
    return tuple(c.name for c in t.columns if not c.is_generated)


def prepare_destination(
    dst: DestinationSession, catalog: Catalog, tables: list[SelectedTable]
) -> dict[tuple[str, str], Target]:
    """Make sure every table exists at the destination (created like a snapshot would), with a
    key, ready to receive changes."""
    targets = {}
    for st in tables:
        key = (st.table.schema, st.table.name)
        found = dst.describe(key)
        if found is None:
            with dst.transaction():
                dst.create_table(catalog, st)
                dst.build_key(st)
            found = dst.describe(key)
            assert found is not None
        found = dst.ready_for_changes(found)
        nullable = any((c := st.table.column(k)) is not None and not c.not_null for k in st.key)
        targets[key] = Target(found, st.key, key_nullable=nullable)
    return targets


def start_position(
    state: StateStore, job_id: str, slot: str, slot_confirmed: Lsn | None, start_lsn: Lsn | None = None
) -> Lsn:
    """Where the stream resumes: our checkpoint; else the configured start-lsn; else the slot's position."""
    checkpoint = state.slot_checkpoint(job_id, slot)
    if checkpoint is not None and slot_confirmed is not None and slot_confirmed > checkpoint:
        log.warning(
            "slot %s was confirmed up to %s by another consumer, past our checkpoint %s: changes in "
            "between are not in the destination; run `full` again (with --fresh) to repair",
            slot, slot_confirmed, checkpoint,
        )
    if checkpoint is None and start_lsn is not None:
        if slot_confirmed is not None and start_lsn < slot_confirmed:
            log.warning(
                "realtime.start-position.start-lsn %s is before slot %s's confirmed position %s: "
                "the server starts at %s (earlier changes are no longer in the slot)",
                start_lsn, slot, slot_confirmed, slot_confirmed,
            )
        return start_lsn
    return checkpoint or slot_confirmed or Lsn(0)
