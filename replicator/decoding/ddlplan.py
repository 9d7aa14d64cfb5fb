"""What a destination must do for one captured schema change: a list of steps, worked out from the
table's shape before and after (``decoding/ddl.py``). Values only: the destination applies them
(``destinations/postgres/schemasync.py``), the realtime engine decides which tables they concern.

Columns are matched by attnum, so a rename is a rename (not a drop and an add) and a type change
keeps the column's place. Values the destination cannot recompute are copied from the source
(``Refresh``): a table rewritten by a volatile default (``ADD COLUMN ... DEFAULT random()``) or by
a conversion that is not an immutable cast of the column alone (``ALTER COLUMN TYPE ... USING``,
a cast that depends on the session such as timestamp -> timestamptz); a partition attached with
its rows; a table that enters replication holding rows (``CREATE TABLE AS``, moved into a
replicated schema).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from replicator.decoding.ddl import (
    REWRITE_COLUMN,
    REWRITE_DEFAULT,
    ColumnShape,
    ConstraintShape,
    IndexShape,
    TableEvent,
    TableShape,
)
from replicator.lsn import Lsn

TableName = tuple[str, str]


@dataclass(frozen=True)
class Policy:
    """What the destination does with what the source dropped (destination config ``schema-changes``)."""

    dropped_columns: Literal["drop", "keep"] = "drop"
    dropped_tables: Literal["keep", "drop"] = "keep"


# -- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateTable:
    table: TableName
    shape: TableShape


@dataclass(frozen=True)
class DropTable:
    table: TableName
    keep: bool  # keep it at the destination (it no longer receives changes)


@dataclass(frozen=True)
class RenameTable:
    table: TableName
    to: TableName


@dataclass(frozen=True)
class AddColumn:
    table: TableName
    column: ColumnShape
    filled: str | None  # the value the rows already there read (text form), None: NULL or unknown
    recompute: bool  # False: the values come from the source by a Refresh (volatile default)


@dataclass(frozen=True)
class DropColumn:
    table: TableName
    name: str
    keep: bool  # keep it (NULL in rows written from now on)


@dataclass(frozen=True)
class RenameColumn:
    table: TableName
    name: str
    to: str


@dataclass(frozen=True)
class AlterType:
    table: TableName
    name: str
    type_sql: str
    type_oid: int
    typmod: int
    collation: str | None
    recompute: bool  # the destination converts its values as the source did; else a Refresh follows


@dataclass(frozen=True)
class SetNotNull:
    table: TableName
    name: str
    not_null: bool


@dataclass(frozen=True)
class SetDefault:
    table: TableName
    name: str
    default: str | None


@dataclass(frozen=True)
class DropExpression:
    """A generated column became a plain one (ALTER COLUMN ... DROP EXPRESSION)."""

    table: TableName
    name: str


@dataclass(frozen=True)
class CreateIndex:
    table: TableName
    index: IndexShape


@dataclass(frozen=True)
class DropIndex:
    table: TableName
    name: str


@dataclass(frozen=True)
class RenameIndex:
    table: TableName
    name: str
    to: str


@dataclass(frozen=True)
class AddConstraint:
    table: TableName
    constraint: ConstraintShape


@dataclass(frozen=True)
class DropConstraint:
    table: TableName
    name: str


@dataclass(frozen=True)
class RenameConstraint:
    table: TableName
    name: str
    to: str


@dataclass(frozen=True)
class DeleteRows:
    """Rows that left the table without a row change (a partition detached or dropped)."""

    table: TableName
    where: str  # pg_get_partition_constraintdef of the partition, naming the table's columns
    why: str


@dataclass(frozen=True)
class Refresh:
    """Copy rows from the source, as of a snapshot taken now, into the destination table once the
    stream reaches that snapshot's position: the whole table, or one partition's rows."""

    table: TableName
    relid: int  # the source relation to read: the table, or the partition attached
    whole: bool  # the whole table (rows the source no longer has go); False: upsert these rows
    why: str


Step = (
    CreateTable
    | DropTable
    | RenameTable
    | AddColumn
    | DropColumn
    | RenameColumn
    | AlterType
    | SetNotNull
    | SetDefault
    | DropExpression
    | CreateIndex
    | DropIndex
    | RenameIndex
    | AddConstraint
    | DropConstraint
    | RenameConstraint
    | DeleteRows
    | Refresh
)


@dataclass
class SchemaChange:
    """One captured command's steps for one slot's destination tables, and what they do to the
    tables receiving changes: ``removed`` stop (dropped, renamed from, no longer replicated),
    ``added`` start, with their key and whether it may hold NULLs (created, renamed to, key changed)."""

    lsn: Lsn  # the DDL message's position
    command: str
    steps: list[Step]
    removed: dict[TableName, int] = field(default_factory=dict)  # -> source relid
    # -> (key, may the key hold NULLs, source relid, where the key comes from)
    added: dict[TableName, tuple[tuple[str, ...], bool, int, str | None]] = field(default_factory=dict)


def describe(step: Step) -> str:
    """One line for logs and ``replicator status``."""
    t = ".".join(step.table)
    match step:
        case CreateTable():
            return f"create table {t}"
        case DropTable(keep=keep):
            return f"table {t} dropped at the source" + ("; kept at the destination" if keep else "; dropped")
        case RenameTable(to=to):
            return f"rename table {t} to {'.'.join(to)}"
        case AddColumn(column=c, filled=filled):
            with_default = f" (rows read {filled!r})" if filled is not None else ""
            return f"add column {c.name} {c.type_sql} to {t}{with_default}"
        case DropColumn(name=name, keep=keep):
            return f"drop column {name} of {t}" + (" (kept, NULL from now on)" if keep else "")
        case RenameColumn(name=name, to=to):
            return f"rename column {name} of {t} to {to}"
        case AlterType(name=name, type_sql=type_sql):
            return f"column {name} of {t} becomes {type_sql}"
        case SetNotNull(name=name, not_null=not_null):
            return f"column {name} of {t} {'set' if not_null else 'drop'} not null"
        case SetDefault(name=name, default=default):
            return (
                f"column {name} of {t} default {default}" if default else f"column {name} of {t} drop default"
            )
        case DropExpression(name=name):
            return f"column {name} of {t} no longer generated"
        case CreateIndex(index=index):
            return f"create index {index.name} on {t}"
        case DropIndex(name=name):
            return f"drop index {name} of {t}"
        case RenameIndex(name=name, to=to):
            return f"rename index {name} of {t} to {to}"
        case AddConstraint(constraint=c):
            return f"add constraint {c.name} to {t}: {c.definition}"
        case DropConstraint(name=name):
            return f"drop constraint {name} of {t}"
        case RenameConstraint(name=name, to=to):
            return f"rename constraint {name} of {t} to {to}"
        case DeleteRows(why=why):
            return f"remove rows of {t}: {why}"
        case Refresh(why=why):
            return f"copy rows of {t} from the source: {why}"
    raise AssertionError(step)


# -- planning -----------------------------------------------------------------------------------


def plan_created(table: TableName, event: TableEvent, why: str) -> list[Step]:
    """A table that starts being replicated: created like the source; its rows copied if it has any."""
    assert event.after is not None
    steps: list[Step] = [CreateTable(table, event.after)]
    steps += [CreateIndex(table, i) for i in event.after.indexes]
    steps += [AddConstraint(table, c) for c in event.after.constraints if c.type != "f"]
    if event.rows is not False:
        steps.append(Refresh(table, event.relid, True, why))
    return steps


def plan_altered(table: TableName, event: TableEvent, using: bool, policy: Policy) -> list[Step]:
    """The steps taking the destination table ``table`` (the source's ``event.before``) to
    ``event.after``."""
    before, after = event.before, event.after
    assert before is not None and after is not None
    steps: list[Step] = []
    if after.qualified != table:
        steps.append(RenameTable(table, after.qualified))
        table = after.qualified
    old, new = before.by_attnum(), after.by_attnum()
    refresh_why: list[str] = []
    # Drops first (a new column may take a dropped one's name), then renames, then the rest.
    for attnum, col in old.items():
        if attnum not in new:
            steps.append(DropColumn(table, col.name, policy.dropped_columns == "keep"))
    renames = [(old[a].name, new[a].name) for a in old if a in new and old[a].name != new[a].name]
    steps += _renames(table, renames)
    for attnum, col in new.items():
        was = old.get(attnum)
        if was is None:
            recompute = not event.rewrite & REWRITE_DEFAULT
            if not recompute:
                refresh_why.append(f"column {col.name} was filled by a volatile default")
            steps.append(AddColumn(table, col, event.filled.get(col.name), recompute))
            continue
        if (was.type_oid, was.typmod, was.collation) != (col.type_oid, col.typmod, col.collation):
            recompute = not (event.rewrite & REWRITE_COLUMN) or (
                not using and event.casts.get(col.name, False)
            )
            if not recompute:
                refresh_why.append(
                    f"column {col.name} was converted to {col.type_sql} "
                    + ("by a USING expression" if using else "by a cast that is not immutable")
                )
            steps.append(
                AlterType(table, col.name, col.type_sql, col.type_oid, col.typmod, col.collation, recompute)
            )
        if was.generated is not None and col.generated is None:
            steps.append(DropExpression(table, col.name))
        if was.default != col.default and col.generated is None:
            steps.append(SetDefault(table, col.name, col.default))
        if was.not_null != col.not_null:
            steps.append(SetNotNull(table, col.name, col.not_null))
    steps += _index_steps(table, before, after)
    steps += _constraint_steps(table, before.constraints, after.constraints)
    steps += _partition_steps(table, before, after, event.partition_rows)
    if refresh_why:
        steps.append(Refresh(table, event.relid, True, "; ".join(refresh_why)))
    return steps


def plan_dropped(table: TableName, policy: Policy) -> list[Step]:
    return [DropTable(table, policy.dropped_tables == "keep")]


def _renames(table: TableName, renames: list[tuple[str, str]]) -> list[Step]:
    """Column renames in an order that never collides (a -> b, b -> a goes through a spare name)."""
    steps: list[Step] = []
    pending = dict(renames)
    while pending:
        taken = set(pending)
        free = [(a, b) for a, b in pending.items() if b not in taken]
        if not free:  # a cycle: park one under a name nobody uses
            a, b = next(iter(pending.items()))
            spare = f"{a}_replicator_rename"
            steps.append(RenameColumn(table, a, spare))
            del pending[a]
            pending[spare] = b
            continue
        for a, b in free:
            steps.append(RenameColumn(table, a, b))
            del pending[a]
    return steps


_INDEX_TABLE = re.compile(
    r"^(CREATE (?:UNIQUE )?INDEX )(\S+|\"(?:[^\"]|\"\")*\")( ON (?:ONLY )?)(.*?)( USING .*)$"
)


def _index_body(definition: str) -> str:
    """An index definition without its name and table (they change with renames, not the index)."""
    m = _INDEX_TABLE.match(definition)
    return f"{m.group(1)}_{m.group(3)}_{m.group(5)}" if m else definition


def _index_steps(table: TableName, before: TableShape, after: TableShape) -> list[Step]:
    old = {i.name: i for i in before.indexes}
    new = {i.name: i for i in after.indexes}
    steps: list[Step] = []
    gone = [i for n, i in old.items() if n not in new]
    came = [i for n, i in new.items() if n not in old]
    for i in list(gone):  # ALTER INDEX ... RENAME: the same index under another name
        twin = next((j for j in came if _index_body(j.definition) == _index_body(i.definition)), None)
        if twin is not None:
            steps.append(RenameIndex(table, i.name, twin.name))
            gone.remove(i)
            came.remove(twin)
    steps += [DropIndex(table, i.name) for i in gone]
    for name in old.keys() & new.keys():
        if _index_body(old[name].definition) != _index_body(new[name].definition):
            steps += [DropIndex(table, name), CreateIndex(table, new[name])]
    steps += [CreateIndex(table, i) for i in came]
    return steps


def _constraint_steps(
    table: TableName, before: Sequence[ConstraintShape], after: Sequence[ConstraintShape]
) -> list[Step]:
    old = {c.name: c for c in before}
    new = {c.name: c for c in after}
    steps: list[Step] = []
    gone = [c for n, c in old.items() if n not in new]
    came = [c for n, c in new.items() if n not in old]
    for c in list(gone):
        twin = next((d for d in came if (d.type, d.definition) == (c.type, c.definition)), None)
        if twin is not None:
            steps.append(RenameConstraint(table, c.name, twin.name))
            gone.remove(c)
            came.remove(twin)
    steps += [DropConstraint(table, c.name) for c in gone]
    for name in old.keys() & new.keys():
        if (old[name].type, old[name].definition) != (new[name].type, new[name].definition):
            steps += [DropConstraint(table, name), AddConstraint(table, new[name])]
    steps += [AddConstraint(table, c) for c in came]
    return steps


def _partition_steps(
    table: TableName, before: TableShape, after: TableShape, partition_rows: dict[int, bool]
) -> list[Step]:
    old = {p.relid: p for p in before.partitions}
    new = {p.relid: p for p in after.partitions}
    steps: list[Step] = []
    for relid, p in old.items():
        if relid not in new and p.leaf and p.constraint:
            steps.append(DeleteRows(table, p.constraint, f"partition {p.schema}.{p.name} left it"))
    for relid, p in new.items():
        if relid not in old and p.leaf and partition_rows.get(relid, True):
            steps.append(Refresh(table, relid, False, f"partition {p.schema}.{p.name} attached with rows"))
    return steps
