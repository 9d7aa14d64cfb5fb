"""What the destination can have of each source table's objects (read by ``replicator.tableobjects``).

An object that reads a column the filter leaves out, a foreign key to a table outside the filter (or
to one whose rows a filter condition thins out), an index that exists only on some partitions: each
is left out and named in a note, never a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from replicator.filters import SelectedTable
from replicator.tableobjects import ConstraintDef, SourceObjects, TableName, TableObjects


@dataclass
class PlannedObjects:
    """What the destination builds for one table, and what it leaves out (one note each)."""

    objects: TableObjects
    notes: list[str] = field(default_factory=list)


def plan_objects(
    source: SourceObjects, selected: list[SelectedTable], soft_deletes: bool = False
) -> dict[TableName, PlannedObjects]:
    """Trim each table's objects to what its destination table can have.

    Left out, each with a note: objects reading columns the filter leaves out; foreign keys to
    tables outside the filter, or to a table whose rows a filter condition thins out (its
    referencing rows may then point at nothing); indexes only some partitions have; with
    ``deletes: soft``, UNIQUE and EXCLUDE constraints and unique indexes (a deleted row stays,
    and its values would collide with the row that reuses them).
    """
    by_key = {(t.table.schema, t.table.name): t for t in selected}
    return {key: _plan_table(source, st, by_key, soft_deletes) for key, st in by_key.items()}


_KIND_NAMES = {
    "p": "primary key", "u": "unique constraint", "x": "exclusion constraint", "c": "check constraint",
    "f": "foreign key",
}  # fmt: skip
_SOFT = "not created (deletes: soft keeps deleted rows, whose values would collide)"


def _plan_table(
    source: SourceObjects, st: SelectedTable, by_key: dict[TableName, SelectedTable], soft_deletes: bool
) -> PlannedObjects:
    key = (st.table.schema, st.table.name)
    have = source.of(key)
    columns = frozenset(c.name for c in st.columns)
    notes: list[str] = []
    kept = TableObjects(key, collations=list(have.collations), collation_defs=source.collations_of(have))
    for index in have.indexes:
        note = _left_out(f"index {index.name}", index.columns, columns)
        if note is None and soft_deletes and index.unique:
            note = f"unique index {index.name} {_SOFT}"
        if note is None:
            kept.indexes.append(index)
        else:
            notes.append(f"{st.display}: {note}")
    for c in have.constraints:
        what = f"{_KIND_NAMES[c.kind]} {c.name}"
        note = _left_out(what, c.columns, columns)
        if note is None and soft_deletes and c.kind in ("u", "x"):
            note = f"{what} {_SOFT}"
        if note is None and c.kind == "f":
            note = _foreign_key_note(what, c, by_key)
        if note is None:
            kept.constraints.append(c)
        else:
            notes.append(f"{st.display}: {note}")
    kept.defaults = [d for d in have.defaults if d.column in columns]
    kept.sequences = [s for s in have.sequences if any(s.qualified in d.sequences for d in kept.defaults)]
    kept.identities = [i for i in have.identities if i.column in columns]
    notes += [
        f"{st.display}: index {name} exists on a partition only (the destination holds all partitions in "
        "one table): not created"
        for name in have.partition_only_indexes
    ]
    return PlannedObjects(kept, notes)


def _left_out(what: str, needs: frozenset[str], columns: frozenset[str]) -> str | None:
    missing = sorted(needs - columns)
    if not missing:
        return None
    return f"{what} reads column(s) {', '.join(missing)}, which the filter leaves out: not created"


def _foreign_key_note(what: str, fk: ConstraintDef, by_key: dict[TableName, SelectedTable]) -> str | None:
    assert fk.references is not None
    target = by_key.get(fk.references)
    ref = f"{fk.references[0]}.{fk.references[1]}"
    if target is None:
        return f"{what} references {ref}, which the filter leaves out: not created"
    if target.condition:
        return (f"{what} references {ref}, whose rows the filter's conditions select: not created (rows "
                "may point at rows left out)")  # fmt: skip
    if fk.referenced_columns - {col.name for col in target.columns}:
        return f"{what} references columns of {ref} the filter leaves out: not created"
    return None
