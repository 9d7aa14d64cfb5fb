"""The steps a destination takes for a captured schema change (pure: shapes in, steps out)."""

from __future__ import annotations

import dataclasses

from replicator.decoding import ddlplan as plan
from replicator.decoding.ddl import (
    REWRITE_COLUMN,
    REWRITE_DEFAULT,
    ColumnShape,
    ConstraintShape,
    IndexShape,
    PartitionShape,
    TableEvent,
    TableShape,
)

T = ("public", "t")


def col(
    attnum: int, name: str, type_sql: str = "integer", oid: int = 23, typmod: int = -1, **kw: object
) -> ColumnShape:
    fields = dict(
        not_null=False, default=None, generated=None, identity="", collation=None, has_missing=False
    )
    fields.update(kw)
    return ColumnShape(attnum, name, type_sql, oid, typmod, **fields)  # type: ignore[arg-type]


def table(*columns: ColumnShape, name: str = "t", schema: str = "public", **kw: object) -> TableShape:
    fields: dict[str, object] = dict(
        kind="r", identity="d", key=("id",), identity_columns=(), indexes=(), constraints=()
    )
    fields.update(kw)
    return TableShape(1, schema, name, columns=columns, **fields)  # type: ignore[arg-type]


BASE = table(col(1, "id", not_null=True), col(2, "a"), col(3, "b", "text", 25))


def steps(after: TableShape, using: bool = False, **kw: object) -> list[plan.Step]:
    return plan.plan_altered(T, TableEvent(1, BASE, after, **kw), using, plan.Policy())  # type: ignore[arg-type]


def test_columns_are_matched_by_attnum_so_a_rename_is_a_rename() -> None:
    after = table(col(1, "id", not_null=True), col(2, "a2"), col(3, "b", "text", 25))
    assert steps(after) == [plan.RenameColumn(T, "a", "a2")]


def test_a_drop_and_a_new_column_of_the_same_name_are_not_a_rename() -> None:
    after = table(col(1, "id", not_null=True), col(3, "b", "text", 25), col(4, "a", "bigint", 20))
    got = steps(after)
    assert got[0] == plan.DropColumn(T, "a", keep=False)
    assert isinstance(got[1], plan.AddColumn) and got[1].column.name == "a" and got[1].recompute


def test_swapped_names_go_through_a_spare_name() -> None:
    after = table(col(1, "id", not_null=True), col(2, "b"), col(3, "a", "text", 25))
    got = steps(after)
    assert got == [
        plan.RenameColumn(T, "a", "a_replicator_rename"),
        plan.RenameColumn(T, "b", "a"),
        plan.RenameColumn(T, "a_replicator_rename", "b"),
    ]


def test_a_type_change_is_replayed_only_when_the_destination_can_compute_it() -> None:
    after = table(col(1, "id", not_null=True), col(2, "a", "bigint", 20), col(3, "b", "text", 25))
    # No rewrite (binary coercible), or an immutable cast without USING: replay.
    assert steps(after) == [plan.AlterType(T, "a", "bigint", 20, -1, None, True)]
    assert steps(after, rewrite=REWRITE_COLUMN, casts={"a": True}) == [
        plan.AlterType(T, "a", "bigint", 20, -1, None, True)
    ]
    # A USING expression, or a cast that depends on the session: the values are copied.
    for got in (
        steps(after, using=True, rewrite=REWRITE_COLUMN, casts={"a": True}),
        steps(after, rewrite=REWRITE_COLUMN, casts={"a": False}),
    ):
        assert got[0] == plan.AlterType(T, "a", "bigint", 20, -1, None, False)
        assert isinstance(got[1], plan.Refresh) and got[1].whole and "column a" in got[1].why


def test_added_columns_carry_what_the_rows_already_there_read() -> None:
    after = table(*BASE.columns, col(4, "c", "text", 25, default="'d'::text", has_missing=True))
    (add,) = steps(after, filled={"c": "d"})
    assert add == plan.AddColumn(T, after.columns[3], "d", recompute=True)
    volatile = table(*BASE.columns, col(4, "r", "double precision", 701, default="random()"))
    got = steps(volatile, rewrite=REWRITE_DEFAULT, filled={"r": "0.5"})
    assert isinstance(got[0], plan.AddColumn) and not got[0].recompute
    assert isinstance(got[1], plan.Refresh) and "volatile default" in got[1].why


def test_renamed_and_moved_table_comes_first_and_the_rest_names_the_new_table() -> None:
    after = dataclasses.replace(
        BASE, schema="archive", name="t2", columns=(*BASE.columns[:2], col(3, "b2", "text", 25))
    )
    got = steps(after)
    assert got == [plan.RenameTable(T, ("archive", "t2")), plan.RenameColumn(("archive", "t2"), "b", "b2")]


def test_indexes_and_constraints_by_name_and_renames_by_definition() -> None:
    idx = IndexShape("t_a", "CREATE INDEX t_a ON public.t USING btree (a)")
    before = dataclasses.replace(
        BASE, indexes=(idx,), constraints=(ConstraintShape("pos", "c", "CHECK ((a > 0))"),)
    )
    renamed = IndexShape("t_by_a", "CREATE INDEX t_by_a ON public.t USING btree (a)")
    after = dataclasses.replace(
        BASE,
        indexes=(renamed, IndexShape("t_b", "CREATE INDEX t_b ON public.t USING btree (b)")),
        constraints=(ConstraintShape("positive", "c", "CHECK ((a > 0))"),),
    )
    got = plan.plan_altered(T, TableEvent(1, before, after), False, plan.Policy())
    assert got == [
        plan.RenameIndex(T, "t_a", "t_by_a"),
        plan.CreateIndex(T, after.indexes[1]),
        plan.RenameConstraint(T, "pos", "positive"),
    ]
    # A table rename changes every index's definition, not the indexes.
    moved = dataclasses.replace(
        before, name="t2", indexes=(IndexShape("t_a", "CREATE INDEX t_a ON public.t2 USING btree (a)"),)
    )
    assert plan.plan_altered(T, TableEvent(1, before, moved), False, plan.Policy()) == [
        plan.RenameTable(T, ("public", "t2"))
    ]


def test_partitions_detached_take_their_rows_attached_bring_theirs() -> None:
    p24 = PartitionShape(10, "public", "t_2024", True, "((at >= '2024-01-01'::date))")
    p25 = PartitionShape(11, "public", "t_2025", True, "((at >= '2025-01-01'::date))")
    p26 = PartitionShape(12, "public", "t_2026", True, "((at >= '2026-01-01'::date))")
    before = dataclasses.replace(BASE, kind="p", partitions=(p24,))
    after = dataclasses.replace(BASE, kind="p", partitions=(p25, p26))
    got = plan.plan_altered(
        T, TableEvent(1, before, after, partition_rows={11: True, 12: False}), False, plan.Policy()
    )
    assert got == [
        plan.DeleteRows(T, p24.constraint or "", "partition public.t_2024 left it"),
        plan.Refresh(T, 11, False, "partition public.t_2025 attached with rows"),
    ]


def test_policies_for_what_the_source_dropped() -> None:
    after = table(col(1, "id", not_null=True), col(3, "b", "text", 25))
    keep = plan.plan_altered(T, TableEvent(1, BASE, after), False, plan.Policy(dropped_columns="keep"))
    assert keep == [plan.DropColumn(T, "a", keep=True)]
    assert plan.plan_dropped(T, plan.Policy()) == [plan.DropTable(T, keep=True)]
    assert plan.plan_dropped(T, plan.Policy(dropped_tables="drop")) == [plan.DropTable(T, keep=False)]


def test_a_created_table_gets_its_key_and_checks_but_no_foreign_keys_and_rows_only_if_it_has_some() -> None:
    shape = dataclasses.replace(
        BASE,
        constraints=(
            ConstraintShape("t_pkey", "p", "PRIMARY KEY (id)"),
            ConstraintShape("fk", "f", "FOREIGN KEY (a) REFERENCES public.o(id)"),
        ),
    )
    empty = plan.plan_created(T, TableEvent(1, None, shape, rows=False), "new")
    assert empty == [plan.CreateTable(T, shape), plan.AddConstraint(T, shape.constraints[0])]
    full = plan.plan_created(T, TableEvent(1, None, shape, rows=True), "new")
    assert full[-1] == plan.Refresh(T, 1, True, "new")


def test_every_step_describes_itself() -> None:
    every = [
        plan.CreateTable(T, BASE),
        plan.DropTable(T, True),
        plan.RenameTable(T, ("s", "u")),
        plan.AddColumn(T, BASE.columns[1], "1", True),
        plan.DropColumn(T, "a", False),
        plan.RenameColumn(T, "a", "b"),
        plan.AlterType(T, "a", "bigint", 20, -1, None, True),
        plan.SetNotNull(T, "a", True),
        plan.SetDefault(T, "a", "1"),
        plan.DropExpression(T, "a"),
        plan.CreateIndex(T, IndexShape("i", "x")),
        plan.DropIndex(T, "i"),
        plan.RenameIndex(T, "i", "j"),
        plan.AddConstraint(T, ConstraintShape("c", "c", "CHECK (true)")),
        plan.DropConstraint(T, "c"),
        plan.RenameConstraint(T, "c", "d"),
        plan.DeleteRows(T, "true", "why"),
        plan.Refresh(T, 1, True, "why"),
    ]
    assert all("public.t" in plan.describe(s) for s in every)
