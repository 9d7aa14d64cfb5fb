"""copytext on the reading thread: rows staged in the order of their key (the merge then walks the
key's index and the table's pages in order, not at random)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from replicator.decoding.changes import Change, Column, Op, Relation, ReplicaIdentity
from replicator.decoding.fold import Folder, TableBatch
from replicator.destinations.postgres.copytext import SORT_MIN_ROWS, prepare
from replicator.lsn import Lsn

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def batch_of(rel: Relation, key: tuple[str, ...], rows: list[tuple[Any, ...]], op: Op) -> TableBatch:
    """One folded table batch of ``rows`` (``op``: INSERT gives fresh rows, UPDATE existing ones)."""
    folder = Folder({("public", "t"): key}, None, 1_000_000)
    for row in rows:
        assert folder.change(Change(op, rel, row, None, Lsn(1), 1, NOW)) is None
    (folded,) = folder.take()
    return folded.batches[("public", "t")]


def keys_of(text: str | None, width: int) -> list[list[str]]:
    assert text is not None
    return [line.split("\t")[:width] for line in text.splitlines()]


INT_KEY = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
    Column("id", 20, -1, True), Column("v", 25, -1, False),
))  # fmt: skip


def test_updated_rows_of_an_integer_key_are_staged_in_numeric_order() -> None:
    ids = random.Random(7).sample(range(-50, 5000), 300)
    p = prepare(batch_of(INT_KEY, ("id",), [(str(i), f"v{i}") for i in ids], Op.UPDATE))
    assert [int(k) for (k,) in keys_of(p.existing_text, 1)] == sorted(ids)  # 9 before 10, -5 before 3
    assert [int(str(r.values[0])) for r in p.existing] == sorted(ids)


def test_new_rows_and_rows_already_in_key_order_keep_their_order() -> None:
    """New rows are COPYed straight in (nothing to probe); a range updated at once already comes
    in key order (sorting it would only cost the reading thread)."""
    ids = random.Random(7).sample(range(5000), 300)
    p = prepare(batch_of(INT_KEY, ("id",), [(str(i), "v") for i in ids], Op.INSERT))
    assert [int(k) for (k,) in keys_of(p.fresh_text, 1)] == ids
    ordered = [str(i) for i in range(1000, 1300)]
    ordered[5], ordered[6] = ordered[6], ordered[5]  # not in the sample: left as it comes
    p = prepare(batch_of(INT_KEY, ("id",), [(i, "v") for i in ordered], Op.UPDATE))
    assert [r.values[0] for r in p.existing] == ordered


def test_a_composite_key_sorts_by_each_column_in_its_own_way() -> None:
    rel = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
        Column("v", 25, -1, False), Column("name", 25, -1, True), Column("n", 23, -1, True),
    ))  # fmt: skip
    keys = [(name, n) for name in ("b", "a", "ab") for n in (10, 9, 100, 1)] * 10
    rows = [(f"x{i}", name, str(n + 1000 * i)) for i, (name, n) in enumerate(keys)]
    p = prepare(batch_of(rel, ("name", "n"), rows, Op.UPDATE))
    got = [(r.values[1], int(str(r.values[2]))) for r in p.existing]
    assert got == sorted((name, int(n)) for _, name, n in rows)


def test_a_null_in_an_integer_key_keeps_the_order_the_rows_came_in() -> None:
    ids = [str(i) for i in range(SORT_MIN_ROWS + 5, 0, -1)]
    rows = [(i, "v") for i in ids] + [(None, "v")]
    p = prepare(batch_of(INT_KEY, ("id",), rows, Op.UPDATE))
    assert [r.values[0] for r in p.existing] == [*ids, None]


def test_small_batches_keep_their_order() -> None:
    ids = [str(i) for i in range(SORT_MIN_ROWS - 1, 0, -1)]
    p = prepare(batch_of(INT_KEY, ("id",), [(i, "v") for i in ids], Op.UPDATE))
    assert [r.values[0] for r in p.existing] == ids
