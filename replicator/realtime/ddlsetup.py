"""At the start of realtime: is the DDL capture there, what will be followed, and which schemas'
new tables join which publication."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import psycopg

from replicator.destinations.base import DestinationSession, StreamTable, TableName, Target
from replicator.job import Job
from replicator.realtime.follow import ALL_SCHEMAS, whole_schemas
from replicator.realtime.setup import SlotPlan
from replicator.source import ddlcapture
from replicator.source.slots import get_slot

log = logging.getLogger(__name__)

FOLLOWED = (
    "DROP COLUMN, ALTER COLUMN TYPE (values the destination cannot recompute are copied), RENAME COLUMN, "
    "RENAME TO, SET SCHEMA, CREATE TABLE in a schema the filter takes whole, CREATE/DROP INDEX, "
    "ADD/DROP CONSTRAINT (not foreign keys), DROP TABLE, ADD COLUMN with its default, "
    "ATTACH/DETACH PARTITION"
)
FALLBACK = (
    "followed: columns added (without their default: rows already there read NULL) and column types "
    "widened; NOT followed: renames (a renamed column arrives as a new one, the old one takes NULLs), "
    "dropped columns and tables (kept), new tables, indexes, constraints, partitions attached with rows, "
    "values rewritten by ALTER COLUMN TYPE ... USING or a volatile default"
)


def announce(conn: psycopg.Connection[Any], plans: list[SlotPlan]) -> ddlcapture.CaptureState:
    """Say which schema changes this run follows (DDL capture installed or not)."""
    capture = ddlcapture.state(conn)
    if capture.installed:
        log.info("DDL capture installed: schema changes follow the stream: %s", FOLLOWED)
        if conn.info.server_version < 140000 and any(p.plugin == "pgoutput" for p in plans):
            log.warning(
                "pgoutput sends logical messages from PostgreSQL 14 on: with pgoutput slots on this "
                "server the DDL capture's messages do not arrive; %s",
                FALLBACK,
            )
    else:
        log.info(
            "DDL capture %s; schema changes are followed from the stream's relation descriptions only: %s",
            capture.problem,
            FALLBACK,
        )
    return capture


def register_schemas(conn: psycopg.Connection[Any], job: Job, plans: list[SlotPlan]) -> None:
    """New tables of the schemas the filter takes whole join the first pgoutput slot's publication
    (the DDL capture adds them, in the CREATE's transaction)."""
    pgoutput = [p for p in plans if p.publication is not None]
    if not pgoutput:
        return
    publication = pgoutput[0].publication
    assert publication is not None
    schemas = sorted(whole_schemas(job.filter))
    try:
        with conn.transaction():
            ddlcapture.follow_schemas(conn, publication, schemas)
    except psycopg.Error as e:
        shown = "every schema" if schemas == [ALL_SCHEMAS] else ", ".join(schemas) or "no schema"
        log.warning(
            "new tables of %s will not join publication %s by themselves: %s; as the publication's owner: "
            "SELECT _replicator_ddl.follow_schemas(%r, ARRAY%r);",
            shown,
            publication,
            (e.diag.message_primary or str(e)).strip(),
            publication,
            schemas,
        )


def stream_tables(
    job: Job, src: psycopg.Connection[Any], dst: DestinationSession
) -> dict[int, StreamTable]:
    """Source table oid -> where its changes go, as of each existing slot's checkpoint, from the
    destination's state (empty on a first run). A slot that is gone (``full`` creates it again)
    starts from the catalog: its old record says nothing about the new slot."""
    stored = dst.state.stream_tables(job.job_id)
    alive = {t.slot for t in stored.values() if get_slot(src, t.slot) is not None}
    return {relid: t for relid, t in stored.items() if t.slot in alive}


def as_the_stream_has_them(plans: list[SlotPlan], stored: dict[int, StreamTable]) -> None:
    """Name each table as its slot's stream has it at the checkpoint: a table renamed (or moved) at
    the source since is still under its old name there, until the stream applies the rename; and a
    table dropped since is still fed until the stream gets to its DROP (``SlotPlan.ghosts``)."""
    for plan in plans:
        renamed = []
        for st in plan.tables:
            where = stored.get(st.table.oid)
            if (
                where is not None
                and where.slot == plan.slot
                and where.table != (st.table.schema, st.table.name)
            ):
                schema, name = where.table
                log.info(
                    "%s is %s.%s at slot %s's checkpoint: following it from there",
                    st.display,
                    schema,
                    name,
                    plan.slot,
                )
                st = dataclasses.replace(st, table=dataclasses.replace(st.table, schema=schema, name=name))
            renamed.append(st)
        plan.tables = renamed
        present = {st.table.oid for st in plan.tables}
        plan.ghosts = {
            relid: t for relid, t in stored.items() if t.slot == plan.slot and relid not in present
        }
        for t in plan.ghosts.values():
            log.info(
                "%s is gone from the source but still in slot %s's stream: fed until its DROP",
                ".".join(t.table),
                plan.slot,
            )


def ghost_targets(dst: DestinationSession, plans: list[SlotPlan]) -> dict[TableName, Target]:
    """Targets for the tables gone from the source catalog that the streams still feed."""
    targets = {}
    for plan in plans:
        for t in plan.ghosts.values():
            found = dst.describe(t.table)
            if found is not None:
                nullable = any(not c.not_null for k in t.key if (c := found.columns.get(k)) is not None)
                targets[t.table] = Target(dst.ready_for_changes(found), t.key, key_nullable=nullable)
    return targets
