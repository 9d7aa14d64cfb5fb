"""Columns that changed at the source between two passes: what the destination must do.

Before each pass every table's selected source columns are compared with the destination
table and with the columns the last pass saw (kept in the table's watermark, by ``attnum``,
the column's identity at the source, which a rename keeps and a drop-and-add does not):

- renamed: a column whose attnum the last pass saw under another name -> RENAME COLUMN
  (values kept, nothing read again);
- dropped: a column the last pass saw whose attnum is gone -> DROP COLUMN, or kept with its
  NOT NULL dropped when the destination config says ``schema-changes: dropped-columns: keep``;
- added: a selected column the destination lacks -> ADD COLUMN;
- retyped: a column whose type changed since the last pass -> ALTER COLUMN TYPE.

Added and retyped columns are then filled by reading *every* row of the table in that pass:
no row change tells a delta pass about values a schema change wrote (``ADD COLUMN ... DEFAULT``
writes none, a ``USING`` expression rewrites rows whose update key stays put). The DDL, that
read, the deletes and the watermark commit in one destination transaction.

Without a record of the last pass's columns (tables copied before this was kept), renames and
drops cannot be told apart from a new column: a destination column the source lacks is left
alone (its NOT NULL dropped, so rows written later can leave it NULL), and a renamed column
arrives as a new one, filled by the read of every row. The record is kept from then on.
A change to the key's columns (rename, type) or to the key itself makes that table's pass
skip its deletes once (the next pass finds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicator.catalog import Column
from replicator.delta.tables import DeltaTable
from replicator.destinations.base import OUR_COLUMN_PREFIX, ColumnChanges, DestTable, Watermark

COLUMNS_KEY = "source_columns"  # in a watermark's value: [[attnum, name, type], ...]


@dataclass(frozen=True)
class ColumnPlan:
    changes: ColumnChanges
    read_every_row: bool  # values the changes need come from a read of every row
    key_touched: bool  # a key column was renamed or retyped: deletes wait for the next pass


def seen(t: DeltaTable) -> list[list[Any]]:
    """What to remember of ``t``'s source columns, for the next pass."""
    return [[c.attnum, c.name, c.type_sql] for c in t.st.table.columns]


def remember(mark: Watermark, t: DeltaTable) -> Watermark:
    return Watermark(mark.kind, {**mark.value, COLUMNS_KEY: seen(t)})


def plan(t: DeltaTable, target: DestTable, previous: Watermark | None) -> ColumnPlan:
    record = previous.value.get(COLUMNS_KEY) if previous is not None else None
    before: dict[int, tuple[str, str]] = {int(a): (str(n), str(ty)) for a, n, ty in record or []}
    now = {c.attnum: c for c in t.st.table.columns}
    selected = {c.name for c in t.st.columns}
    there = {name for name in target.columns if not name.startswith(OUR_COLUMN_PREFIX)}
    renamed: list[tuple[str, str]] = []
    dropped: list[str] = []
    retyped: list[Column] = []
    replaced: list[Column] = []
    for attnum, (old_name, old_type) in before.items():
        column = now.get(attnum)
        if column is None:  # dropped at the source
            if old_name in there:
                same_name = t.st.table.column(old_name)
                if same_name is None:
                    dropped.append(old_name)
                elif same_name.name in selected:  # dropped and added again: new values, maybe a new type
                    replaced.append(same_name)
            continue
        if column.name != old_name and old_name in there and column.name not in there:
            renamed.append((old_name, column.name))
            there = (there - {old_name}) | {column.name}
        if column.type_sql != old_type and column.name in there and column.name in selected:
            retyped.append(column)
    added = tuple(c for c in t.st.columns if c.name not in there)
    orphaned: tuple[str, ...] = ()
    if not before:  # no record: what the source lacks is left alone, taking NULLs from now on
        orphaned = tuple(
            name
            for name, c in target.columns.items()
            if name in there and c.not_null and t.st.table.column(name) is None
        )
    changes = ColumnChanges(tuple(renamed), tuple(dropped), added, tuple(retyped), orphaned, tuple(replaced))
    key = set(t.st.key)
    touched = any(n in key for _, n in renamed) or any(c.name in key for c in retyped + replaced)
    return ColumnPlan(changes, bool(added or retyped or replaced), touched)
