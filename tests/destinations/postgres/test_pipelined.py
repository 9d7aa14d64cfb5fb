"""Small units written as one pipeline (pipelined.py) against the staged path (COPY -> stage ->
merge): the same changes must give the same destination, and a failure inside the pipeline must
surface as it does for a statement sent alone."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from replicator.catalog import Catalog
from replicator.decoding.changes import UNCHANGED_TOAST, Change, Column, Op, Relation, ReplicaIdentity
from replicator.decoding.fold import Folder
from replicator.destinations.base import Target
from replicator.destinations.postgres import PostgresSession, pipelined
from replicator.destinations.postgres.apply import Writer
from replicator.lsn import Lsn
from tests.conftest import Database

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Every kind of column the text arrays must carry exactly: typmods, arrays, json, bytes, times.
COLUMNS = [  # (name, type, oid, typmod)
    ("id", "bigint", 20, -1),
    ("name", "varchar(12)", 1043, 12 + 4),
    ("amount", "numeric(12,2)", 1700, ((12 << 16) | 2) + 4),
    ("code", "char(3)", 1042, 3 + 4),
    ("tags", "text[]", 1009, -1),
    ("doc", "jsonb", 3802, -1),
    ("raw", "bytea", 17, -1),
    ("at", "timestamptz", 1184, -1),
    ("flags", "bit(3)", 1560, 3),
    ("codes", "char(2)[]", 1014, 2 + 4),
    ("big", "text", 25, -1),  # wide, and left unchanged (TOAST) by some updates
]
DDL = ", ".join(f"{n} {t}" for n, t, _, _ in COLUMNS)
# NaN and infinity compared as text
AS_TEXT = "id, name, amount::text, code, tags::text, doc::text, raw, at::text, flags::text, codes::text, big"


def relation(table: str, keyless: bool = False) -> Relation:
    return Relation(
        1, "public", table, ReplicaIdentity.FULL if keyless else ReplicaIdentity.DEFAULT,
        tuple(Column(n, oid, typmod, n == "id" and not keyless) for n, _, oid, typmod in COLUMNS),
    )


def source_type(oid: int, typmod: int) -> tuple[str, Catalog]:
    """The source's type of a column (the same as the destination's: nothing is widened)."""
    return next(t for _, t, o, m in COLUMNS if (o, m) == (oid, typmod)), Catalog()


class Driver:
    """Folder and Writer on one thread, preparing units as the pipeline's reader does."""

    def __init__(self, session: PostgresSession, table: str, keyless: bool = False, rows: int = 10_000):
        found = session.describe(("public", table))
        assert found is not None
        targets = {("public", table): Target(found, () if keyless else ("id",))}
        self.writer = session.applier("job", table, targets, source_type)
        self.folder = Folder({k: t.key for k, t in targets.items()}, None, rows)
        self.relation = relation(table, keyless)
        self.lsn = 100

    def transaction(self, *changes: tuple[Op, tuple[Any, ...] | None, tuple[Any, ...] | None]) -> None:
        for op, new, old in changes:
            for folded in self.folder.change(Change(op, self.relation, new, old, Lsn(1), 1, NOW)) or ():
                self.writer.apply(self.writer.prepare(folded))
        self.lsn += 10
        self.folder.source_commit(Lsn(self.lsn))

    def commit(self) -> None:
        done = self.folder.commit()
        if done is None:  # every transaction is committed already
            return
        ready, lsn = done
        for folded in ready:
            self.writer.apply(self.writer.prepare(folded))
        self.writer.commit(lsn)


@pytest.fixture
def two(dest_db: Database) -> Iterator[PostgresSession]:
    dest_db.execute(
        f"CREATE TABLE piped ({DDL}, PRIMARY KEY (id)); CREATE TABLE staged ({DDL}, PRIMARY KEY (id))"
    )
    with dest_db.session() as session:
        yield session


def random_value(rng: random.Random, column: str) -> str | None:
    if rng.random() < 0.15:
        return None
    tricky = ["", "\\N", "tab\there", "line\nbreak", "quote\"s", "back\\slash", "{curly}", "ünï ✓", "NULL"]
    match column:
        case "name":
            return rng.choice(tricky + ["short", "twelve chars"])[:12]
        case "amount":
            return rng.choice(["0", "-1.5", "12345678.99", "0.01", "NaN"])
        case "code":
            return rng.choice(["a", "ab ", "xyz", ""])
        case "tags":
            return rng.choice(["{}", '{a,"b c",NULL}', '{"\\"q\\"","x\\\\y"}', "{NULL}"])
        case "doc":
            return rng.choice(['{"a": 1}', "[]", '"str"', 'null', '{"k": "tab\\there", "n": [1, 2.5]}'])
        case "raw":
            return rng.choice(["\\x", "\\x00ff10", "\\xdeadbeef"])
        case "flags":
            return rng.choice(["101", "000", "111"])
        case "codes":
            return rng.choice(["{}", "{a,bc}", '{"x ",NULL}'])
        case "at":
            return rng.choice(["2026-01-01 00:00:00+00", "1999-12-31 23:59:59.123456+00", "infinity"])
        case _:
            return rng.choice(tricky) * rng.choice([1, 1, 500])  # sometimes wide


Row = tuple[Any, ...]
ChangeSpec = tuple[Op, Row | None, Row | None]  # op, new, old


def random_transactions(seed: int, count: int) -> list[list[ChangeSpec]]:
    """Inserts, updates (some leaving the wide column unchanged), key changes and deletes of a small
    key space, so that keys come, go, move and come back within and across transactions."""
    rng = random.Random(seed)
    live: dict[int, tuple[Any, ...]] = {}
    out = []
    for _ in range(count):
        txn: list[ChangeSpec] = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            free = [k for k in range(1, 41) if k not in live]
            if kind < 0.35 and free:
                key = rng.choice(free)
                row = (str(key), *(random_value(rng, n) for n, _, _, _ in COLUMNS[1:]))
                live[key] = row
                txn.append((Op.INSERT, row, None))
            elif kind < 0.75 and live:
                key = rng.choice(list(live))
                row = (str(key), *(random_value(rng, n) for n, _, _, _ in COLUMNS[1:]))
                sent: tuple[Any, ...] = row
                if rng.random() < 0.3:  # the wide column unchanged: it keeps what the row had
                    sent = (*row[:-1], UNCHANGED_TOAST)
                    row = (*row[:-1], live[key][-1])
                live[key] = row
                txn.append((Op.UPDATE, sent, None))
            elif kind < 0.85 and live and free:
                old_key, new_key = rng.choice(list(live)), rng.choice(free)
                row = (str(new_key), *live.pop(old_key)[1:])
                live[new_key] = row
                old = (str(old_key), *(None for _ in COLUMNS[1:]))
                txn.append((Op.UPDATE, row, old))
            elif live:
                key = rng.choice(list(live))
                del live[key]
                txn.append((Op.DELETE, None, (str(key), *(None for _ in COLUMNS[1:]))))
        out.append(txn)
    return out


def contents(session: PostgresSession, table: str) -> list[tuple[Any, ...]]:
    return session.conn.execute(f"SELECT {AS_TEXT} FROM {table} ORDER BY id").fetchall()


def counting(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every eligibility decision (so a test can show that the pipelined path was taken)."""
    decisions: list[bool] = []
    eligible = pipelined.eligible

    def spy(target: Target, batch: Any) -> bool:
        decisions.append(eligible(target, batch))
        return decisions[-1]

    monkeypatch.setattr(pipelined, "eligible", spy)
    return decisions


@pytest.mark.parametrize("seed", range(6))
def test_pipelined_and_staged_writes_give_the_same_destination(
    two: PostgresSession, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    transactions = random_transactions(seed, 60)
    decisions = counting(monkeypatch)
    piped = Driver(two, "piped")
    rng = random.Random(seed)
    for txn in transactions:
        piped.transaction(*txn)
        if rng.random() < 0.4:  # group commits of 1 to a few source transactions
            piped.commit()
    piped.commit()
    assert True in decisions and False in decisions  # both paths ran (moves, TOAST: staged)
    monkeypatch.setattr(pipelined, "MAX_ROWS", 0)  # every batch staged
    staged = Driver(two, "staged")
    rng = random.Random(seed)
    for txn in transactions:
        staged.transaction(*txn)
        if rng.random() < 0.4:
            staged.commit()
    staged.commit()
    piped_rows, staged_rows = contents(two, "piped"), contents(two, "staged")
    for a, b in zip(piped_rows, staged_rows, strict=False):
        assert a == b, [(i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    assert piped_rows == staged_rows
    assert len(contents(two, "piped")) > 0


def test_keyless_inserts_pipelined_equal_copied(dest_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    dest_db.execute(f"CREATE TABLE kl_piped ({DDL}); CREATE TABLE kl_staged ({DDL})")
    rng = random.Random(7)
    rows = [(str(i), *(random_value(rng, n) for n, _, _, _ in COLUMNS[1:])) for i in range(200)]
    with dest_db.session() as session:
        decisions = counting(monkeypatch)
        for table in ("kl_piped", "kl_staged"):
            if table == "kl_staged":
                monkeypatch.setattr(pipelined, "MAX_ROWS", 0)
            d = Driver(session, table, keyless=True)
            for i in range(0, len(rows), 7):
                d.transaction(*((Op.INSERT, r, None) for r in rows[i:i + 7]))
                d.commit()
        assert decisions[0] is True and decisions[-1] is False
        assert session.conn.execute(f"SELECT {AS_TEXT} FROM kl_piped ORDER BY {AS_TEXT}").fetchall() == \
            session.conn.execute(f"SELECT {AS_TEXT} FROM kl_staged ORDER BY {AS_TEXT}").fetchall()


def checkpoint(session: PostgresSession, slot: str) -> Lsn | None:
    return session.state.slot_checkpoint("job", slot)


def test_a_value_too_long_for_its_column_fails_as_copy_would_instead_of_being_cut(
    two: PostgresSession,
) -> None:
    """Values are cast without the typmod: the column's own length check applies (an explicit
    cast to varchar(12) would cut the value silently)."""
    d = Driver(two, "piped")
    d.transaction((Op.INSERT, ("1", "thirteen chars", *(None for _ in COLUMNS[2:])), None))
    with pytest.raises(psycopg.errors.StringDataRightTruncation):
        d.commit()
    d.writer.rollback()
    assert contents(two, "piped") == []
    assert checkpoint(two, "piped") is None


def test_a_constraint_violation_inside_the_pipeline_is_raised_and_nothing_is_committed(
    two: PostgresSession,
) -> None:
    two.conn.execute("ALTER TABLE piped ADD CONSTRAINT positive CHECK (amount > 0)")
    d = Driver(two, "piped")
    good = ("1", "a", "5", *(None for _ in COLUMNS[3:]))
    d.transaction((Op.INSERT, good, None))
    d.commit()
    first = checkpoint(two, "piped")
    d.transaction((Op.INSERT, ("2", "b", "7", *(None for _ in COLUMNS[3:])), None),
                  (Op.UPDATE, ("1", "a", "-1", *(None for _ in COLUMNS[3:])), None))
    with pytest.raises(psycopg.errors.CheckViolation):
        d.commit()
    d.writer.rollback()
    d.folder.clear()
    assert [r[:3] for r in contents(two, "piped")] == [(1, "a", "5.00")]  # row 2 went with the failure
    assert checkpoint(two, "piped") == first
    # The session works on after the rollback.
    d.transaction((Op.INSERT, ("3", "c", "9", *(None for _ in COLUMNS[3:])), None))
    d.commit()
    assert [r[0] for r in contents(two, "piped")] == [1, 3]


def test_a_dropped_destination_table_is_reported_not_swallowed(two: PostgresSession) -> None:
    d = Driver(two, "piped")
    d.transaction((Op.INSERT, ("1", *(None for _ in COLUMNS[1:])), None))
    d.commit()
    first = checkpoint(two, "piped")
    two.conn.execute("DROP TABLE piped")
    d.transaction((Op.DELETE, None, ("1", *(None for _ in COLUMNS[1:]))))
    with pytest.raises(psycopg.errors.UndefinedTable):
        d.commit()
    d.writer.rollback()
    assert checkpoint(two, "piped") == first


def test_a_unique_violation_beside_the_key_is_raised(two: PostgresSession) -> None:
    two.conn.execute("CREATE UNIQUE INDEX ON piped (name)")
    d = Driver(two, "piped")
    d.transaction((Op.INSERT, ("1", "same", *(None for _ in COLUMNS[2:])), None),
                  (Op.INSERT, ("2", "same", *(None for _ in COLUMNS[2:])), None))
    with pytest.raises(psycopg.errors.UniqueViolation):
        d.commit()
    d.writer.rollback()
    assert contents(two, "piped") == []


def test_a_small_commit_is_one_round_trip(two: PostgresSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN, the unit's statements, the checkpoint and COMMIT: one pipeline, nothing sent alone
    (once the table's plain types are known)."""
    d = Driver(two, "piped")
    d.transaction((Op.INSERT, ("1", *(None for _ in COLUMNS[1:])), None))
    d.commit()
    sent: list[str] = []
    execute = psycopg.Connection.execute
    pipelines = 0
    pipeline = psycopg.Connection.pipeline

    def spy_execute(self: psycopg.Connection[Any], query: Any, *a: Any, **k: Any) -> Any:
        sent.append(str(query)[:40])
        return execute(self, query, *a, **k)

    def spy_pipeline(self: psycopg.Connection[Any]) -> Any:
        nonlocal pipelines
        pipelines += 1
        return pipeline(self)

    monkeypatch.setattr(psycopg.Connection, "execute", spy_execute)
    monkeypatch.setattr(psycopg.Connection, "pipeline", spy_pipeline)
    d.transaction((Op.INSERT, ("2", *(None for _ in COLUMNS[1:])), None),
                  (Op.UPDATE, ("1", "x", *(None for _ in COLUMNS[2:])), None))
    d.transaction((Op.DELETE, None, ("2", *(None for _ in COLUMNS[1:]))))
    d.commit()
    assert pipelines == 1
    assert isinstance(d.writer, Writer) and not d.writer._pending
    assert [r[:2] for r in contents(two, "piped")] == [(1, "x")]


def test_a_large_source_transaction_is_never_all_queued(
    two: PostgresSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source transaction bigger than a unit is applied unit by unit inside one destination
    transaction; queued statements hold their rows, so they are sent once they carry MAX_ROWS
    (memory stays bounded however large the transaction)."""
    monkeypatch.setattr(pipelined, "MAX_ROWS", 100)
    d = Driver(two, "piped", rows=50)  # units of 50 changes: each one eligible
    queued: list[int] = []
    apply = Writer.apply

    def spy(self: Writer, folded: Any) -> None:
        apply(self, folded)
        queued.append(self._pending_rows)

    monkeypatch.setattr(Writer, "apply", spy)
    d.transaction(*((Op.INSERT, (str(i), *(None for _ in COLUMNS[1:])), None) for i in range(1, 3001)))
    d.commit()
    assert len(queued) >= 60 and max(queued) < 100, queued
    assert len(contents(two, "piped")) == 3000



DOMAIN_COLUMNS = [  # (name, destination type, value one character too long for it)
    ("s", "short3", "abcd"),
    ("ss", "shorter", "abcd"),  # a domain over that domain
    ("arr", "short3[]", "{abcd}"),  # an array of the domain
    ("b", "bits2", "101"),
]


@pytest.mark.parametrize("column,value", [(n, v) for n, _, v in DOMAIN_COLUMNS])
def test_a_domain_with_a_length_does_not_cut_a_value_too_long_for_it(
    dest_db: Database, monkeypatch: pytest.MonkeyPatch, column: str, value: str
) -> None:
    """A cast to a domain applies its base type's length as an explicit cast does: it cuts. So a
    domain column is cast to its base type's plain type, and the assignment checks the length as
    COPY does. (The source's domain of the same name may be wider: same name, so no widening.)"""
    dest_db.execute(
        "CREATE DOMAIN short3 AS varchar(3); CREATE DOMAIN shorter AS short3 CHECK (VALUE <> 'no');"
        "CREATE DOMAIN bits2 AS bit(2);"
        f"CREATE TABLE dom (id bigint PRIMARY KEY, {', '.join(f'{n} {t}' for n, t, _ in DOMAIN_COLUMNS)})"
    )
    names = ["id", *(n for n, _, _ in DOMAIN_COLUMNS)]
    with dest_db.session() as session:
        d = Driver(session, "dom")
        found = session.describe(("public", "dom"))
        assert found is not None
        # the source's types, spelled as the destination's (the same names)
        source_types = {90_000 + i: found.columns[n].type_sql for i, n in enumerate(names[1:])}
        d.writer = session.applier(
            "job", "dom", {("public", "dom"): Target(found, ("id",))},
            lambda oid, typmod: (source_types.get(oid, "bigint"), Catalog()),
        )
        d.relation = Relation(
            1, "public", "dom", ReplicaIdentity.DEFAULT,
            tuple(Column(n, oid, -1, n == "id") for n, oid in zip(names, [20, *source_types], strict=True)),
        )
        decisions = counting(monkeypatch)
        row = tuple("1" if n == "id" else value if n == column else None for n in names)
        d.transaction((Op.INSERT, row, None))
        too_long = (psycopg.errors.StringDataRightTruncation, psycopg.errors.StringDataLengthMismatch)
        with pytest.raises(too_long):
            d.commit()
        d.writer.rollback()
        assert decisions == [True]  # the pipelined path was the one taken
        assert session.conn.execute("SELECT count(*) FROM dom").fetchone() == (0,)
        # a value that fits still goes, and the domain's own CHECK still applies
        d.transaction((Op.INSERT, ("2", "abc", "abc", "{abc}", "10"), None))
        d.commit()
        assert session.conn.execute("SELECT id, s, ss, arr::text, b::text FROM dom").fetchall() == [
            (2, "abc", "abc", "{abc}", "10")
        ]
        d.transaction((Op.INSERT, ("3", None, "no", None, None), None))
        with pytest.raises(psycopg.errors.CheckViolation):
            d.commit()
        d.writer.rollback()


def test_text_array_literals_bring_every_value_back_as_it_was(dest_db: Database) -> None:
    """Rows travel as text[] literals built by pipelined.text_array: hostile values (quotes,
    backslashes, braces, commas, spaces, the word NULL, empty strings, newlines, non-ASCII) come
    back unchanged, and None as NULL, with and without escaping and NULLs in the same array."""
    hostile = ['a"b', "back\\slash", "{brace}", "co,ma", " spaced ", "NULL", "", "line\nbreak", "tab\tx",
               "é€😀", '\\"', "\\x00ff", "}", '"']
    plain = ["1", "two", "three words", "NULL", "", "{}", "a,b"]
    cases = [hostile, [*hostile, None], plain, [None, *plain, None], [None], ["only"], [None, None]]
    rng = random.Random(7)
    for _ in range(200):
        pool = hostile + plain + [None]
        cases.append([rng.choice(pool) for _ in range(rng.randint(1, 12))])
    with dest_db.connect() as conn:
        for values in cases:
            literal = pipelined.text_array(values)
            got = conn.execute("SELECT %s::text[]", (literal,)).fetchone()[0]  # type: ignore[index]
            assert got == values, literal
