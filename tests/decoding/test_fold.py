"""Folding changes per key: the rules, checked on hand-built events (pure logic, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from replicator.decoding import fold
from replicator.decoding.changes import UNCHANGED_TOAST, Change, Column, Op, Relation, ReplicaIdentity
from replicator.errors import DestinationError
from replicator.lsn import Lsn

REL = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
    Column("id", 20, -1, True), Column("v", 25, -1, False), Column("big", 25, -1, False),
))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ch(op: Op, new: tuple | None = None, old: tuple | None = None) -> Change:
    return Change(op, REL, new, old, Lsn(1), 1, NOW)


def batch(*changes: Change) -> fold.TableBatch:
    b = fold.TableBatch(REL, (0,))
    for c in changes:
        b.add(c)
    return b


def test_last_write_wins_and_delete_removes() -> None:
    b = batch(
        ch(Op.INSERT, ("1", "a", "x")),
        ch(Op.UPDATE, ("1", "b", "x")),
        ch(Op.INSERT, ("2", "a", "y")),
        ch(Op.DELETE, old=("2", None, None)),
    )
    assert b.ops == {("1",): fold.Upsert(("1", "b", "x")), ("2",): fold.DELETE}
    assert b.changes == 4


def test_unchanged_toast_filled_from_the_batch_else_kept_marked() -> None:
    b = batch(ch(Op.INSERT, ("1", "a", "big value")), ch(Op.UPDATE, ("1", "b", UNCHANGED_TOAST)))
    assert b.ops[("1",)] == fold.Upsert(("1", "b", "big value"))
    b = batch(ch(Op.UPDATE, ("3", "b", UNCHANGED_TOAST)))
    op = b.ops[("3",)]
    assert isinstance(op, fold.Upsert) and op.partial and op.base_key is None


def test_key_change_moves_the_row_and_remembers_where_toast_lives() -> None:
    b = batch(ch(Op.UPDATE, ("2", "v", UNCHANGED_TOAST), old=("1", None, None)))
    assert b.ops[("1",)] is fold.DELETE
    assert b.ops[("2",)] == fold.Upsert(("2", "v", UNCHANGED_TOAST), base_key=("1",))
    # Moved twice: the TOASTed value still comes from the first key's row.
    b.add(ch(Op.UPDATE, ("3", "w", UNCHANGED_TOAST), old=("2", None, None)))
    assert b.ops[("2",)] is fold.DELETE
    assert b.ops[("3",)] == fold.Upsert(("3", "w", UNCHANGED_TOAST), base_key=("1",))
    deletes, full, partial, moves = fold.split(b.ops)
    assert sorted(deletes) == [("1",), ("2",)] and not full and not partial
    assert moves == [(("3",), fold.Upsert(("3", "w", UNCHANGED_TOAST), base_key=("1",)))]


def test_key_change_with_complete_values_is_a_plain_upsert() -> None:
    b = batch(
        ch(Op.INSERT, ("1", "a", "x")), ch(Op.UPDATE, ("2", "a", UNCHANGED_TOAST), old=("1", None, None))
    )
    assert b.ops[("2",)] == fold.Upsert(("2", "a", "x"))
    assert fold.split(b.ops)[1] == [fold.Upsert(("2", "a", "x"))]


def test_truncate_discards_what_came_before() -> None:
    b = batch(ch(Op.INSERT, ("1", "a", "x")))
    b.truncate()
    b.add(ch(Op.INSERT, ("2", "a", "x")))
    assert b.truncated and list(b.ops) == [("2",)]


def test_keyless_tables_keep_every_change_in_order() -> None:
    b = fold.TableBatch(REL, ())
    changes = [
        ch(Op.INSERT, ("1", "a", "x")),
        ch(Op.DELETE, old=("1", "a", "x")),
        ch(Op.INSERT, ("1", "a", "x")),
    ]
    for c in changes:
        b.add(c)
    assert b.in_order == changes and not b.ops


def test_keys_without_a_row_before_the_batch_are_fresh() -> None:
    b = batch(
        ch(Op.INSERT, ("1", "a", "x")),
        ch(Op.UPDATE, ("1", "b", "x")),  # still the row inserted in this batch
        ch(Op.UPDATE, ("2", "b", "x")),  # a row from before the batch
        ch(Op.DELETE, old=("3", None, None)),
        ch(Op.INSERT, ("3", "a", "x")),  # replaces a row from before the batch
        ch(Op.UPDATE, ("5", "m", "x"), old=("4", None, None)),  # moved to a key that had no row
        ch(Op.DELETE, old=("7", None, None)),
        ch(Op.UPDATE, ("7", "m", "x"), old=("8", None, None)),  # moved onto a key deleted in the batch
    )
    fresh = {k: op.fresh for k, op in b.ops.items() if isinstance(op, fold.Upsert)}
    assert fresh == {("1",): True, ("2",): False, ("3",): False, ("5",): True, ("7",): False}


def test_folder_hands_out_units_every_flush_rows_and_the_rest_with_the_checkpoint() -> None:
    folder = fold.Folder({("public", "t"): ("id",)}, flush_rows=3)
    other = Relation(2, "public", "heartbeat", ReplicaIdentity.DEFAULT, (Column("ts", 20, -1, True),))
    ready = [folder.change(ch(Op.INSERT, (str(i), "v", "x"))) for i in range(4)]
    assert [bool(r) for r in ready] == [False, False, True, False]
    assert folder.change(Change(Op.INSERT, other, ("1",), None, Lsn(1), 1, NOW)) in (
        None,
        [],
    )  # not replicated
    assert folder.commit() is None  # no source transaction ended yet
    folder.source_commit(Lsn(100))
    assert folder.pending_transactions == 1 and folder.transaction_changes == 4
    done = folder.commit()
    assert done is not None
    rest, lsn = done
    assert lsn == Lsn(100) and [list(u.batches[("public", "t")].ops) for u in rest] == [[("3",)]]
    assert folder.pending_transactions == 0 and folder.commit() is None


def test_folder_cuts_when_a_table_changes_shape() -> None:
    folder = fold.Folder({("public", "t"): ("id",)})
    folder.change(ch(Op.INSERT, ("1", "a", "x")))
    wider = Relation(
        1, "public", "t", ReplicaIdentity.DEFAULT, (*REL.columns, Column("tags", 1009, -1, False))
    )
    ready = folder.change(Change(Op.INSERT, wider, ("2", "b", "y", "{a}"), None, Lsn(2), 1, NOW))
    assert ready and ready[0].batches[("public", "t")].relation is REL
    (unit,) = folder.take()
    assert unit.batches[("public", "t")].relation is wider


def test_folder_refuses_a_stream_without_the_key() -> None:
    folder = fold.Folder({("public", "t"): ("code",)})
    with pytest.raises(DestinationError, match="does not carry key column"):
        folder.change(ch(Op.INSERT, ("1", "a", "x")))


def test_folder_keeps_interleaved_tables_apart_across_cuts() -> None:
    """An OLTP transaction touches several tables in turn; each change must land in its own
    table's batch of the unit being fed, never in a batch handed out before."""
    u_rel = Relation(
        3, "public", "u", ReplicaIdentity.DEFAULT, (Column("k", 20, -1, True), Column("n", 20, -1, False))
    )
    folder = fold.Folder({("public", "t"): ("id",), ("public", "u"): ("k",)}, flush_rows=4)

    def u(k: str, n: str) -> Change:
        return Change(Op.UPDATE, u_rel, (k, n), None, Lsn(1), 1, NOW)

    fed = [
        ch(Op.INSERT, ("1", "a", "x")), u("1", "1"), ch(Op.UPDATE, ("1", "b", UNCHANGED_TOAST)), u("1", "2"),
        ch(Op.UPDATE, ("1", "c", UNCHANGED_TOAST)), u("2", "1"), u("1", "3"),
    ]
    ready = [r for c in fed for r in (folder.change(c) or [])]
    (first,) = ready
    assert first.batches[("public", "t")].ops == {("1",): fold.Upsert(("1", "b", "x"), fresh=True)}
    assert first.batches[("public", "u")].ops == {("1",): fold.Upsert(("1", "2"))}
    (second,) = folder.take()
    # The row inserted in the first unit is not fresh in the second (and its TOAST is not known).
    assert second.batches[("public", "t")].ops == {("1",): fold.Upsert(("1", "c", UNCHANGED_TOAST))}
    assert second.batches[("public", "u")].ops == {
        ("1",): fold.Upsert(("1", "3")), ("2",): fold.Upsert(("2", "1"))
    }
    assert [b.changes for b in second.batches.values()] == [1, 2]
