"""Schema changes captured at the source, applied by a realtime ``Writer`` (``apply.py``).

A change arrives between the row units it belongs between and is applied in the open destination
transaction, which commits with the checkpoint that passes it: exactly once, whatever crashes. It
is logged in the state store (``replicator status`` lists it) in the same transaction.

Steps that change data or names (tables, columns, types, rows leaving with a partition) fail the
transaction when the destination refuses them: streaming on would put rows in the wrong place.
Steps that only mirror the source's schema (indexes, constraints, defaults, NOT NULL) are tried in
a savepoint and a refusal is a warning (e.g. a unique index the destination's rows break, or an
expression naming a function it lacks): the data stays right either way. Foreign keys are not
created: set-wise apply reorders rows within a batch, which a foreign key would refuse. Each step's
DDL: ``schemasteps``.

Refreshes: rows the stream does not carry are copied from the source under a snapshot taken when
the change is read (``stage_refresh``: into a session temp table, as text), and merged when the
stream reaches that snapshot's position (``merge_refresh``), in the transaction whose checkpoint
passes it. The record of a refresh still to merge is in the state store (``pending_refreshes``),
written with the change and removed with the merge, so a crash in between copies again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from replicator.catalog import Catalog
from replicator.catalog import Column as CatalogColumn
from replicator.decoding import ddlplan as plan
from replicator.decoding.changes import Relation
from replicator.destinations.base import DestTable, Fill, PendingRefresh, StreamTable, TableName, Target
from replicator.destinations.postgres import ddl
from replicator.destinations.postgres.compat import type_holds
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.load import copy_in_sql
from replicator.destinations.postgres.schemasteps import apply_step, tolerant
from replicator.destinations.postgres.stage import names_sql
from replicator.errors import DestinationError
from replicator.relay import PgCopyIn

if TYPE_CHECKING:
    from replicator.destinations.postgres.apply import Writer

log = logging.getLogger(__name__)


@dataclass
class SchemaState:
    """What a Writer keeps about schema changes: the routing before the open transaction's first
    change (restored if it rolls back), and the refreshes staged in this session."""

    saved_targets: dict[TableName, Target] | None = None
    # (table, source relid) -> (temp table, its columns, the source's NOT NULL columns)
    holding: dict[tuple[TableName, int], tuple[sql.Identifier, tuple[str, ...], tuple[str, ...]]] = field(
        default_factory=dict
    )
    seq: int = 0
    warned_foreign_keys: bool = False
    source_types: dict[tuple[int, int], tuple[str, Catalog]] = field(default_factory=dict)  # (oid, typmod) ->


def state_of(writer: Writer) -> SchemaState:
    if writer.schema is None:
        writer.schema = SchemaState()
    return writer.schema


def apply(writer: Writer, change: plan.SchemaChange) -> None:
    """Apply ``change`` in the writer's open transaction, log it, and update the writer's routing."""
    st = state_of(writer)
    if st.saved_targets is None:
        st.saved_targets = dict(writer.targets)
    state = writer.session.state
    already = state.schema_change_applied(writer.job, writer.slot, change.lsn)
    for seq, step in enumerate(change.steps):
        if not already:
            apply_step(writer, st, step)
            state.log_schema_change(
                writer.job, writer.slot, change.lsn, seq, step.table, change.command, plan.describe(step)
            )
            log.info("schema change at %s (%s): %s", change.lsn, change.command, plan.describe(step))
            if isinstance(step, plan.Refresh):
                state.add_pending_refresh(
                    writer.job,
                    writer.slot,
                    PendingRefresh(step.table, step.relid, step.whole, step.why, change.lsn),
                )
        _touched(writer, step.table)
        if isinstance(step, plan.RenameTable):
            _touched(writer, step.to)
    for table in change.removed:
        writer.targets.pop(table, None)
        _touched(writer, table)
    if change.removed:
        state.forget_stream_tables(writer.job, writer.slot, list(change.removed.values()))
    for table, (key, nullable, _relid, _key_from) in change.added.items():
        found = ddl.describe_table(writer.conn, *table)
        if found is None:
            raise DestinationError(f"{'.'.join(table)}: expected at the destination after {change.command}")
        writer.targets[table] = Target(found, key, key_nullable=nullable)
        _touched(writer, table)
    if change.added:
        added = {
            relid: StreamTable(writer.slot, t, key, key_from)
            for t, (key, _, relid, key_from) in change.added.items()
        }
        state.save_stream_tables(writer.job, writer.slot, added)


def committed(writer: Writer) -> None:
    if writer.schema is not None:
        writer.schema.saved_targets = None


def rolled_back(writer: Writer) -> None:
    """The open transaction's schema changes are gone: so is what we learnt from them, and every
    staged refresh (the realtime engine plans the pending ones again)."""
    st = writer.schema
    if st is None:
        return
    if st.saved_targets is not None:
        writer.targets.clear()
        writer.targets.update(st.saved_targets)
        st.saved_targets = None
    for holding, _, _ in st.holding.values():
        if not writer.conn.closed and not writer.conn.broken:
            try:
                writer.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(holding))
            except psycopg.Error:
                pass
    st.holding.clear()


def forget_session(writer: Writer) -> None:
    """The session reconnected: its temp tables are gone."""
    if writer.schema is not None:
        writer.schema.holding.clear()


def _touched(writer: Writer, table: TableName) -> None:
    """``table`` changed shape (or name): described again before its next rows, its stages dropped."""
    writer._checked.pop(table, None)  # noqa: SLF001  (the Writer's caches are ours to keep right)
    writer._altered.add(table)  # noqa: SLF001
    writer.session.stages.forget(table)
    target = writer.targets.get(table)
    if target is not None:
        found = ddl.describe_table(writer.conn, *table)
        if found is not None:
            target.table = found


# -- refreshes ------------------------------------------------------------------------------------


def stage_refresh(
    writer: Writer, table: TableName, relid: int, columns: Sequence[str], not_null: Sequence[str], fill: Fill
) -> int:
    """Copy the source rows ``fill`` writes (text COPY of ``columns``) into a temp table held until
    ``merge_refresh``; returns the rows staged."""
    st = state_of(writer)
    old = st.holding.pop((table, relid), None)
    if old is not None:
        writer.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(old[0]))
    st.seq += 1
    holding = sql.Identifier(f"_replicator_refresh_{st.seq}")
    cols = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)
    writer.conn.execute(sql.SQL("CREATE TEMP TABLE {} ({})").format(holding, cols))
    result = fill(PgCopyIn(writer.conn, copy_in_sql(holding, columns, False)))
    st.holding[(table, relid)] = (holding, tuple(columns), tuple(not_null))
    log.info(
        "%s: %d row(s) copied from the source, merged once the stream reaches their snapshot",
        ".".join(table),
        result.rows,
    )
    return result.rows


def has_staged(writer: Writer, table: TableName, relid: int) -> bool:
    return writer.schema is not None and (table, relid) in writer.schema.holding


def merge_refresh(writer: Writer, table: TableName, relid: int, whole: bool) -> None:
    """Make the destination's rows those staged (the stream is at the snapshot's position now):
    upsert them by key, and with ``whole`` remove the rows the source did not have; a table
    without a key is emptied and refilled when ``whole``. Columns the source has NOT NULL become
    so once their values are there."""
    st = state_of(writer)
    staged = st.holding.pop((table, relid), None)
    target = writer.targets.get(table)
    state = writer.session.state
    if staged is None or target is None:
        if target is not None:
            log.warning(
                "%s: nothing was staged from relation %d (gone from the source): nothing to merge",
                ".".join(table),
                relid,
            )
        state.finish_refresh(writer.job, writer.slot, table, relid)
        return
    holding, columns, not_null = staged
    _merge(writer, target, holding, columns, whole)
    for name in not_null:
        col = target.table.columns.get(name)
        if col is not None and not col.not_null:
            tolerant(
                writer,
                f"{'.'.join(table)}: SET NOT NULL on {name}",
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                    ident(target.table), sql.Identifier(name)
                ),
            )
    _touched(writer, table)
    writer.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(holding))
    state.finish_refresh(writer.job, writer.slot, table, relid)
    log.info("%s: rows copied from the source merged (relation %d)", ".".join(table), relid)


def _merge(
    writer: Writer, target: Target, holding: sql.Identifier, columns: Sequence[str], whole: bool
) -> None:
    dest = target.table
    names = [c for c in columns if c in dest.columns and not dest.columns[c].generated]
    deletes = writer.session.deletes
    values = sql.SQL(", ").join(
        sql.SQL("h.{}::{}").format(sql.Identifier(n), sql.SQL(dest.columns[n].type_sql)) for n in names
    )
    key = [k for k in target.key if k in names]
    table = ident(dest)
    if not target.key or len(key) < len(target.key):
        if whole:
            writer.conn.execute(deletes.truncate(dest))
        writer.conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} h").format(
                table, names_sql(names), values, holding
            )
        )
        return
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in key]
    sets += deletes.revive(dest)
    action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
    writer.conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} h ON CONFLICT ({}) {}").format(
            table, names_sql(names), values, holding, names_sql(key), action
        )
    )
    if whole:
        same = sql.SQL(" AND ").join(
            sql.SQL("h.{0}::{1} IS NOT DISTINCT FROM d.{0}").format(
                sql.Identifier(k), sql.SQL(dest.columns[k].type_sql)
            )
            for k in key
        )
        absent = sql.SQL("NOT EXISTS (SELECT 1 FROM {} h WHERE {})").format(holding, same)
        writer.conn.execute(deletes.delete_aliased(dest, absent))


def widen_types(writer: Writer, target: Target, rel: Relation) -> bool:
    """Without the DDL capture, a type change shows only in the stream's relation description:
    a destination column that no longer holds the source's type (integer -> bigint, varchar(10) ->
    varchar(40), numeric(8,2) -> numeric(14,4)) takes it, its values converted by a cast. (A type
    the destination's holds already, e.g. bigint -> integer at the source, is left as it is.)
    Whether any changed."""
    st = state_of(writer)
    changed = False
    for c in rel.columns:
        have = target.table.columns.get(c.name)
        if have is None or have.generated:
            continue
        found = st.source_types.get((c.type_oid, c.typmod))
        if found is None:
            found = st.source_types[(c.type_oid, c.typmod)] = writer.column_type(c.type_oid, c.typmod)
        type_sql, catalog = found
        if type_holds(type_sql, have.type_sql):
            continue
        if catalog.types:
            ddl.ensure_types(writer.conn, catalog, (CatalogColumn(c.name, 0, type_sql, c.type_oid, False),))
        log.info("%s: column %s is %s at the source now (was %s here); changing it", rel.qualified_name,
                 c.name, type_sql, have.type_sql)
        col = sql.Identifier(c.name)
        writer.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
            ident(target.table), col, sql.SQL(type_sql), col, sql.SQL(type_sql)))
        changed = True
    return changed


def dest_table(writer: Writer, table: TableName) -> DestTable | None:
    return ddl.describe_table(writer.conn, *table)
