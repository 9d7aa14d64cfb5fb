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
from replicator.destinations import postgres as dest
from replicator.errors import ConfigError
from replicator.filters import SelectedTable, select_tables
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.realtime.apply import Target
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

    @property
    def table_keys(self) -> set[tuple[str, str]]:
        """The tables a full run snapshots for this slot."""
        return {(t.table.schema, t.table.name) for t in [*self.tables, *self.snapshot_only]}


def plan_slots(source: ConfigFile[ConnectionConfig], tables: list[SelectedTable]) -> list[SlotPlan]:
    cfg = source.value
    if not cfg.slots:
        raise ConfigError(
            f"{source.where()}: replication-slots: required for realtime and full modes, e.g.\n"
            "  replication-slots:\n    replicator_slot: [pgoutput]"
        )
    if "pgoutput" in cfg.slots.values() and not cfg.publication:
        raise ConfigError(
            f"{source.where()}: publication: required for pgoutput slots (the publication names the tables the "
            f"slot decodes; it is created for the filtered tables if missing), e.g. publication: replicator_pub"
        )
    base = cfg.publication or ""
    pgoutput_slots = [n for n, plugin in cfg.slots.items() if plugin == "pgoutput"]
    plans = [
        SlotPlan(
            slot=name,
            plugin=plugin,
            publication=(base if len(pgoutput_slots) == 1 else f"{base}_{name}") if plugin == "pgoutput" else None,
        )
        for name, plugin in cfg.slots.items()
    ]
    for t in tables:
        index = zlib.crc32(f"{t.table.schema}.{t.table.name}".encode()) % len(plans)
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


def select_realtime_tables(job: Job, conn: psycopg.Connection[Any]) -> tuple[Catalog, list[SelectedTable]]:
    catalog = load_catalog(conn)
    selected = select_tables(catalog, job.filter, job.extractor, job.source.value.database, "snapshot")
    hb = job.extractor.value.realtime.heartbeat
    heartbeat = (hb.schema_name or "public", hb.table_name)
    return catalog, [t for t in selected if (t.table.schema, t.table.name) != heartbeat]


def identity_warnings(tables: list[SelectedTable]) -> list[str]:
    """Tables whose updates and deletes the source cannot log with enough to find the row."""
    out = []
    for t in tables:
        if t.table.replica_identity == "f":
            continue
        if t.table.replica_identity == "n" or (t.table.replica_identity == "d" and not t.table.primary_key):
            out.append(
                f"{t.display}: no primary key and REPLICA IDENTITY {'NOTHING' if t.table.replica_identity == 'n' else 'DEFAULT'}: "
                f"its UPDATEs and DELETEs cannot be replicated (and fail at the source once it is published); "
                f"fix: ALTER TABLE {t.display} REPLICA IDENTITY FULL; or add a primary key"
            )
    return out


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
    job: Job, conn: psycopg.Connection[Any], catalog: Catalog, tables: list[SelectedTable]
) -> dict[tuple[str, str], Target]:
    """Make sure every table exists at the destination (created like a snapshot would), with a key."""
    soft = job.destination.value.deletes == "soft"
    targets = {}
    for st in tables:
        key = (st.table.schema, st.table.name)
        found = dest.describe_table(conn, *key)
        if found is None:
            with conn.transaction():
                dest.create_table(conn, catalog, st)
                dest.build_key(conn, st)
            found = dest.describe_table(conn, *key)
            assert found is not None
        if soft and dest.SOFT_DELETE_COLUMN not in found.columns:
            dest.ensure_soft_delete_column(conn, found)
            found = dest.describe_table(conn, *key)
            assert found is not None
        nullable = any((c := st.table.column(k)) is not None and not c.not_null for k in st.key)
        targets[key] = Target(found, st.key, key_nullable=nullable)
    return targets


def start_position(
    conn: psycopg.Connection[Any], job_id: str, slot: str, slot_confirmed: Lsn | None, start_lsn: Lsn | None = None
) -> Lsn:
    """Where the stream resumes: our checkpoint; else the configured start-lsn; else the slot's position."""
    row = conn.execute(
        "SELECT lsn::text FROM _replicator.slot_checkpoints WHERE job = %s AND slot_name = %s", (job_id, slot)
    ).fetchone()
    checkpoint = Lsn.parse(row[0]) if row else None
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
