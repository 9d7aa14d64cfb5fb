"""A table with a column of every type family, and rows that probe their text forms."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.conftest import Database

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN email AS text;
CREATE DOMAIN blob AS bytea;
CREATE TYPE pair AS (a int, b text);
CREATE TABLE kinds (
    id int PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint, num numeric, num_scaled numeric(30, 4), f4 real, f8 double precision,
    cash money, t text, vc varchar(20), ch char(5), by bytea, dby blob, b bool,
    j json, jb jsonb,
    d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    ai int[], at text[], anum numeric[], aby bytea[], ab bool[],
    e mood, ae mood[], dom posint, dtext email,
    r int4range, tr tstzrange, nr numrange,
    u uuid, comp pair, acomp pair[],
    ip inet, net cidr, mac macaddr, bits bit(4), vbits varbit, pt point, tsv tsvector, x xml, o oid
);
"""

COLUMNS = [
    "id",
    "i2",
    "i4",
    "i8",
    "num",
    "num_scaled",
    "f4",
    "f8",
    "cash",
    "t",
    "vc",
    "ch",
    "by",
    "dby",
    "b",
    "j",
    "jb",
    "d",
    "tm",
    "tmtz",
    "ts",
    "tstz",
    "iv",
    "ai",
    "at",
    "anum",
    "aby",
    "ab",
    "e",
    "ae",
    "dom",
    "dtext",
    "r",
    "tr",
    "nr",
    "u",
    "comp",
    "acomp",
    "ip",
    "net",
    "mac",
    "bits",
    "vbits",
    "pt",
    "tsv",
    "x",
    "o",
]

# Text forms as a user would type them; the server prints its canonical form, which we compare to.
ROW_1 = {
    "id": 1,
    "i2": -32768,
    "i4": 2147483647,
    "i8": -9223372036854775808,
    "num": "12345678901234567890.000000000000000000001",
    "num_scaled": "1.5000",
    "f4": "1.5",
    "f8": "0.1",
    "cash": "12.34",
    "t": "tab\there\nnewline \\backslash 'quote' \"dq\" é ✓ 😀",
    "vc": "",
    "ch": "ab",
    "by": b"\x00\xff\\\n",
    "dby": b"\x01\x02",
    "b": True,
    "j": '{"a": 1.0,  "b": [1, 2], "c": "x\\ny"}',
    "jb": '{"b": [1, 2.50], "a": {"n": null}}',
    "d": "0044-03-15 BC",
    "tm": "23:59:59.999999",
    "tmtz": "12:00:00+05:30",
    "ts": "2024-02-29 00:00:00.000001",
    "tstz": "2024-06-01 12:34:56.789+02",
    "iv": "1 year 2 mons 3 days 04:05:06.789",
    "ai": "{1,NULL,3}",
    "at": '{"a b","c,d",NULL,"\\"q\\"","",NULL}',
    "anum": "{1.10,-2.2e5}",
    "aby": '{"\\\\x00ff",NULL}',
    "ab": "{t,f,NULL}",
    "e": "happy",
    "ae": "{sad,ok}",
    "dom": 7,
    "dtext": "someone@example.com",
    "r": "[1,5)",
    "tr": '["2024-01-01 00:00:00+00",infinity)',
    "nr": "empty",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "comp": '(1,"x y")',
    "acomp": '{"(2,z)","(,)"}',
    "ip": "192.168.0.1/24",
    "net": "10.0.0.0/8",
    "mac": "08:00:2b:01:02:03",
    "bits": "1010",
    "vbits": "10101",
    "pt": "(1.5,-2)",
    "tsv": "a fat:2 cat",
    "x": "<a>x &amp; y</a>",
    "o": 4294967295,
}
ROW_2 = {"id": 2}  # every other column NULL
ROW_3 = {
    "id": 3, "i2": 0, "i4": -1, "i8": 9223372036854775807, "num": "-0.000001", "num_scaled": "-99999.9999",
    "f4": "-0", "f8": "1e-300", "cash": "-0.01", "t": "", "vc": "x" * 20, "ch": "abcde",
    "by": b"", "b": False, "j": "[]", "jb": "[]", "d": "infinity", "ts": "-infinity", "tstz": "infinity",
    "iv": "-1 days", "ai": "{}", "at": "{}", "r": "empty", "comp": "(,)",
}


def create(db: Database) -> None:
    db.execute(SCHEMA)


def insert(db: Database, rows: list[dict[str, Any]]) -> None:
    with db.connect() as conn:
        for row in rows:
            names = list(row)
            conn.execute(
                psycopg.sql.SQL("INSERT INTO kinds ({}) VALUES ({})").format(
                    psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, names)),
                    psycopg.sql.SQL(", ").join(psycopg.sql.Placeholder() * len(names)),
                ),
                [v if not isinstance(v, bytes) else v for v in row.values()],
            )


def text_rows(db: Database, query: str) -> list[tuple[str | None, ...]]:
    """Rows exactly as the types' output functions print them (libpq text format, no loaders)."""
    with db.connect() as conn:
        for setting in ("SET DateStyle = ISO", "SET IntervalStyle = postgres", "SET extra_float_digits = 3"):
            conn.execute(setting)
        result = conn.pgconn.exec_(query.encode())
        rows = []
        for r in range(result.ntuples):
            rows.append(
                tuple(
                    None if result.get_value(r, c) is None else bytes(result.get_value(r, c)).decode()  # type: ignore[arg-type]
                    for c in range(result.nfields)
                )
            )
        return rows
