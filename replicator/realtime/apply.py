"""Applying decoded changes to a PostgreSQL destination: set-wise, in source-transaction units.

One destination transaction covers one or more whole source transactions and ends by writing
the slot checkpoint (the end LSN of the last source commit it covers), so a crash leaves the
destination exactly at a source commit boundary and the stream resumes right after it.

Inside it, the ``Writer`` applies units folded per key (``fold.py``, at most ``fetch-size-rows``
changes each) and prepared (``staging.py``): per table a TRUNCATE first, then moves, deletes
(by key array, or a staged key set), rows known to be new (COPYed straight into the table),
full-row updates and partial updates (staged with COPY into a session temp table and merged
with one statement). A source transaction larger than a unit is applied in several units
inside the same destination transaction, so memory stays bounded and the transaction is still
never half-applied.

Statement shapes, chosen by measurement (see bench/realtime.py):

- Joins of a stage to its table are forced to nested loops over the table's key index. With
  hash or merge joins allowed, the planner scans the whole destination table for each batch
  of deletes or updates (a seq scan looks cheaper than 10,000 index probes on paper), which
  makes every flush cost as much as the table is large. The stage is never ANALYZEd: with the
  join shape fixed its statistics change nothing, and ANALYZE cost ~30 ms a flush.
- Rows are upserted without ``ON CONFLICT`` where the key is NOT NULL: an INSERT of rows the
  fold knows to be new costs about half as much CPU as speculative insertion, and an UPDATE of
  existing rows writes less WAL than ``ON CONFLICT DO UPDATE`` (which also locks each row).
  Each statement is followed by the other one only if its row count says some rows were not
  where the fold expected them (e.g. a stream replayed over a later snapshot).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.decoding.changes import UNCHANGED_TOAST, Op, Relation
from replicator.destinations.postgres import SOFT_DELETE_COLUMN, DestTable, describe_table
from replicator.lsn import Lsn
from replicator.realtime import fold, staging

log = logging.getLogger(__name__)

# Key lookups, never whole-table scans (see the module docstring). LOCAL: ends with the transaction.
_BEGIN = "BEGIN; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

# Savepoints (subtransactions) per destination transaction for COPYing new rows straight in.
MAX_SAVEPOINTS = 32


@dataclass
class Target:
    """A destination table and what we know about it."""

    table: DestTable
    key: tuple[str, ...]  # destination key columns ((): no key, changes applied one by one)
    key_nullable: bool = False

    @property
    def ident(self) -> sql.Identifier:
        return self.table.ident


ColumnType = Callable[[int, int], str]  # (type oid, typmod) -> type as SQL, looked up at the source


@dataclass
class Writer:
    """The destination side: applies ``Folded`` units and commits them with their checkpoint.

    Owns the destination connection (autocommit; transactions are explicit) while it works.
    """

    conn: psycopg.Connection[Any]
    job: str
    slot: str
    targets: dict[tuple[str, str], Target]
    column_type: ColumnType
    soft_deletes: bool = False
    _in_txn: bool = False
    _stages: dict[tuple[Any, ...], sql.Identifier] = field(default_factory=dict)
    _stage_seq: int = 0
    _filled: set[tuple[Any, ...]] = field(default_factory=set)  # stages (by signature) filled in the open transaction
    _savepoints: int = 0  # in the open transaction
    _checked: dict[tuple[str, str], Relation] = field(default_factory=dict)  # relation shape the table fits
    _altered: set[tuple[str, str]] = field(default_factory=set)  # tables altered in the open transaction
    _stale: set[tuple[str, str]] = field(default_factory=set)  # tables whose ALTER was rolled back
    applied_changes: int = 0

    def apply(self, folded: fold.Folded) -> None:
        """Apply one unit inside the open destination transaction (opening it if needed)."""
        self._begin()
        self.flush(folded.batches)

    def commit(self, lsn: Lsn) -> None:
        """Write the checkpoint ``lsn`` and commit: everything applied is now durable."""
        self._begin()
        self.conn.execute(
            """INSERT INTO _replicator.slot_checkpoints (job, slot_name, lsn) VALUES (%s, %s, %s)
               ON CONFLICT (job, slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()""",
            (self.job, self.slot, str(lsn)),
        )
        self.conn.execute("COMMIT")
        self._in_txn = False
        self._altered.clear()
        self._filled.clear()
        self._savepoints = 0

    def rollback(self) -> None:
        """Abandon the open destination transaction, if one is open."""
        if not self._in_txn:
            return
        self._in_txn = False
        if not self.conn.closed:
            try:
                self.conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
        # Stages created in the transaction went with it (the others are merely left unused).
        self._stages.clear()
        self._filled.clear()
        self._savepoints = 0
        # So did its ALTER TABLEs: what we learnt of those tables is stale (described again when next used).
        self._stale |= self._altered
        self._altered.clear()

    def reset_session(self) -> None:
        """After reconnecting to the destination: the session's staging tables are gone."""
        self._stages.clear()
        self._filled.clear()
        self._checked.clear()

    def _begin(self) -> None:
        if not self._in_txn:
            self.conn.execute(_BEGIN)
            self._in_txn = True

    # -- relations and schema changes ------------------------------------------------------

    def _adapt_destination(self, target: Target, rel: Relation) -> None:
        """Add columns the source gained; let NOT NULL columns the source lost take NULLs."""
        dest = target.table
        added = [c for c in rel.columns if c.name not in dest.columns]
        lost = [
            c for c in dest.columns.values()
            if c.name not in rel.names and c.not_null and not c.generated and c.name != SOFT_DELETE_COLUMN
        ]
        if not added and not lost:
            return
        for col in added:
            type_sql = self.column_type(col.type_oid, col.typmod)
            log.info("%s: new column %s %s at the source; adding it at the destination", rel.qualified_name, col.name, type_sql)
            self.conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    dest.ident, sql.Identifier(col.name), sql.SQL(type_sql)
                )
            )
        for c in lost:
            log.info("%s: column %s is gone at the source; it takes NULLs from now on", rel.qualified_name, c.name)
            self.conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(dest.ident, sql.Identifier(c.name))
            )
        self._altered.add((dest.schema, dest.name))
        refreshed = describe_table(self.conn, dest.schema, dest.name)
        assert refreshed is not None
        target.table = refreshed
        # Staging tables were shaped like the old table.
        for sig in [k for k in self._stages if k[0] == (dest.schema, dest.name)]:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._stages.pop(sig)))

    # -- flushing --------------------------------------------------------------------------

    def flush(self, batches: dict[tuple[str, str], fold.TableBatch]) -> None:
        """Apply folded operations inside the open destination transaction."""
        for key, batch in batches.items():
            target = self.targets[key]
            if key in self._stale:
                refreshed = describe_table(self.conn, *key)
                assert refreshed is not None
                target.table = refreshed
                self._stale.discard(key)
                self._checked.pop(key, None)
            if self._checked.get(key) is not batch.relation:
                self._adapt_destination(target, batch.relation)
                self._checked[key] = batch.relation
            if batch.truncated:
                self._truncate(target)
            if batch.keyless:
                self._apply_in_order(target, batch)
            else:
                p = batch.prepared or staging.prepare(batch, texts=False)
                for new_key, op in p.moves:
                    self._move(target, batch, new_key, op)
                if p.deletes:
                    self._delete(target, batch, p.deletes, p.deleted_keys)
                if p.fresh:
                    self._upsert(target, batch, p.fresh, True, p.fresh_text)
                if p.existing:
                    self._upsert(target, batch, p.existing, False, p.existing_text)
                for group in _by_unchanged(p.partial):
                    self._update(target, batch, group)
            self.applied_changes += batch.changes

    def _truncate(self, t: Target) -> None:
        if self.soft_deletes:
            self.conn.execute(
                sql.SQL("UPDATE {} SET {} = true").format(t.ident, sql.Identifier(SOFT_DELETE_COLUMN))
            )
        else:
            self.conn.execute(sql.SQL("TRUNCATE {}").format(t.ident))

    def _stage(
        self, t: Target, columns: Sequence[str], rows: Sequence[Sequence[Any]], role: str = ""
    ) -> sql.Identifier:
        """COPY ``rows`` (text-format values) into a session temp table shaped like ``columns``."""
        return self._stage_text(t, columns, staging.copy_text(rows, len(columns)), role)

    def _stage_text(self, t: Target, columns: Sequence[str], text: str, role: str = "") -> sql.Identifier:
        """COPY ``text`` (rows in COPY's text format) into a session temp table shaped like ``columns``.

        Stages empty themselves at commit (ON COMMIT DELETE ROWS: a truncation in place), so
        one is TRUNCATEd only when used twice in a transaction. TRUNCATE gives a table a new
        file and a new catalog row, ~4 ms each time; ``role`` keeps stages used together in a
        flush apart (inserted and updated rows).
        """
        sig = ((t.table.schema, t.table.name), tuple(columns), role)
        stage = self._stages.get(sig)
        if stage is None:
            self._stage_seq += 1
            stage = sql.Identifier(f"_replicator_stage_{self._stage_seq}")
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA").format(
                    stage, _cols(columns), t.ident
                )
            )
            self._stages[sig] = stage
        elif sig in self._filled:
            self.conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._filled.add(sig)
        with self.conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, _cols(columns))) as copy:
            copy.write(text)
        return stage

    def _match(self, t: Target, left: str, right: str) -> sql.Composable:
        op = sql.SQL(" IS NOT DISTINCT FROM ") if t.key_nullable else sql.SQL(" = ")
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{}{}{}.{}").format(sql.Identifier(left), sql.Identifier(k), op, sql.Identifier(right), sql.Identifier(k))
            for k in t.key
        )

    def _delete(self, t: Target, batch: fold.TableBatch, keys: list[fold.Key], literal: str | None) -> None:
        """Rows by key: a one-column key is passed as an array (probed through the key's index,
        no stage to fill); other keys are staged."""
        type_sql = t.table.columns[t.key[0]].type_sql
        if literal is not None and len(t.key) == 1 and not t.key_nullable and not type_sql.endswith("]"):
            where = sql.SQL("{} = ANY({}::{}[])").format(sql.Identifier(t.key[0]), sql.Placeholder(), sql.SQL(type_sql))
            if self.soft_deletes:
                q = sql.SQL("UPDATE {} SET {} = true WHERE {}").format(t.ident, sql.Identifier(SOFT_DELETE_COLUMN), where)
            else:
                q = sql.SQL("DELETE FROM {} WHERE {}").format(t.ident, where)
            self.conn.execute(q, (literal,))
            return
        stage = self._stage(t, t.key, keys)
        if self.soft_deletes:
            q = sql.SQL("UPDATE {} AS d SET {} = true FROM {} AS s WHERE {}").format(
                t.ident, sql.Identifier(SOFT_DELETE_COLUMN), stage, self._match(t, "d", "s")
            )
        else:
            q = sql.SQL("DELETE FROM {} AS d USING {} AS s WHERE {}").format(t.ident, stage, self._match(t, "d", "s"))
        self.conn.execute(q)

    def _columns(self, t: Target, batch: fold.TableBatch) -> list[tuple[int, str]]:
        """(position in the stream's values, name) of the columns the destination stores."""
        dest = t.table.columns
        return [(i, c.name) for i, c in enumerate(batch.relation.columns) if c.name in dest and not dest[c.name].generated]

    def _upsert(
        self, t: Target, batch: fold.TableBatch, ops: list[fold.Upsert], fresh: bool, text: str | None = None
    ) -> None:
        """Whole rows: inserted where the key has no row, else updated in place.

        ``text``: the rows in COPY format with every column of the stream (``staging``), used
        when the destination stores all of them. Rows expected to be new are first COPYed
        straight into the table (see ``_copy_fresh``)."""
        cols = self._columns(t, batch)
        names = [n for _, n in cols]
        if len(cols) != len(batch.relation.columns):
            text = None  # the destination leaves some out: format the projection here
        if fresh and text is not None and self._copy_fresh(t, names, text):
            return
        if text is not None:
            stage = self._stage_text(t, names, text, role="insert" if fresh else "update")
        else:
            stage = self._stage(t, names, _project(ops, [i for i, _ in cols], len(batch.relation.columns)),
                                role="insert" if fresh else "update")
        if t.key_nullable:
            # NULLs in the key: only the unique index (NULLS NOT DISTINCT) can find those rows.
            sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in t.key]
            if self.soft_deletes:
                sets.append(sql.SQL("{} = false").format(sql.Identifier(SOFT_DELETE_COLUMN)))
            action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
            self.conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                    t.ident, _cols(names), _cols(names), stage, _cols(t.key), action
                )
            )
            return
        insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS s WHERE NOT EXISTS (SELECT FROM {} AS d WHERE {})").format(
            t.ident, _cols(names), _cols(names), stage, t.ident, self._match(t, "d", "s")
        )
        update = self._update_statement(t, names, stage)
        first, then = (insert, update) if fresh else (update, insert)
        done = self.conn.execute(first).rowcount if first is not None else 0
        if done < len(ops) and then is not None:
            self.conn.execute(then)

    def _copy_fresh(self, t: Target, names: Sequence[str], text: str) -> bool:
        """COPY rows expected to be new straight into the table: no stage to fill and read, no
        probe before each insert (the key's unique index checks). If one is there after all
        (a stream replayed over a later snapshot), the COPY fails, is rolled back to a
        savepoint and False is returned: the caller stages them. Not with NULLs possible in
        the key (the index may not see them as duplicates), not with soft deletes (a deleted
        row kept there makes re-inserts common), and at most MAX_SAVEPOINTS times per
        transaction (more subtransactions would slow visibility checks of other sessions)."""
        if t.key_nullable or self.soft_deletes or self._savepoints >= MAX_SAVEPOINTS:
            return False
        self._savepoints += 1
        self.conn.execute("SAVEPOINT _replicator_fresh")
        try:
            with self.conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(t.ident, _cols(names))) as copy:
                copy.write(text)
        except psycopg.errors.UniqueViolation:
            self.conn.execute("ROLLBACK TO SAVEPOINT _replicator_fresh; RELEASE SAVEPOINT _replicator_fresh")
            return False
        self.conn.execute("RELEASE SAVEPOINT _replicator_fresh")
        return True

    def _update_statement(self, t: Target, names: Sequence[str], stage: sql.Identifier) -> sql.Composable | None:
        sets = [sql.SQL("{0} = s.{0}").format(sql.Identifier(n)) for n in names if n not in t.key]
        if self.soft_deletes:
            sets.append(sql.SQL("{} = false").format(sql.Identifier(SOFT_DELETE_COLUMN)))
        if not sets:
            return None
        return sql.SQL("UPDATE {} AS d SET {} FROM {} AS s WHERE {}").format(
            t.ident, sql.SQL(", ").join(sets), stage, self._match(t, "d", "s")
        )

    def _update(self, t: Target, batch: fold.TableBatch, ops: list[fold.Upsert]) -> None:
        """Rows whose unchanged TOAST values stay as the destination holds them."""
        cols = [(i, n) for i, n in self._columns(t, batch) if ops[0].values[i] is not UNCHANGED_TOAST or n in t.key]
        names = [n for _, n in cols]
        stage = self._stage(t, names, _project(ops, [i for i, _ in cols], len(batch.relation.columns)))
        update = self._update_statement(t, names, stage)
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
        sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in t.key)
        self.conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE {} ON CONFLICT ({}) DO UPDATE SET {}").format(
                t.ident, _cols(names), sql.SQL(", ").join(exprs), t.ident, where, _cols(t.key), sets
            )
        )

    def _apply_in_order(self, t: Target, batch: fold.TableBatch) -> None:
        """Tables without a key (REPLICA IDENTITY FULL): each change in order, one row at a time."""
        cols = self._columns(t, batch)
        names = [n for _, n in cols]
        for ch in batch.in_order:
            if ch.op is Op.INSERT:
                assert ch.new is not None
                self.conn.execute(
                    sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                        t.ident, _cols(names), sql.SQL(", ").join(self._typed(t, n, ch.new[i]) for i, n in cols)
                    )
                )
                continue
            assert ch.old is not None
            match = sql.SQL(" AND ").join(
                sql.SQL("{}::text IS NOT DISTINCT FROM {}::text").format(sql.Identifier(n), self._typed(t, n, ch.old[i]))
                for i, n in cols
                if ch.old[i] is not UNCHANGED_TOAST
            )
            one_row = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(t.ident, match)
            if ch.op is Op.DELETE:
                self.conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(t.ident, one_row))
            else:
                assert ch.new is not None
                sets = sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.Identifier(n), self._typed(t, n, ch.new[i]))
                    for i, n in cols
                    if ch.new[i] is not UNCHANGED_TOAST
                )
                self.conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(t.ident, sets, one_row))

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


def _cols(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)

