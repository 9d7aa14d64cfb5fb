"""Applying decoded changes to a PostgreSQL destination: set-wise, in source-transaction units.

One destination transaction covers one or more whole source transactions and ends by writing
the slot checkpoint (the end LSN of the last source commit it covers), so a crash leaves the
destination exactly at a source commit boundary and the stream resumes right after it.

Inside it, the ``Writer`` applies units folded per key (``decoding/fold.py``, at most
``fetch-size-rows`` changes each) and prepared (``copytext.py``): per table a TRUNCATE first,
then moves, deletes (by key array, or a staged key set), rows known to be new (COPYed straight
into the table), full-row updates and partial updates (staged and merged by key, ``stage.py``,
whose docstring says why the statements have the shapes they have; measured with
bench/realtime.py). A source transaction larger than a unit is applied in several units inside
the same destination transaction, so memory stays bounded and the transaction is still never
half-applied. What a delete is (hard, or a flag) is ``deletes.py``'s.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from replicator.catalog import Column as CatalogColumn
from replicator.decoding import fold
from replicator.decoding.changes import UNCHANGED_TOAST, Op, Relation
from replicator.decoding.ddlplan import SchemaChange
from replicator.destinations.base import CommitMark, Fill, NewColumnType, SourceRows, TableName, Target
from replicator.destinations.postgres import (
    copytext,
    ddl,
    durable,
    inorder,
    keyless,
    pipelined,
    rowfilter,
    schemasync,
)
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import KEY_PROBES, match, merge, names_sql, update_from
from replicator.lsn import Lsn

if TYPE_CHECKING:
    from replicator.destinations.postgres.session import PostgresSession

log = logging.getLogger(__name__)

# Deferrable constraints are checked at commit, as the source's transactions may have had them:
# changes applied table by table pass through states the source never had.
_BEGIN = "BEGIN; SET CONSTRAINTS ALL DEFERRED; " + KEY_PROBES
_COMMIT = sql.SQL("; COMMIT; " + durable.POSITIONS)
# The same, one statement each, for a pipeline (which takes no statement lists).
_BEGIN_PIPELINED: list[pipelined.Statement] = [(q, None) for q in _BEGIN.split("; ")]

# Savepoints (subtransactions) per destination transaction for COPYing new rows straight in.
MAX_SAVEPOINTS = 32


@dataclass
class Writer:
    """The destination side: applies ``Folded`` units and commits them with their checkpoint.

    Works on its session's connection (autocommit; transactions are explicit) while it works.
    """

    session: PostgresSession
    job: str
    slot: str
    targets: dict[TableName, Target]
    column_type: NewColumnType
    source_rows: SourceRows | None = None  # filtered tables: rows an UPDATE moved into the condition
    _in_txn: bool = False
    _savepoints: int = 0  # in the open transaction
    _checked: dict[TableName, Relation] = field(default_factory=dict)  # relation shape the table fits
    _altered: set[TableName] = field(default_factory=set)  # tables altered in the open transaction
    _stale: set[TableName] = field(default_factory=set)  # tables whose ALTER was rolled back
    applied_changes: int = 0
    schema: schemasync.SchemaState | None = None  # schema changes captured at the source
    captured_schema: bool = False  # the DDL capture brings every schema change (see _adapt_destination)
    # Statements of the open transaction not sent yet (pipelined.py): sent with the commit, or
    # before any statement that is sent at once.
    _pending: list[pipelined.Statement] = field(default_factory=list)
    _pending_rows: int = 0  # rows those carry: past pipelined.MAX_ROWS they are sent (memory stays bounded)
    _plain_types: dict[TableName, pipelined.PlainTypes] = field(default_factory=dict)
    _texts: pipelined.Texts | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.session.conn

    def prepare(self, folded: fold.Folded) -> fold.Folded:
        return copytext.prepare_all(folded)

    def apply(self, folded: fold.Folded) -> None:
        """Apply one unit inside the open destination transaction (opening it if needed)."""
        self._begin(lazy=True)
        self.flush(folded.batches)
        if self._pending_rows >= pipelined.MAX_ROWS:  # a large source transaction: never all queued
            self._send_pending()

    def commit(self, lsn: Lsn) -> CommitMark:
        """Write the checkpoint ``lsn`` and commit, in one round trip that also says where the
        commit is in the destination's WAL (``durable.py``: it is not durable at once). With
        statements queued (``pipelined.py``), they go first in the same round trip."""
        self._begin(lazy=True)
        checkpoint = self.session.state.slot_checkpoint_statement(self.job, self.slot, lsn)
        if self._pending:
            last = self._send_pending([(checkpoint, None), ("COMMIT", None), (durable.POSITIONS, None)])
            assert last is not None
            mark = durable.mark_of(last)
        else:
            mark = durable.mark_of(self.conn.execute(checkpoint + _COMMIT))
        self._in_txn = False
        self._altered.clear()
        schemasync.committed(self)
        self.session.stages.committed()
        self._savepoints = 0
        return mark

    def durability(self) -> CommitMark:
        return durable.durability(self.conn)

    def sync(self) -> int:
        self.rollback()  # never commits what is not whole
        return durable.sync(self.conn)

    def rollback(self) -> None:
        """Abandon the open destination transaction, if one is open."""
        self._pending.clear()
        self._pending_rows = 0
        if not self._in_txn:
            return
        self._in_txn = False
        if not self.conn.closed:
            try:
                self.conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
        self.session.stages.rolled_back()
        self._savepoints = 0
        # So did its ALTER TABLEs: what we learnt of those tables is stale (described again when next used).
        self._stale |= self._altered
        self._altered.clear()
        schemasync.rolled_back(self)

    def reset(self) -> None:
        """After the session reconnected: what we checked on the old connection is checked again."""
        self._in_txn = False
        self._pending.clear()
        self._pending_rows = 0
        self._savepoints = 0
        self._checked.clear()
        schemasync.forget_session(self)

    # -- schema changes captured at the source (schemasync.py) ------------------------------

    def apply_schema(self, change: SchemaChange) -> None:
        self._begin()
        schemasync.apply(self, change)

    def stage_refresh(
        self, table: TableName, relid: int, columns: tuple[str, ...], not_null: tuple[str, ...], fill: Fill
    ) -> int:
        self._begin()
        return schemasync.stage_refresh(self, table, relid, columns, not_null, fill)

    def merge_refresh(self, table: TableName, relid: int, whole: bool) -> None:
        self._begin()
        schemasync.merge_refresh(self, table, relid, whole)

    def _begin(self, lazy: bool = False) -> None:
        """Open the destination transaction if needed; ``lazy``: by queueing BEGIN (pipelined.py),
        else at once, after whatever is queued (the caller sends a statement next)."""
        if not self._in_txn:
            if lazy:
                self._pending.extend(_BEGIN_PIPELINED)
            else:
                self.conn.execute(_BEGIN)
            self._in_txn = True
        elif not lazy:
            self._send_pending()

    def _send_pending(self, then: list[pipelined.Statement] | None = None) -> psycopg.Cursor[Any] | None:
        """Send the queued statements (and ``then``) as one pipeline: one round trip. The first
        error raises here, as that statement alone would (the later ones are not run); the
        transaction is then aborted and rolled back by the caller, as after any failed statement.
        Returns the cursor of the last statement (None if nothing was sent)."""
        todo = self._pending + (then or [])
        self._pending = []
        self._pending_rows = 0
        last = None
        if todo:
            with self.conn.pipeline():
                for query, params in todo:
                    last = self.conn.execute(query, params)
        return last

    @property
    def _deletes(self) -> DeletePolicy:
        return self.session.deletes

    # -- relations and schema changes ------------------------------------------------------

    def _adapt_destination(self, target: Target, rel: Relation) -> None:
        """Add columns the source gained; let NOT NULL columns the source lost take NULLs; change
        a column's type when the source's no longer fits in it (``schemasync.widen_types``).

        Not when the DDL capture brings schema changes (schemasync.py): they come first, exactly,
        and a relation can list columns the table does not have at this point of the stream
        (wal2json's decoder fills its relations from the catalog as it is now)."""
        if self.captured_schema:
            return
        dest = target.table
        added = [c for c in rel.columns if c.name not in dest.columns]
        lost = [
            c.name
            for c in dest.columns.values()
            if c.name not in rel.names
            and c.not_null
            and not c.generated
            and not self._deletes.is_ours(c.name)
        ]
        retyped = schemasync.widen_types(self, target, rel)
        if not added and not lost and not retyped:
            return
        new_columns = []
        for col in added:
            type_sql, catalog = self.column_type(col.type_oid, col.typmod)
            if catalog.types:
                ddl.ensure_types(self.conn, catalog, (CatalogColumn("_", 0, type_sql, col.type_oid, False),))
            log.info("%s: new column %s %s at the source; adding it at the destination",
                     rel.qualified_name, col.name, type_sql)
            new_columns.append((col.name, type_sql))
        ddl.add_columns(self.conn, dest, new_columns)
        for name in lost:
            log.info(
                "%s: column %s is gone at the source; it takes NULLs from now on", rel.qualified_name, name
            )
        ddl.drop_not_null(self.conn, dest, lost)
        self._altered.add(dest.key)
        refreshed = ddl.describe_table(self.conn, dest.schema, dest.name)
        assert refreshed is not None
        target.table = refreshed
        self.session.stages.forget(dest.key)  # shaped like the old table

    # -- flushing --------------------------------------------------------------------------

    def flush(self, batches: dict[TableName, fold.TableBatch]) -> None:
        """Apply folded operations inside the open destination transaction."""
        if any(b.truncated for b in batches.values()):
            self._send_pending()
        truncated = self._truncate_together(batches)
        for key, batch in batches.items():
            target = self.targets[key]
            if key in self._stale or self._checked.get(key) is not batch.relation:
                self._send_pending()  # statements follow at once
            if key in self._stale:
                refreshed = ddl.describe_table(self.conn, *key)
                assert refreshed is not None
                target.table = refreshed
                self._stale.discard(key)
                self._checked.pop(key, None)
            if self._checked.get(key) is not batch.relation:
                self._adapt_destination(target, batch.relation)
                self._checked[key] = batch.relation
            if pipelined.eligible(target, batch):
                self._queue(target, batch)
                self.applied_changes += batch.changes
                continue
            self._send_pending()  # what is queued runs first, in order
            if batch.truncated and key not in truncated:
                self.conn.execute(self._deletes.truncate(target.table))
            if batch.keyless and target.condition is not None:
                rowfilter.apply_keyless(
                    self.conn, target, batch, self._columns(target, batch),
                    lambda name, value, t=target: self._typed(t, name, value), self._deletes,  # type: ignore[misc]
                )
            elif batch.keyless:
                self._apply_in_order(target, batch)
            elif target.in_order_fallback and batch.keep_order:
                self._apply_or_replay(target, batch)
            else:
                self._apply_folded(target, batch)
            self.applied_changes += batch.changes

    def _queue(self, target: Target, batch: fold.TableBatch) -> None:
        """Queue the statements of a small plain batch, sent with the commit (``pipelined.py``)."""
        if not pipelined.known(target.table, self._plain_types):
            self._send_pending()  # the lookup is a statement of its own
        types = pipelined.plain_types(self.conn, target.table, self._plain_types)
        columns = self._columns(target, batch)
        if self._texts is None or self._texts.conn is not self.conn:  # a new connection: texts anew
            self._texts = pipelined.Texts(self.conn)
        self._pending += pipelined.statements(target, batch, columns, types, self._deletes, self._texts)
        self._pending_rows += batch.changes

    def _truncate_together(self, batches: dict[TableName, fold.TableBatch]) -> set[TableName]:
        """One TRUNCATE for every table a unit truncates: a foreign key between two of them would
        refuse either one alone (the source truncated them together, or with CASCADE)."""
        keys = [k for k, b in batches.items() if b.truncated]
        if len(keys) < 2 or self._deletes.soft:
            return set()
        ddl.truncate_all(self.conn, [self.targets[k].table for k in keys])
        return set(keys)

    def _apply_folded(self, target: Target, batch: fold.TableBatch) -> None:
        p = batch.prepared or copytext.prepare(batch, texts=False)
        before = self._remember(target, batch)
        for new_key, op in p.moves:
            self._move(target, batch, new_key, op)
        if p.deletes:
            self._delete(target, p.deletes, p.deleted_keys)
        if p.fresh:
            self._upsert(target, batch, p.fresh, True, p.fresh_text)
        if p.existing:
            self._upsert(target, batch, p.existing, False, p.existing_text)
        for group in _by_unchanged(p.partial):
            self._update(target, batch, group)
        if target.source_condition is not None:
            self._filter_rows(target, batch, p, before)

    def _apply_or_replay(self, target: Target, batch: fold.TableBatch) -> None:
        """Set-wise, in a savepoint; if that meets a unique or exclusion violation the source never
        had (see ``inorder.py``), the batch's changes one by one, in source order. Past
        MAX_SAVEPOINTS in one transaction, one by one straight away."""
        if self._savepoints >= MAX_SAVEPOINTS:
            self._replay(target, batch)
            return
        self._savepoints += 1
        self.conn.execute("SAVEPOINT _replicator_batch")
        try:
            self._apply_folded(target, batch)
        except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as e:
            self.conn.execute("ROLLBACK TO SAVEPOINT _replicator_batch")
            self.session.stages.rolled_back()  # those made in the savepoint went with it
            log.info(
                "%s: applying %d folded changes at once meets %s (a value passed between rows within "
                "the batch); applying them one by one, in source order",
                target.table.display, batch.changes, (e.diag.message_primary or str(e)).strip(),
            )
            self._replay(target, batch)
        self.conn.execute("RELEASE SAVEPOINT _replicator_batch")

    def _replay(self, target: Target, batch: fold.TableBatch) -> None:
        before = self._remember(target, batch)
        inorder.replay(self.conn, self._deletes, target, batch, self._columns(target, batch))
        if target.source_condition is not None:  # as _apply_folded does after its statements
            p = batch.prepared or copytext.prepare(batch, texts=False)
            self._filter_rows(target, batch, p, before)

    def _remember(self, target: Target, batch: fold.TableBatch) -> sql.Identifier | None:
        """Soft deletes and a condition evaluated here: the rows as they are before ``batch``."""
        if target.condition is None:
            return None
        return rowfilter.remember(self.conn, self.session.stages, target, batch, self._deletes)

    def _filter_rows(
        self, t: Target, batch: fold.TableBatch, p: fold.Prepared, before: sql.Identifier | None
    ) -> None:
        """A filtered table (``rowfilter.py``): rows an UPDATE moved into the condition with unchanged
        TOAST values are read from the source; then, where the destination evaluates the condition,
        every row the batch wrote that does not match is removed."""
        partial = [*p.partial, *(op for _, op in p.moves)]
        if partial:
            cols = [n for _, n in self._columns(t, batch)]
            rowfilter.fill_missing(
                self.conn, self.session.stages, t, partial, batch.key_positions, cols, self.source_rows
            )
        if t.condition is not None:
            rowfilter.enforce(self.conn, self.session.stages, t, batch, self._deletes, before)

    def _stage(
        self, t: Target, columns: Sequence[str], rows: Sequence[Sequence[Any]], role: str = ""
    ) -> sql.Identifier:
        """COPY ``rows`` (text-format values) into a stage shaped like ``columns``."""
        return self.session.stages.fill(t.table, columns, copytext.copy_text(rows, len(columns)), role)

    def _delete(self, t: Target, keys: list[fold.Key], literal: str | None) -> None:
        """Rows by key: a one-column key is passed as an array (probed through the key's index,
        no stage to fill); other keys are staged."""
        type_sql = t.table.columns[t.key[0]].type_sql
        if literal is not None and len(t.key) == 1 and not t.key_nullable and not type_sql.endswith("]"):
            where = sql.SQL("{} = ANY({}::{}[])").format(
                sql.Identifier(t.key[0]), sql.Placeholder(), sql.SQL(type_sql)
            )
            self.conn.execute(self._deletes.delete_where(t.table, where), (literal,))
            return
        stage = self._stage(t, t.key, keys)
        self.conn.execute(self._deletes.delete_using(t.table, stage, match(t.key, t.key_nullable)))

    def _columns(self, t: Target, batch: fold.TableBatch) -> list[tuple[int, str]]:
        """(position in the stream's values, name) of the columns the destination stores."""
        dest = t.table.columns
        return [
            (i, c.name)
            for i, c in enumerate(batch.relation.columns)
            if c.name in dest and not dest[c.name].generated
        ]

    def _upsert(
        self, t: Target, batch: fold.TableBatch, ops: list[fold.Upsert], fresh: bool, text: str | None = None
    ) -> None:
        """Whole rows: inserted where the key has no row, else updated in place.

        ``text``: the rows in COPY format with every column of the stream (``copytext``), used
        when the destination stores all of them. Rows expected to be new are first COPYed
        straight into the table (see ``_copy_fresh``)."""
        cols = self._columns(t, batch)
        names = [n for _, n in cols]
        if len(cols) != len(batch.relation.columns):
            text = None  # the destination leaves some out: format the projection here
        if fresh and text is not None and self._copy_fresh(t, names, text):
            return
        role = "insert" if fresh else "update"
        if text is not None:
            stage = self.session.stages.fill(t.table, names, text, role)
        else:
            stage = self._stage(
                t, names, _project(ops, [i for i, _ in cols], len(batch.relation.columns)), role
            )
        merge(
            self.conn,
            t.table,
            stage,
            names,
            t.key,
            len(ops),
            key_nullable=t.key_nullable,
            deletes=self._deletes,
            expect_new=fresh,
        )

    def _copy_fresh(self, t: Target, names: Sequence[str], text: str) -> bool:
        """COPY rows expected to be new straight into the table: no stage to fill and read, no
        probe before each insert (the key's unique index checks). If one is there after all
        (a stream replayed over a later snapshot), the COPY fails, is rolled back to a
        savepoint and False is returned: the caller stages them. Not with NULLs possible in
        the key (the index may not see them as duplicates), not with soft deletes (a deleted
        row kept there makes re-inserts common), and at most MAX_SAVEPOINTS times per
        transaction (more subtransactions would slow visibility checks of other sessions)."""
        if t.key_nullable or self._deletes.soft or self._savepoints >= MAX_SAVEPOINTS:
            return False
        self._savepoints += 1
        self.conn.execute("SAVEPOINT _replicator_fresh")
        try:
            with self.conn.cursor().copy(
                sql.SQL("COPY {} ({}) FROM STDIN").format(ident(t.table), names_sql(names))
            ) as copy:
                copy.write(text)
        except psycopg.errors.UniqueViolation:
            self.conn.execute("ROLLBACK TO SAVEPOINT _replicator_fresh; RELEASE SAVEPOINT _replicator_fresh")
            return False
        self.conn.execute("RELEASE SAVEPOINT _replicator_fresh")
        return True

    def _update(self, t: Target, batch: fold.TableBatch, ops: list[fold.Upsert]) -> None:
        """Rows whose unchanged TOAST values stay as the destination holds them."""
        cols = [
            (i, n)
            for i, n in self._columns(t, batch)
            if ops[0].values[i] is not UNCHANGED_TOAST or n in t.key
        ]
        names = [n for _, n in cols]
        stage = self._stage(t, names, _project(ops, [i for i, _ in cols], len(batch.relation.columns)))
        update = update_from(t.table, stage, names, t.key, t.key_nullable, self._deletes)
        if update is not None:
            self.conn.execute(update)

    def _move(self, t: Target, batch: fold.TableBatch, new_key: fold.Key, op: fold.Upsert) -> None:
        """A key change with unchanged TOAST values: take those from the row at the old key."""
        assert op.base_key is not None
        cols = self._columns(t, batch)
        exprs = [
            sql.Identifier(n) if op.values[i] is UNCHANGED_TOAST else sql.SQL("{}::{}").format(
                sql.Literal(op.values[i]), sql.SQL(t.table.columns[n].type_sql)
            )
            for i, n in cols
        ]
        where = sql.SQL(" AND ").join(
            sql.SQL("{} IS NOT DISTINCT FROM {}::{}").format(
                sql.Identifier(k), sql.Literal(v), sql.SQL(t.table.columns[k].type_sql)
            )
            for k, v in zip(t.key, op.base_key, strict=True)
        )
        names = [n for _, n in cols]
        sets = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in t.key
        )
        table = ident(t.table)
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM {} WHERE {} ON CONFLICT ({}) DO UPDATE SET {}"
            ).format(table, names_sql(names), sql.SQL(", ").join(exprs), table, where, names_sql(t.key), sets)
        )

    def _apply_in_order(self, t: Target, batch: fold.TableBatch) -> None:
        """Tables without a key: each change in order; runs of inserts as one COPY (keyless.py),
        updates and deletes (REPLICA IDENTITY FULL) one row at a time."""
        cols = self._columns(t, batch)
        table = ident(t.table)
        for run in keyless.runs(batch.in_order):
            if isinstance(run, list):
                keyless.copy_inserts(self.conn, t.table, cols, len(batch.relation.columns), run)
                continue
            ch = run
            assert ch.old is not None
            old = ch.old
            same = sql.SQL(" AND ").join(
                sql.SQL("{}::text IS NOT DISTINCT FROM {}::text").format(
                    sql.Identifier(n), self._typed(t, n, old[i])
                )
                for i, n in cols
                if old[i] is not UNCHANGED_TOAST
            )
            one_row = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(table, same)
            if ch.op is Op.DELETE:
                self.conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(table, one_row))
            else:
                assert ch.new is not None
                new = ch.new
                sets = sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(n), self._typed(t, n, new[i]))
                    for i, n in cols
                    if new[i] is not UNCHANGED_TOAST
                )
                self.conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(table, sets, one_row))

    def _typed(self, t: Target, name: str, value: Any) -> sql.Composable:
        return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(t.table.columns[name].type_sql))


def _by_unchanged(ops: list[fold.Upsert]) -> list[list[fold.Upsert]]:
    groups: dict[tuple[int, ...], list[fold.Upsert]] = {}
    for op in ops:
        groups.setdefault(fold.unchanged_positions(op.values), []).append(op)
    return list(groups.values())


def _project(ops: list[fold.Upsert], positions: list[int], width: int) -> list[Sequence[Any]]:
    """The values at ``positions`` of each operation's row (the rows themselves when that is all of them)."""
    if positions == list(range(width)):
        return [op.values for op in ops]
    if len(positions) == 1:
        (i,) = positions
        return [(op.values[i],) for op in ops]
    pick = operator.itemgetter(*positions)
    return [pick(op.values) for op in ops]
