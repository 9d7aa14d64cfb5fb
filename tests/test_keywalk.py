"""The merge of two ordered key streams, C and Python, against set arithmetic on a real server.

Two tables of keys in one database stand for the source and the destination: each
implementation must hand over exactly the keys only the second has (gone) and count those
only the first has (missing), for each key kind, in the order the server sends them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from replicator import keywalk, native
from replicator.catalog import Column
from replicator.relay import PgCopyOut, RelayError
from tests.conftest import Database

# name: (column types, SQL making the columns from g (1..5000), kinds)
SHAPES: dict[str, tuple[list[str], list[str], str]] = {
    # Negative integers: two's complement must order below the positive ones.
    "bigint": (["bigint"], ["g - 2500"], "i"),
    "smallint, integer": (["smallint", "integer"], ["g % 200 - 100", "g - 2500"], "ii"),
    # Byte order (COLLATE "C"), escapes, multibyte characters, prefixes, the empty string.
    "text": (
        ["text"],
        [
            "(ARRAY['', 'a', 'A', 'b', 'B', 'é', 'e', 'ß', 'Z', '_', 'a b', E'a\\tb', E'back\\\\slash', "
            "E'new\\nline', '😀', 'ab', 'Ab', 'ä'])[1 + g % 18] "
            "|| CASE WHEN g % 3 = 0 THEN '' ELSE g::text END"
        ],
        "b",
    ),  # fmt: skip
    "uuid": (["uuid"], ["md5(g::text)::uuid"], "b"),
    "timestamptz, text": (
        ["timestamptz", "text"],
        ["'2024-01-01'::timestamptz + (g - 2500) * interval '1 hour'", "repeat('k', g % 5)"],
        "ib",
    ),
    "date, boolean, bytea": (
        ["date", "boolean", "bytea"],
        [
            "'2000-01-01'::date + (g - 2500) * 300",
            "g % 2 = 0",
            "decode(lpad(to_hex(g % 300), 4, '0'), 'hex')",
        ],
        "ibb",
    ),
}


@pytest.fixture(params=["C", "Python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "C":
        if (why := native.keywalk_unavailable()) is not None:
            pytest.skip(f"the C key walk is not usable here: {why}")
        for env in (native.PURE_PYTHON_ENV, native.RELAY_ENV, native.KEYWALK_ENV):
            monkeypatch.delenv(env, raising=False)
        assert native.keywalk() is not None
    else:
        monkeypatch.setenv(native.KEYWALK_ENV, "1")
        assert native.keywalk() is None
    yield request.param


def _columns(types: list[str]) -> list[sql.Identifier]:
    return [sql.Identifier(f"k{i}") for i in range(len(types))]


def _create(conn: psycopg.Connection[Any], name: str, types: list[str]) -> None:
    cols = _columns(types)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(
        sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
            sql.Identifier(name),
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(c, sql.SQL(t)) for c, t in zip(cols, types, strict=True)
            ),
            sql.SQL(", ").join(cols),
        )
    )


def _stream(conn: psycopg.Connection[Any], table: str, types: list[str], side: str) -> PgCopyOut:
    cols = _columns(types)
    order = sql.SQL(", ").join(
        sql.SQL('{} COLLATE "C"').format(c) if t == "text" else c for c, t in zip(cols, types, strict=True)
    )
    query = sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT (FORMAT binary)").format(
        sql.SQL(", ").join(cols), sql.Identifier(table), order
    )
    return PgCopyOut(conn, query.as_string(conn).encode(), side)


def _count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_walk_finds_exactly_the_gone_and_missing_keys(
    source_db: Database, implementation: str, shape: str
) -> None:
    types, exprs, kinds = SHAPES[shape]
    with source_db.connect() as a, source_db.connect() as b:
        a.execute("SELECT setseed(0.5)")
        a.execute("SET TimeZone = 'UTC'")
        a.execute(
            sql.SQL(
                "CREATE TEMP TABLE everything AS SELECT DISTINCT {} FROM generate_series(1, 5000) g"
            ).format(
                sql.SQL(", ").join(
                    sql.SQL("{} AS {}").format(sql.SQL(e), c)
                    for e, c in zip(exprs, _columns(types), strict=True)
                )
            )
        )
        for table in ("walk_src", "walk_dst"):
            _create(a, table, types)
        # The source lost keys here and there and a run of them; the destination lacks a few.
        a.execute("INSERT INTO walk_src SELECT * FROM everything WHERE random() > 0.03")
        a.execute(
            sql.SQL(
                "DELETE FROM walk_src WHERE ({0}) IN "
                "(SELECT {0} FROM walk_src ORDER BY 1 LIMIT 200 OFFSET 900)"
            )
            .format(sql.SQL(", ").join(_columns(types)))
        )  # fmt: skip
        a.execute("INSERT INTO walk_dst SELECT * FROM everything WHERE random() > 0.01")
        gone: list[bytes] = []
        result = keywalk.walk(
            _stream(a, "walk_src", types, "source"),
            _stream(b, "walk_dst", types, "destination"),
            kinds,
            gone.append,
        )
        # The gone tuples, loaded back through the server: what a destination would delete.
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(c, sql.SQL(t)) for c, t in zip(_columns(types), types, strict=True)
        )
        b.execute(sql.SQL("CREATE TEMP TABLE gone ({})").format(cols))
        with b.cursor().copy("COPY gone FROM STDIN (FORMAT binary)") as copy:
            copy.write(keywalk.COPY_HEADER + b"".join(gone) + keywalk.COPY_TRAILER)
        expected_gone = _count(
            b, "SELECT count(*) FROM (SELECT * FROM walk_dst EXCEPT SELECT * FROM walk_src) x"
        )
        assert expected_gone > 150
        assert _count(b, "SELECT count(*) FROM gone") == result.gone == expected_gone
        assert _count(b, "SELECT count(*) FROM (SELECT * FROM walk_dst EXCEPT SELECT * FROM walk_src "
                         "EXCEPT SELECT * FROM gone) x") == 0  # fmt: skip
        missing = _count(b, "SELECT count(*) FROM (SELECT * FROM walk_src EXCEPT SELECT * FROM walk_dst) x")
        assert result.missing == missing > 0
        assert result.source_keys == _count(b, "SELECT count(*) FROM walk_src")
        assert result.destination_keys == _count(b, "SELECT count(*) FROM walk_dst")


def test_a_stream_that_fails_midway_deletes_nothing(source_db: Database, implementation: str) -> None:
    """A COPY cut short by an error looks like one that ended, after which every destination key
    would look gone: the walk raises instead of returning."""
    with source_db.connect() as a, source_db.connect() as b:
        for table in ("cut_src", "cut_dst"):
            _create(a, table, ["bigint"])
            a.execute(
                sql.SQL("INSERT INTO {} SELECT generate_series(1, 50000)").format(sql.Identifier(table))
            )
        failing = PgCopyOut(
            a, b"COPY (SELECT k0 FROM cut_src WHERE 1 / (30000 - k0) IS NOT NULL ORDER BY k0) TO STDOUT "
            b"(FORMAT binary)", "source",
        )  # fmt: skip
        gone: list[bytes] = []
        with pytest.raises(RelayError) as raised:
            keywalk.walk(failing, _stream(b, "cut_dst", ["bigint"], "destination"), "i", gone.append)
        assert raised.value.side == "source"
        assert "division by zero" in str(raised.value)


def test_kinds_of_key_columns() -> None:
    def col(oid: int) -> Column:
        return Column("c", 1, "t", oid, True)

    assert keywalk.kinds([col(20), col(25), col(2950)]) == "ibb"
    assert keywalk.kinds([col(1700)]) is None  # numeric: its bytes do not order like its values
    assert keywalk.kinds([col(20), col(701)]) is None  # float8
    assert keywalk.kinds([]) is None
