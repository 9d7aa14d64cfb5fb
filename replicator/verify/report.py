"""What ``verify`` prints: one line per table, its differing keys, schema gaps, what is not migrated.

    public.customers: equal (300 rows)
    public.orders: DIFFERENT (source 1,000 rows, destination 999 rows)
      missing at the destination: id=17
      changed: id=42
      schema: index orders_customer missing at the destination
    not migrated (move by hand): 2 views (0 at the destination), 1 trigger (0 at the destination), ...
    verify: 2 table(s), 1 DIFFERENT, in 0.4 s

Schema gaps (indexes, constraints, sequences behind the source) are shown, but only rows decide
the exit status: a table the user created at the destination may lack indexes on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.destinations.base import DestinationSession
from replicator.objectplan import PlannedObjects
from replicator.otherobjects import KINDS
from replicator.otherobjects import names as object_names
from replicator.tableobjects import sequence_values
from replicator.verify.compare import Found, Kind
from replicator.verify.plan import VerifyTable

_LABEL: dict[Kind, str] = {
    "missing": "missing at the destination",
    "extra": "extra at the destination",
    "changed": "changed",
}


@dataclass
class TableReport:
    display: str
    source_rows: int
    dest_rows: int
    present: bool = True
    missing_columns: tuple[str, ...] = ()
    differences: list[tuple[Kind, str]] = field(default_factory=list)  # (kind, key or row as shown)
    schema: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.present and not self.missing_columns and not self.differences


def by_table(
    tables: list[VerifyTable],
    found: list[Found],
    counts: dict[tuple[str, str], int],
    planned: dict[tuple[str, str], PlannedObjects],
    control: DestinationSession,
) -> list[TableReport]:
    grouped: dict[str, list[Found]] = {}
    for f in found:
        grouped.setdefault(f.table.display, []).append(f)
    reports = []
    for t in sorted(tables, key=lambda t: t.display):
        key = (t.st.table.schema, t.st.table.name)
        if t.dest is None:
            reports.append(TableReport(t.display, counts.get(key, 0), 0, present=False))
            continue
        parts = sorted(grouped.get(t.display, []), key=lambda f: _chunk_order(f))
        r = TableReport(
            t.display,
            sum(f.source_rows for f in parts),
            sum(f.dest_rows for f in parts),
            missing_columns=t.missing_columns,
        )
        for f in parts:
            r.differences.extend(_shown(t, f))
        if key in planned:
            r.schema = schema_gaps(control, key, planned[key])
        reports.append(r)
    return reports


def _chunk_order(f: Found) -> int:
    return 0 if f.chunk is None or f.chunk.lower is None else 1


def _shown(t: VerifyTable, f: Found) -> list[tuple[Kind, str]]:
    out: list[tuple[Kind, str]] = []
    if f.chunk is None:  # keyless: row hash -> (kind, row text, copies)
        for kind, text, copies in f.differences.values():
            out.append((kind, f"{text}" + (f" (x{copies})" if copies > 1 else "")))
        return sorted(out)
    assert t.order is not None
    names = t.order.names
    for key, (kind, _, _) in f.differences.items():
        if len(names) == 1:
            out.append((kind, f"{names[0]}={key[0]}"))
        else:
            out.append((kind, f"({', '.join(names)})=({', '.join(str(v) for v in key)})"))
    return out


def schema_gaps(control: DestinationSession, table: tuple[str, str], planned: PlannedObjects) -> list[str]:
    """What the destination table lacks of the objects it should have (names), and what is NOT VALID."""
    indexes, constraints = control.index_and_constraint_names(table)
    objects = planned.objects
    gaps = [f"index {i.name} missing at the destination" for i in objects.indexes if i.name not in indexes]
    gaps += [
        f"constraint {c.name} missing at the destination"
        for c in objects.constraints
        if c.kind != "p" and c.name not in constraints
    ]
    gaps += [f"constraint {name} is NOT VALID" for name, valid in sorted(constraints.items()) if not valid]
    return gaps


def sequence_gaps(
    src: psycopg.Connection[Any], control: DestinationSession, planned: Iterable[PlannedObjects]
) -> list[str]:
    names = sorted({s.qualified for p in planned for s in p.objects.all_sequences})
    source = {v.name: v for v in sequence_values(src, names)}
    dest = {v.name: v for v in control.sequence_values(names)}
    gaps = []
    for name in names:
        s, d = source.get(name), dest.get(name)
        shown = ".".join(name)
        if s is None:
            continue
        if d is None:
            gaps.append(f"sequence {shown} missing at the destination")
        elif s.readable and (s.last_value or 0) > (d.last_value or 0):
            gaps.append(f"sequence {shown} at {d.last_value} behind the source's {s.last_value}")
    return gaps


def not_migrated(
    src: psycopg.Connection[Any], control: DestinationSession, tables: list[tuple[str, str]]
) -> list[str]:
    """One entry per kind of object replicator does not migrate: how many, how many the
    destination has under the same name, and the names of those it lacks (a few)."""
    out = []
    for kind in KINDS:
        source = object_names(src, kind, tables)
        if not source:
            continue
        there = source & control.object_names(kind, tables)
        lacking = sorted(source - there)
        shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
        out.append(
            f"{len(source)} {kind} ({len(there)} at the destination"
            + (f"; not: {shown})" if lacking else ")")
        )
    return out


def lines(
    tables: list[TableReport], not_migrated: list[str], notes: list[str], max_rows: int, seconds: float
) -> list[str]:
    out: list[str] = []
    for t in tables:
        if not t.present:
            out.append(f"{t.display}: DIFFERENT (source {t.source_rows:,} rows, not at the destination)")
            continue
        if t.equal:
            out.append(f"{t.display}: equal ({t.source_rows:,} rows)")
        else:
            out.append(
                f"{t.display}: DIFFERENT (source {t.source_rows:,} rows, destination {t.dest_rows:,} rows)"
            )
        if t.missing_columns:
            out.append(f"  destination lacks column(s) {', '.join(t.missing_columns)}")
        for kind, shown in t.differences[:max_rows]:
            out.append(f"  {_LABEL[kind]}: {shown}")
        if len(t.differences) > max_rows:
            out.append(f"  ... and {len(t.differences) - max_rows:,} more (--max-rows)")
        out += [f"  schema: {gap}" for gap in t.schema]
    out += [f"note: {n}" for n in notes]
    if not_migrated:
        out.append("not migrated by replicator (move by hand): " + "; ".join(not_migrated))
    different = sum(1 for t in tables if not t.equal)
    out.append(
        f"verify: {len(tables)} table(s), "
        + (f"{different} DIFFERENT" if different else "all equal")
        + f", in {seconds:.1f} s"
    )
    return out
