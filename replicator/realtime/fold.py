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
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from replicator.decoding.changes import UNCHANGED_TOAST, Change, Op, Relation, Values

Key = tuple[str | None, ...]


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
    in_order: list[Change] = field(default_factory=list)  # tables without a key: no folding possible
    changes: int = 0

    def __post_init__(self) -> None:
        # Built once: this runs for every change.
        positions = self.key_positions
        if len(positions) == 1:
            (i,) = positions
            self._key_of: Callable[[Values], Key] = lambda row: (row[i],)  # type: ignore[return-value]
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
        op = change.op
        ops = self.ops
        if op is _INSERT:
            new = change.new
            assert new is not None
            key = self._key_of(new)
            prev = ops.get(key)
            ops[key] = Upsert(new, None, prev is None or (prev is not DELETE and prev.fresh))  # type: ignore[union-attr]
        elif op is _DELETE:
            assert change.old is not None
            ops[self._key_of(change.old)] = DELETE
        elif op is _UPDATE:
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


def fill_unchanged(values: Values, earlier: Values) -> Values:
    """``values`` with each UNCHANGED_TOAST replaced by the earlier value at that position."""
    if UNCHANGED_TOAST not in values:
        return values
    return tuple(e if v is UNCHANGED_TOAST else v for v, e in zip(values, earlier, strict=True))


def split(ops: dict[Key, Operation]) -> tuple[list[Key], list[Upsert], list[Upsert], list[tuple[Key, Upsert]]]:
    """(deleted keys, full upserts, partial updates of existing rows, moves reading an old row)."""
    deletes: list[Key] = []
    full: list[Upsert] = []
    partial: list[Upsert] = []
    moves: list[tuple[Key, Upsert]] = []
    for key, op in ops.items():
        if isinstance(op, Delete):
            deletes.append(key)
        elif op.base_key is not None and op.partial:
            moves.append((key, op))
        elif op.partial:
            partial.append(op)
        else:
            full.append(op)
    return deletes, full, partial, moves


def unchanged_positions(values: Sequence[object]) -> tuple[int, ...]:
    return tuple(i for i, v in enumerate(values) if v is UNCHANGED_TOAST)
