"""The applier on a real destination: statement shapes that guess where rows are must still be right
when the guess is wrong (a stream replayed over a later snapshot, a destination behind)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg import sql

from replicator.catalog import Catalog
from replicator.decoding.changes import Change, Column, Op, Relation, ReplicaIdentity
from replicator.decoding.fold import Folder
from replicator.destinations.base import Target
from replicator.destinations.postgres import PostgresSession
from replicator.destinations.postgres.copytext import array_literal, copy_text
from replicator.lsn import Lsn
from tests.conftest import Database


def source_type(oid: int, typmod: int) -> tuple[str, Catalog]:
    """The source's type of a relation column, as the pipeline looks it up (a column whose type the
    destination's no longer holds is retyped: see schemasync.widen_types)."""
    return {20: "bigint", 23: "integer"}.get(oid, "text"), Catalog()

REL = Relation(1, "public", "t", ReplicaIdentity.DEFAULT, (
    Column("id", 20, -1, True), Column("v", 25, -1, False),
))
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Applier:
    """Folder and Writer on one thread (the pipeline splits them between two): enough to drive
    the writer's statements directly."""

    def __init__(self, session: PostgresSession, table: str = "t", flush_rows: int = 10_000):
        found = session.describe(("public", table))
        assert found is not None
        targets = {("public", table): Target(found, ("id",))}
        self.session = session
        self.writer = session.applier("job", "slot", targets, source_type)
        self.folder = Folder({k: t.key for k, t in targets.items()}, None, flush_rows)

    def change(self, event: Change) -> None:
        for folded in self.folder.change(event) or ():
            self.writer.apply(folded)

    def source_commit(self, end_lsn: Lsn) -> None:
        self.folder.source_commit(end_lsn)

    def commit(self) -> Lsn | None:
        done = self.folder.commit()
        if done is None:
            return None
        ready, lsn = done
        for folded in ready:
            self.writer.apply(folded)
        self.writer.commit(lsn)
        return lsn

    def flush(self) -> None:
        for folded in self.folder.take():
            self.writer.apply(folded)

    def rollback(self) -> None:
        self.folder.clear()
        self.writer.rollback()


def ch(op: Op, new: tuple[Any, ...] | None = None, old: tuple[Any, ...] | None = None) -> Change:
    return Change(op, REL, new, old, Lsn(1), 1, NOW)


@pytest.fixture
def dest(dest_db: Database) -> Iterator[PostgresSession]:
    dest_db.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    with dest_db.session() as session:
        yield session


def applier(session: PostgresSession) -> Applier:
    return Applier(session)


def apply(a: Applier, *changes: Change, lsn: int = 100) -> None:
    for c in changes:
        a.change(c)
    a.source_commit(Lsn(lsn))
    assert a.commit() == Lsn(lsn)


def test_inserts_of_rows_the_destination_already_has_update_them(dest: PostgresSession) -> None:
    dest.conn.execute("INSERT INTO t VALUES (1, 'old'), (2, 'old')")
    apply(
        applier(dest), ch(Op.INSERT, ("1", "new")), ch(Op.INSERT, ("2", "new")), ch(Op.INSERT, ("3", "new"))
    )
    assert dest.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
        (1, "new"),
        (2, "new"),
        (3, "new"),
    ]


def test_updates_of_rows_the_destination_lacks_insert_them(dest: PostgresSession) -> None:
    dest.conn.execute("INSERT INTO t VALUES (1, 'old')")
    apply(applier(dest), ch(Op.UPDATE, ("1", "new")), ch(Op.UPDATE, ("2", "new")))
    assert dest.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "new"), (2, "new")]


def test_delete_then_insert_of_a_key_in_one_batch_replaces_the_row(dest: PostgresSession) -> None:
    dest.conn.execute("INSERT INTO t VALUES (1, 'old')")
    apply(applier(dest), ch(Op.DELETE, old=("1", None)), ch(Op.INSERT, ("1", "again")),
          ch(Op.UPDATE, ("4", "moved"), old=("1", None)), ch(Op.INSERT, ("1", "third")))
    assert dest.conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "third"), (4, "moved")]


def test_reinserting_a_soft_deleted_row_clears_its_flag(dest: PostgresSession, dest_db: Database) -> None:
    dest.conn.execute("ALTER TABLE t ADD COLUMN __replicator_is_deleted boolean NOT NULL DEFAULT false")
    dest.conn.execute("INSERT INTO t VALUES (1, 'old', false)")
    a = applier(dest_db.session(deletes="soft"))
    apply(a, ch(Op.DELETE, old=("1", None)), lsn=100)
    apply(a, ch(Op.INSERT, ("1", "back")), ch(Op.INSERT, ("2", "new")), lsn=200)
    assert dest.conn.execute("SELECT id, v, __replicator_is_deleted FROM t ORDER BY id").fetchall() == [
        (1, "back", False), (2, "new", False)]


def test_joins_to_the_stage_probe_the_key_instead_of_scanning_the_table(dest: PostgresSession) -> None:
    dest.conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20000) g; ANALYZE t")
    a = applier(dest)
    for i in range(1, 5001):
        a.change(ch(Op.DELETE, old=(str(i), None)))
    # The statements run inside the applier's transaction, with its planner settings.
    a.flush()
    (stage,) = a.session.stages.identifiers()
    plan = "\n".join(r[0] for r in dest.conn.execute(
        sql.SQL("EXPLAIN DELETE FROM t AS d USING {} AS s WHERE d.id = s.id").format(stage)).fetchall())
    a.rollback()
    assert "Index" in plan and "Seq Scan on t" not in plan, plan


@pytest.mark.parametrize("tricky", [
    ["plain", "", None, "\\N", "tab\there", "line\nbreak", "cr\rhere", "back\\slash", "ünï ✓"],
    ["plain", "", None, "\\N", "only safe values", "x"],  # no character to escape: the fast path
])
def test_values_reach_the_destination_exactly(dest: PostgresSession, tricky: list[str | None]) -> None:
    a = applier(dest)
    apply(a, *(ch(Op.INSERT, (str(i), v)) for i, v in enumerate(tricky)))
    # Updates of existing rows go through a stage too.
    apply(a, *(ch(Op.UPDATE, (str(i), v)) for i, v in enumerate(reversed(tricky))), lsn=200)
    got = dest.conn.execute("SELECT v FROM t ORDER BY id").fetchall()
    assert [v for (v,) in got] == list(reversed(tricky))


def test_copy_text_escapes_only_when_it_must() -> None:
    assert copy_text([("1", "a"), ("2", None)], 2) == "1\ta\n2\t\\N\n"
    assert copy_text([("1", "a\tb"), ("2", None)], 2) == "1\ta\\tb\n2\t\\N\n"
    assert copy_text([("1", "a\\b\r\n")], 2) == "1\ta\\\\b\\r\\n\n"
    assert copy_text([], 2) == ""


def test_a_transaction_larger_than_a_flush_reuses_its_stages(dest: PostgresSession) -> None:
    dest.conn.execute("INSERT INTO t SELECT g, 'old' FROM generate_series(100, 120) g")
    a = Applier(dest, flush_rows=3)
    changes = [ch(Op.INSERT, (str(i), f"new {i}")) for i in range(10)]
    changes += [ch(Op.UPDATE, (str(100 + i), f"updated {i}")) for i in range(10)]
    changes += [ch(Op.DELETE, old=(str(110 + i), None)) for i in range(5)]
    apply(a, *changes)  # 25 changes in flushes of 3, all in one destination transaction
    apply(
        a, ch(Op.INSERT, ("50", "next")), ch(Op.UPDATE, ("120", "next")), lsn=200
    )  # stages emptied at commit
    got = dict(dest.conn.execute("SELECT id, v FROM t").fetchall())
    want = {i: f"new {i}" for i in range(10)} | {100 + i: f"updated {i}" for i in range(10)}
    want |= {115 + i: "old" for i in range(5)} | {50: "next", 120: "next"}
    assert got == want
    for stage in a.session.stages.identifiers():  # nothing left over for the next transaction
        assert dest.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(stage)).fetchone() == (0,)


def test_array_literal_quotes_every_key() -> None:
    assert array_literal(["1", "22"]) == '{"1","22"}'
    assert array_literal(['a"b', "c\\d", "e,f", "{g}", " h "]) == '{"a\\"b","c\\\\d","e,f","{g}"," h "}'
    assert array_literal(["1", None]) is None  # NULL keys are staged instead


@pytest.mark.parametrize(
    "key", ["plain", 'q"uote', "back\\slash", "com,ma", "{brace}", " spaced ", "NULL", ""]
)
def test_deletes_by_array_find_every_key(dest_db: Database, key: str) -> None:
    dest_db.execute("CREATE TABLE k (id text PRIMARY KEY, v text)")
    with dest_db.session() as session:
        conn = session.conn
        conn.execute("INSERT INTO k VALUES (%s, 'a'), ('other', 'b')", (key,))
        rel = Relation(
            2,
            "public",
            "k",
            ReplicaIdentity.DEFAULT,
            (Column("id", 25, -1, True), Column("v", 25, -1, False)),
        )
        a = Applier(session, table="k")
        a.change(Change(Op.DELETE, rel, None, (key, None), Lsn(1), 1, NOW))
        a.source_commit(Lsn(10))
        a.commit()
        assert conn.execute("SELECT id FROM k").fetchall() == [("other",)]


def test_new_rows_in_many_flushes_of_one_transaction(dest: PostgresSession) -> None:
    a = Applier(dest, flush_rows=1)
    # More flushes than savepoints allowed in a transaction: the rest go through the stage.
    apply(a, *(ch(Op.INSERT, (str(i), "v")) for i in range(80)), ch(Op.INSERT, ("5", "again")))
    assert dest.conn.execute("SELECT count(*), min(id), max(id) FROM t").fetchone() == (80, 0, 79)
    assert dest.conn.execute("SELECT v FROM t WHERE id = 5").fetchone() == ("again",)
