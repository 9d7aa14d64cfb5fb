"""Folding a run of row changes into one net operation per key (last write wins, a delete removes).

Applying N changes to one row costs the same as applying the last one, so a batch is reduced
to at most one operation per destination key before it touches the destination. Unchanged
TOAST values are filled from an earlier change in the batch when there is one; otherwise they
stay marked, and the destination keeps what it holds.

An UPDATE that changes the key moves the row: the old key is deleted, the new key written.
If such an UPDATE carries unchanged TOAST values that the batch cannot supply, they must be
read from the destination's row at the old key: that is an upsert with a ``base_key``.

An upsert whose key had no row before the batch (first written by an INSERT, or by a key-moving
UPDATE, with no earlier operation on that key in the batch) is ``fresh``: the destination most
likely has no row there, so it is inserted first and updated only if it was there after all.

``Folder`` does this for every table of a stream, between destination commits, and hands out
``Folded`` units (what one flush applies); it never touches the destination, so it can run on
the thread that reads the stream while another one writes (``realtime/worker.py``). A
destination's ``Applier`` applies the units; ``Prepared`` is what it may work out beforehand,
on the reading thread.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from replicator.decoding.changes import (
    UNCHANGED_TOAST,
    Change,
    Op,
    Relation,
    ReplicaIdentity,
    Truncate,
    Value,
    Values,
)
from replicator.errors import DestinationError
from replicator.lsn import Lsn

Key = tuple[Value, ...]  # a row's key values (UNCHANGED_TOAST: see TableBatch._update)


@dataclass(slots=True)
class Upsert:
    """The row's final values. ``base_key``: where unchanged TOAST values are to be read from
    (None: the row's own key, i.e. the row must already exist). ``fresh``: the key had no row
    when the batch began (a hint for the order of statements, not part of the value)."""

    values: Values
    base_key: Key | None = None
    fresh: bool = field(default=False, compare=False)

    @property
    def partial(self) -> bool:
        return UNCHANGED_TOAST in self.values


class Delete:
    __slots__ = ()


DELETE = Delete()

Operation = Upsert | Delete

_INSERT, _UPDATE, _DELETE = Op.INSERT, Op.UPDATE, Op.DELETE


@dataclass
class TableBatch:
    """Net operations for one destination table, for the changes since the last flush."""

    relation: Relation
    key_positions: tuple[int, ...]  # positions of the destination key in relation.columns
    truncated: bool = False  # a TRUNCATE comes first, before ``ops``
    ops: dict[Key, Operation] = field(default_factory=dict)
    # Tables without a key: no folding possible. With ``keep_order``, also those whose folded
    # operations may collide on a unique index, to be applied one by one if they do.
    in_order: list[Change] = field(default_factory=list)
    changes: int = 0
    keep_order: bool = False
    prepared: Prepared | None = field(default=None, repr=False, compare=False)  # by the destination

    def __post_init__(self) -> None:
        # Built once: this runs for every change.
        positions = self.key_positions
        if len(positions) == 1:
            (i,) = positions
            self._key_of: Callable[[Values], Key] = lambda row: (row[i],)
        elif positions:
            pick = operator.itemgetter(*positions)
            self._key_of = pick
        else:
            self._key_of = lambda row: ()
        self._keyless = not positions

    @property
    def keyless(self) -> bool:
        return self._keyless

    def key_of(self, row: Values) -> Key:
        return self._key_of(row)

    def add(self, change: Change) -> None:
        self.changes += 1
        if self._keyless:
            self.in_order.append(change)
            return
        if self.keep_order:
            self.in_order.append(change)
        op = change.op
        ops = self.ops
        if op is _INSERT:
            new = change.new
            assert new is not None
            key = self._key_of(new)
            prev = ops.get(key)
            ops[key] = Upsert(new, None, prev is None or (type(prev) is Upsert and prev.fresh))
        elif op is _DELETE:
            assert change.old is not None
            ops[self._key_of(change.old)] = DELETE
        elif op is _UPDATE:
            new = change.new
            if change.old is None and new is not None:  # the key did not change: the common case
                key = self._key_of(new)
                prev = ops.get(key)
                if prev is None:
                    ops[key] = Upsert(new, None, False)
                    return
                if type(prev) is Upsert:
                    # The row again (an OLTP batch updates hot rows many times): its latest values,
                    # in place. Nothing else holds a batch's operations while it is being fed.
                    prev.values = new if UNCHANGED_TOAST not in new else fill_unchanged(new, prev.values)
                    return
            self._update(change)

    def _update(self, change: Change) -> None:
        assert change.new is not None
        new_key = self._key_of(change.new)
        if change.old is None:
            old_key = new_key
        else:
            old_key = self._key_of(change.old)
            if UNCHANGED_TOAST in old_key:
                old_key = new_key  # identity FULL logs unchanged TOASTed keys as such; the key did not change
        values, base, fresh = change.new, None, False
        prev = self.ops.get(old_key)
        if isinstance(prev, Upsert):
            values, base, fresh = fill_unchanged(values, prev.values), prev.base_key, prev.fresh
        if old_key != new_key:
            self.ops[old_key] = DELETE
            if UNCHANGED_TOAST in values:
                base = base or old_key
            # The new key held no row at the source just before (keys are unique), and none in
            # this batch either unless an earlier operation on it says otherwise.
            self.ops[new_key] = Upsert(values, base, new_key not in self.ops)
        else:
            self.ops[new_key] = Upsert(values, base, fresh)

    def truncate(self) -> None:
        self.truncated = True
        self.ops.clear()
        self.in_order.clear()


@dataclass
class Prepared:
    """A table batch's operations, by the statement that applies them (``split``), and the rows
    already formatted the way the destination loads them, where it did that on the reading thread."""

    deletes: list[Key]
    fresh: list[Upsert]  # whole rows whose key had no row before the batch
    existing: list[Upsert]  # whole rows whose key had one
    partial: list[Upsert]  # rows with unchanged TOAST values, updated in place
    moves: list[tuple[Key, Upsert]]  # key changes that read unchanged TOAST values from the old row
    fresh_text: str | None = None  # ``fresh`` formatted for loading, every column of the stream
    existing_text: str | None = None  # likewise for ``existing``
    deleted_keys: str | None = None  # the deleted keys formatted as one value, for a one-column key

    @classmethod
    def sort(cls, batch: TableBatch) -> Prepared:
        deletes, full, partial, moves = split(batch.ops)
        fresh = [op for op in full if op.fresh]
        existing = [op for op in full if not op.fresh] if len(fresh) < len(full) else []
        return cls(deletes, fresh, existing, partial, moves)


TableKey = tuple[str, str]  # (schema, table) of a destination table


@dataclass
class Folded:
    """What one flush applies: net operations per destination table, in the order first touched."""

    batches: dict[TableKey, TableBatch]
    changes: int  # the changes folded into them


class Folder:
    """Folds a stream's changes per destination table, between destination commits.

    ``keys``: the destination key columns of each replicated table (changes to other tables are
    skipped); ``aliases``: leaf partition -> its root, for decoders that name partitions;
    ``ordered``: tables whose batches also keep their changes in source order (``keep_order``).
    ``change()`` hands out a ``Folded`` every ``flush_rows`` changes (a source transaction larger
    than that is applied in pieces inside one destination transaction: bounded memory) and when
    a table's shape changes mid-batch (values of different shapes cannot share a stage).
    ``commit()`` hands out the rest with the checkpoint, at a source transaction boundary.
    """

    def __init__(
        self,
        keys: Mapping[TableKey, tuple[str, ...]],
        aliases: Mapping[TableKey, TableKey] | None = None,
        flush_rows: int = 10_000,
        ordered: Collection[TableKey] = (),
    ):
        self.keys = dict(keys)
        self.ordered = frozenset(ordered)
        self.aliases = dict(aliases or {})
        self.flush_rows = flush_rows
        self._batches: dict[TableKey, TableBatch] = {}
        self._buffered = 0  # changes folded into _batches
        self._last_relation: Relation | None = None  # the relation of the last change, and its batch
        self._last_batch: TableBatch | None = None
        # id(relation) -> (relation, its batch or None: not replicated), for the batches being fed
        self._by_relation: dict[int, tuple[Relation, TableBatch | None]] = {}
        self._ready: list[Folded] = []
        # The open destination transaction: what it will cover once committed.
        self._pending_lsn: Lsn | None = None  # end LSN of the last source commit fed
        # Plain attributes, read by the pipeline at every source commit.
        self.pending_transactions = 0  # source transactions fed since the last commit
        self.transaction_changes = 0  # changes fed since the last commit
        self._txn_started: float | None = None

    # -- feeding ---------------------------------------------------------------------------

    def change(self, event: Change | Truncate) -> list[Folded] | None:
        """Fold one change; returns the units that are ready to apply, if any (rarely)."""
        if self._txn_started is None:
            self._txn_started = time.monotonic()
        if isinstance(event, Truncate):
            for rel in event.relations:
                batch = self._batch(rel)
                if batch is not None:
                    batch.truncate()
            return self._take_ready()
        rel = event.relation
        if rel is self._last_relation:  # runs of changes to one table: skip the lookups
            batch = self._last_batch
        else:
            # An OLTP transaction touches several tables in turn: remember each relation's batch.
            known = self._by_relation.get(id(rel))
            if known is not None and known[0] is rel:
                batch = known[1]
            else:
                batch = self._batch(rel)
                self._by_relation[id(rel)] = (rel, batch)
            self._last_relation, self._last_batch = rel, batch
        if batch is None:
            return self._take_ready()  # a published table we do not replicate (e.g. the heartbeat table)
        batch.add(event)
        self._buffered += 1
        self.transaction_changes += 1
        if self._buffered >= self.flush_rows:
            self._cut()
        return self._take_ready() if self._ready else None

    def source_commit(self, end_lsn: Lsn) -> None:
        """A source transaction ended: everything fed so far belongs to complete transactions."""
        if self._txn_started is None:
            self._txn_started = time.monotonic()
        self._pending_lsn = end_lsn
        self.pending_transactions += 1

    def commit(self) -> tuple[list[Folded], Lsn] | None:
        """At a source transaction boundary: what is left to apply, and the checkpoint to commit
        with it (None if no source transaction ended since the last commit)."""
        if self._pending_lsn is None:
            return None
        self._cut()
        done, lsn = self._take_ready(), self._pending_lsn
        self._forget_pending()
        return done, lsn

    def take(self) -> list[Folded]:
        """Everything folded so far, ready or not (to apply inside the open transaction)."""
        self._cut()
        return self._take_ready()

    def clear(self) -> None:
        """Forget everything not committed (the stream will resend it from the checkpoint)."""
        self._batches, self._buffered, self._ready = {}, 0, []
        self._last_relation = self._last_batch = None
        self._by_relation = {}
        self._forget_pending()

    def _forget_pending(self) -> None:
        self._pending_lsn, self._txn_started = None, None
        self.pending_transactions = self.transaction_changes = 0

    @property
    def open_seconds(self) -> float:
        """How long ago the first event after the last commit was fed."""
        return 0.0 if self._txn_started is None else time.monotonic() - self._txn_started

    # -- batches ---------------------------------------------------------------------------

    def _batch(self, rel: Relation) -> TableBatch | None:
        key = (rel.schema, rel.table)
        key = self.aliases.get(key, key)
        dest_key = self.keys.get(key)
        if dest_key is None:
            return None
        batch = self._batches.get(key)
        if batch is not None and batch.relation is not rel and batch.relation.columns != rel.columns:
            # The table's shape changed mid-batch (ALTER TABLE): what was folded under the old
            # shape is applied first.
            self._cut()
            batch = None
        if batch is None:
            missing = [k for k in dest_key if k not in rel.names]
            if missing:
                raise DestinationError(
                    f"{rel.qualified_name}: the stream does not carry key column(s) {', '.join(missing)}"
                )
            _check_identity(rel, dest_key)
            batch = TableBatch(
                rel, tuple(rel.names.index(k) for k in dest_key), keep_order=key in self.ordered
            )
            self._batches[key] = batch
        return batch

    def _cut(self) -> None:
        if self._batches:
            self._ready.append(Folded(self._batches, self._buffered))
            self._batches, self._buffered = {}, 0
            self._last_relation = self._last_batch = None
            self._by_relation = {}

    def _take_ready(self) -> list[Folded]:
        ready, self._ready = self._ready, []
        return ready


def _check_identity(rel: Relation, dest_key: tuple[str, ...]) -> None:
    """Old rows are matched by ``dest_key``, which must be logged by the table's replica identity:
    chosen at start (``realtime/setup.py``), it may have been changed since (ALTER TABLE ...
    REPLICA IDENTITY), and then a DELETE would find no row."""
    if rel.replica_identity is ReplicaIdentity.FULL or not rel.key_indexes or not dest_key:
        return
    logged = rel.key_names()
    if not set(dest_key) <= set(logged):
        raise DestinationError(
            f"{rel.qualified_name}: its replica identity now logs ({', '.join(logged)}), but this run finds "
            f"rows by ({', '.join(dest_key)}): its updates and deletes could not be applied. Start the run "
            f"again: it chooses the columns the identity logs"
        )


def fill_unchanged(values: Values, earlier: Values) -> Values:
    """``values`` with each UNCHANGED_TOAST replaced by the earlier value at that position."""
    if UNCHANGED_TOAST not in values:
        return values
    return tuple(e if v is UNCHANGED_TOAST else v for v, e in zip(values, earlier, strict=True))


def split(
    ops: dict[Key, Operation],
) -> tuple[list[Key], list[Upsert], list[Upsert], list[tuple[Key, Upsert]]]:
    """(deleted keys, full upserts, partial updates of existing rows, moves reading an old row)."""
    deletes: list[Key] = []
    full: list[Upsert] = []
    partial: list[Upsert] = []
    moves: list[tuple[Key, Upsert]] = []
    for key, op in ops.items():
        if isinstance(op, Delete):
            deletes.append(key)
        elif UNCHANGED_TOAST in op.values:
            if op.base_key is not None:
                moves.append((key, op))
            else:
                partial.append(op)
        else:
            full.append(op)
    return deletes, full, partial, moves


def unchanged_positions(values: Sequence[object]) -> tuple[int, ...]:
    return tuple(i for i, v in enumerate(values) if v is UNCHANGED_TOAST)
