"""The C wal2json decoder (replicator._wal2json) against the pure-Python one: same events, same errors.

Real wal2json output with hostile values goes through both; then the same messages cut short and
corrupted byte by byte, and hand-written JSON a server never prints. The C side may hand any
message back to Python (which then decides), but whatever it decodes itself must be exactly what
Python gives, and it must decode every ordinary Begin, Insert, Update, Delete and Commit itself.
"""

from __future__ import annotations

import importlib
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from replicator.decoding import wal2json
from replicator.decoding.changes import Column, Relation, ReplicaIdentity
from replicator.decoding.wal2json import TableInfo, Wal2JsonDecoder
from replicator.source.describe import describe_table
from tests.replication import Replication

# The extension is part of the product: not being able to import it is a failure, not a skip.
MODULE = importlib.import_module("replicator._wal2json")
assert wal2json._configure(MODULE) is None

Describe = Callable[[str, str], "TableInfo | None"]


class CountingStep:
    """Stands in for the module in a decoder: counts the messages C decoded itself."""

    def __init__(self) -> None:
        self.decoded = 0

    def step(self, decoder: Any, data: bytes, out: list[Any]) -> bool:
        done: bool = MODULE.step(decoder, data, out)
        self.decoded += done
        return done


def decoders(
    describe: Describe, tables: Sequence[tuple[str, str]] | None = None
) -> tuple[Wal2JsonDecoder, ...]:
    c, py = Wal2JsonDecoder(describe, tables), Wal2JsonDecoder(describe, tables)
    c._native = CountingStep()  # type: ignore[assignment]
    py._native = None
    return c, py


def outcome(decoder: Wal2JsonDecoder, data: bytes) -> tuple[Any, ...]:
    try:
        return ("events", list(decoder.decode(data, 0x16B374D848)))
    except Exception as e:  # noqa: BLE001 (the very exception is what is compared)
        return ("error", type(e).__name__, str(e))


def state(decoder: Wal2JsonDecoder) -> tuple[Any, ...]:
    return (decoder._xid, decoder._time, decoder._begin, decoder.in_transaction, decoder._truncate)


def same_through_both(
    messages: Sequence[bytes], describe: Describe, tables: Any = None
) -> tuple[list[Any], int]:
    """Feeds messages to a C and a Python decoder; asserts equal outcomes and state after each."""
    c, py = decoders(describe, tables)
    results = []
    for data in messages:
        got_c, got_py = outcome(c, data), outcome(py, data)
        assert got_c == got_py, data
        assert state(c) == state(py), data
        results.append(got_c)
    return results, c._native.decoded  # type: ignore[union-attr]


HOSTILE_SETUP = '''
CREATE TABLE hostile (
    id bigint PRIMARY KEY, t text, n numeric, f8 float8, f4 real, b bool, by bytea, j json, jb jsonb,
    arr text[], i4 int, g int GENERATED ALWAYS AS (i4 * 2) STORED, big text);
CREATE TABLE "we""ird.Name" ("Col ""q""" int PRIMARY KEY, "é ✓" text);
CREATE TABLE full_id (a int, b text);
ALTER TABLE full_id REPLICA IDENTITY FULL;
CREATE TABLE idx_id (a int NOT NULL, b int NOT NULL, c text);
CREATE UNIQUE INDEX idx_id_ab ON idx_id (a, b);
ALTER TABLE idx_id REPLICA IDENTITY USING INDEX idx_id_ab;
CREATE TABLE skipped (id int);
CREATE TABLE wide (id int PRIMARY KEY, {wide});
'''
BIG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200))"
HOSTILE_WORKLOAD = [
    "INSERT INTO hostile (id, t, n, f8, f4, b, by, j, jb, arr, i4, big) VALUES (1,"
    " E'quote \" backslash \\\\ nl \\n tab \\t ctl \\x01\\x1f é ✓ 😀 \\\\u0000',"
    " 1.50, '-0', '1.5e10', true, '\\x00ff5c22', '{\"a\": \"q\\\"x\", \"b\": [1, 2.50, -0]}',"
    " '{\"k\": \"\\\\u00e9 \\\"\"}', ARRAY['a\"b', 'c\\d', NULL], 7, " + BIG + ")",
    "INSERT INTO hostile (id, t, n, f8, f4, b, by, i4)"
    " VALUES (2, '', '123456789012345678901234567890.123456789',"
    " '1e308', '-2.5e-30', false, '\\x', NULL)",
    "INSERT INTO hostile (id, n, f8)"
    " VALUES (3, 'NaN', 'Infinity'), (4, '-0.000', '-Infinity'), (5, 1e-20, 'NaN')",
    "UPDATE hostile SET i4 = 8 WHERE id = 1",  # the TOASTed big unchanged
    "UPDATE hostile SET id = 10, b = NULL WHERE id = 2",  # key changed
    "DELETE FROM hostile WHERE id = 3",
    """INSERT INTO "we""ird.Name" VALUES (1, 'x'), (2, NULL)""",
    '''UPDATE "we""ird.Name" SET "Col ""q""" = 3 WHERE "Col ""q""" = 1''',
    "INSERT INTO full_id VALUES (1, 'a'), (NULL, NULL)",
    "UPDATE full_id SET b = 'b' WHERE a = 1",
    "DELETE FROM full_id WHERE a IS NULL",
    "INSERT INTO idx_id VALUES (1, 1, 'x')",
    "UPDATE idx_id SET c = 'y'",
    "UPDATE idx_id SET b = 2",
    "DELETE FROM idx_id",
    "INSERT INTO skipped VALUES (1)",  # an empty transaction for the decoders (not in add-tables)
    "SELECT pg_logical_emit_message(true, 'p', 'transactional')",
    "SELECT pg_logical_emit_message(false, 'p', 'not')",
    "BEGIN; INSERT INTO hostile (id) VALUES (20); SELECT pg_logical_emit_message(true, 'p', 'in'); COMMIT",
    "TRUNCATE full_id, idx_id",
    "BEGIN; TRUNCATE full_id; INSERT INTO full_id VALUES (5, 'after'); COMMIT",
    "ALTER TABLE hostile ADD COLUMN added numeric(5, 2)",
    "INSERT INTO hostile (id, added) VALUES (30, 1.5)",
    "UPDATE hostile SET added = 2 WHERE id = 1",
    "ALTER TABLE hostile DROP COLUMN f4",
    "INSERT INTO hostile (id) VALUES (31)",
    "INSERT INTO wide SELECT g, "
    + ", ".join(f"'v{i}' || g" for i in range(150))
    + " FROM generate_series(1, 3) g",
    "UPDATE wide SET c7 = NULL",
]
TABLES = [
    ("public", "hostile"),
    ("public", 'we"ird.Name'),
    ("public", "full_id"),
    ("public", "idx_id"),
    ("public", "wide"),
]


def real_messages(replication: Replication) -> tuple[list[bytes], Describe]:
    wide = ", ".join(f"c{i} text" for i in range(150))
    replication.db.execute(HOSTILE_SETUP.replace("{wide}", wide))
    slot = replication.slot("wal2json")
    for statement in HOSTILE_WORKLOAD:
        replication.db.execute(statement)
    options = Wal2JsonDecoder(lambda s, t: None, TABLES).options()
    rows = replication.db.fetchall(
        "SELECT data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, "
        + ", ".join(["%s"] * (2 * len(options)))
        + ")",
        (slot, *[x for kv in options.items() for x in kv]),
    )
    conn = replication.db.connect()
    replication._conns.append(conn)
    known: dict[tuple[str, str], TableInfo | None] = {}

    def describe(schema: str, table: str) -> TableInfo | None:
        if (schema, table) not in known:
            known[(schema, table)] = describe_table(conn, schema, table)
        return known[(schema, table)]

    return [row[0].encode() for row in rows], describe


def test_real_hostile_output_decodes_the_same_in_c(replication: Replication) -> None:
    messages, describe = real_messages(replication)
    results, decoded = same_through_both(messages, describe, TABLES)
    actions = [json.loads(m)["action"] for m in messages]
    hot = sum(a in "BCIUD" for a in actions)
    # Every ordinary action was decoded in C (a Begin/Commit right after a TRUNCATE goes to
    # Python, which flushes the truncate first).
    after_truncate = sum(1 for prev, a in zip(actions, actions[1:], strict=False) if prev == "T" and a != "T")
    assert decoded == hot - after_truncate
    assert "M" in actions and "T" in actions
    events = [e for r in results for e in r[1]]
    assert len(events) > 40
    texts = [v for e in events if getattr(e, "new", None) for v in e.new if isinstance(v, str)]
    assert "1.50" in texts and "-0" in texts and "\\x00ff5c22" in texts and "\\x" in texts
    assert any("😀" in t and '"' in t and "\x01" in t for t in texts)


def test_real_output_cut_short_or_corrupted_is_the_same_in_c(replication: Replication) -> None:
    messages, describe = real_messages(replication)
    same_through_both(messages, describe, TABLES)  # fills describe's memo: no queries below
    begins = [i for i, m in enumerate(messages) if m.startswith(b'{"action":"B"')]
    rng = random.Random(11)
    picked = [i for i, m in enumerate(messages) if m[11:12] in b"BIUDC"]
    cases = 0
    for k in rng.sample(picked, min(12, len(picked))):
        start = max(b for b in begins if b <= k)
        prefix, data = messages[start:k], messages[k]
        end = min([b for b in begins if b > k] or [len(messages)])
        variants = [data[:n] for n in range(0, len(data), max(1, len(data) // 300))]
        for _ in range(200):
            pos = rng.randrange(len(data))
            variants.append(
                data[:pos]
                + rng.choice(b'"\\}],:0x{[ -.eE\x00\x01\xff\xc3').to_bytes(1, "big")
                + data[pos + 1 :]
            )
        for variant in variants:
            same_through_both([*prefix, variant, *messages[k + 1 : end]], describe, TABLES)
            cases += 1
    assert cases > 2000


# Hand-written actions on a table described without a server.
REL = Relation(
    42,
    "public",
    "t",
    ReplicaIdentity.DEFAULT,
    (
        Column("id", 20, -1, True),
        Column("v", 25, -1, False),
        Column("b", 16, -1, False),
        Column("by", 17, -1, False),
    ),
)


def fixed_describe(schema: str, table: str) -> TableInfo | None:
    return TableInfo(REL) if (schema, table) == ("public", "t") else None


TXN = b'"xid":7,"timestamp":"2026-11-30 03:31:42.374526+00","lsn":"0/1506250","nextlsn":"0/1506280"}'
BEGIN = b'{"action":"B",' + TXN
COMMIT = b'{"action":"C",' + TXN


def insert(value: str, id_: str = "1", extra: str = "") -> bytes:
    return (
        '{"action":"I","xid":7,"lsn":"0/1506120","schema":"public","table":"t","columns":['
        f'{{"name":"id","typeoid":20,"value":{id_}}},{{"name":"v","typeoid":25,"value":{value}}}{extra}]}}'
    ).encode()


VALUES = [
    '"plain"',
    '"\\ud83d\\ude00"',
    '"\\ud83d"',
    '"\\ude00"',
    '"\\ud83dx"',
    '"\\ud83d\\u0041"',
    '"\\u0000"',
    '"\\u001f"',
    '"raw\x01ctl"',
    '"\\/\\b\\f\\n\\r\\t\\"\\\\"',
    '"\\x"',
    '"\\u12"',
    '"\\u12G4"',
    '"é ✓"',
    "1.50",
    "-0",
    "1e5",
    "1E+5",
    "-1.5e-10",
    "123456789012345678901234567890",
    "NaN",
    "Infinity",
    "-Infinity",
    "01",
    "1.",
    ".5",
    "-",
    "+1",
    "1e",
    "true",
    "false",
    "null",
    "nul",
    "tru",
    "[1]",
    '{"a":1}',
    "",
    '"unterminated',
]
OTHERS = [
    insert('"x"', extra=',{"name":"b","typeoid":16,"value":"t"}'),  # a string in a bool column
    insert('"x"', extra=',{"name":"b","typeoid":16,"value":true},{"name":"by","typeoid":17,"value":"00ff"}'),
    insert('"x"', extra=',{"name":"by","typeoid":17,"value":12}'),  # bytea not a string: Python raises
    insert('"x"', extra=',{"name":"by","typeoid":17,"value":null}'),
    insert('"x"', extra=',{"name":"v","typeoid":25,"value":"again"}'),  # a column twice
    insert('"x"', extra=',{"name":"g","typeoid":"25","value":"x"}'),  # type oid as a string
    insert('"x"', extra=',{"name":"g","typeoid":25.0,"value":"x"}'),
    insert('"x"', extra=',{"name":"g","typeoid":-25,"value":"x"}'),
    insert('"x"', extra=',{"name":5,"typeoid":25,"value":"x"}'),
    insert('"x"', extra=',{"name":"g","typeoid":25}'),  # no value
    insert('"x"', extra=',{"typeoid":25,"value":"x"}'),
    insert('"x"', extra=",{}"),
    insert('"x"', extra=',{"name":"g","typeoid":25,"value":"x","value":"y"}'),
    insert('"x"', extra=',{"name":"g","typeoid":25,"\\u0076alue":"x"}'),
    insert('"x"', extra=',{"name":"g","typeoid":25,"value":"x","type":"text","typmod":-1}'),
    insert('"x"', id_='"1"'),
    b'{"action":"I","xid":7,"lsn":"0/1506120","schema":"public","table":"t","columns":[]}',
    b'{"action":"I","lsn":"0/1506120","schema":"public","table":"t"}',
    b'{"action":"I","lsn":"0/1506120","schema":"public","table":"gone","columns":[{"name":"a","typeoid":23,"value":1}]}',
    b'{"action":"U","lsn":"0/1","schema":"public","table":"t","columns":[{"name":"id","typeoid":20,"value":1}],'
    b'"identity":null}',
    b'{"action":"U","lsn":"0/1","schema":"public","table":"t","columns":[{"name":"id","typeoid":20,"value":2}],'
    b'"identity":[{"name":"id","typeoid":20,"value":1}]}',
    b'{"action":"U","lsn":"0/1","schema":"public","table":"t","columns":[{"name":"id","typeoid":20,"value":1}],'
    b'"identity":[{"name":"id","typeoid":20,"value":1}]}',
    b'{"action":"U","lsn":"0/1","schema":"public","table":"t","columns":[{"name":"id","typeoid":20,"value":1}],'
    b'"identity":[]}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[{"name":"id","typeoid":20,"value":1}]}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":null}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","columns":[]}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[{"name":"id","typeoid":20,"value":1}],'
    b'"identity":[]}',
    b' {"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[]}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[]} ',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[]}garbage',
    b'{ "action" : "D" , "lsn" : "0/1" , "schema" : "public" , "table" : "t" , "identity" : [ ] }',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[],}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[],"pk":{"x":[1,{"y":"\xff"}]}}',
    b'{"action":"D","lsn":"0/1","schema":"public","table":"t","identity":[],"pk":"\xc3\xa9\xed\xa0\x80"}',
    b'{"action":"D","lsn":"0/1","schema":"p\\u0075blic","table":"t","identity":[]}',
    b'{"action":"D","lsn":"0/1","schema":1,"table":"t","identity":[]}',
    b'{"action":"\\u0044","lsn":"0/1","schema":"public","table":"t","identity":[]}',
    b'{"action":"D","action":"D","lsn":"0/1","schema":"public","table":"t","identity":[]}',
    b'{"action":"DD","lsn":"0/1","schema":"public","table":"t","identity":[]}',
    b'{"action":"Q"}',
    b'{"action":null}',
    b"{}",
    b"[]",
    b"",
    b"{",
]
LSNS = [
    '"0/0"',
    '"G/1"',
    '"0x1/2"',
    '"1/"',
    '"/1"',
    '"123456789/1"',
    '" 1/2"',
    '"FFFFFFFF/FFFFFFFF"',
    "5",
    '"1/2/3"',
]
XIDS = ['"5"', "5.0", "-5", "1e3", "99999999999999999999", "0", "null"]
STAMPS = ['"2026-11-30 03:31:42+02"', '"not a time"', "5", '"2026-11-30 03:31:42.1234567+00"']


def test_hand_written_json_decodes_the_same_in_c() -> None:
    for value in VALUES:
        same_through_both([BEGIN, insert(value), COMMIT], fixed_describe)
    for other in OTHERS:
        same_through_both([BEGIN, other, COMMIT, other], fixed_describe)
    for lsn in LSNS:
        begin = BEGIN.replace(b'"lsn":"0/1506250"', b'"lsn":' + lsn.encode())
        commit = COMMIT.replace(b'"lsn":"0/1506250"', b'"lsn":' + lsn.encode())
        same_through_both([begin, insert('"x"'), commit], fixed_describe)
        same_through_both(
            [BEGIN, insert('"x"').replace(b'"0/1506120"', lsn.encode()), COMMIT], fixed_describe
        )
    for xid in XIDS:
        same_through_both(
            [BEGIN.replace(b'"xid":7', b'"xid":' + xid.encode()), insert("1"), COMMIT], fixed_describe
        )
    for stamp in STAMPS:
        begin = BEGIN.replace(b'"2026-11-30 03:31:42.374526+00"', stamp.encode())
        same_through_both([begin, insert("1"), COMMIT], fixed_describe)
    # A commit before any begin; an empty transaction; a change outside a transaction.
    same_through_both([COMMIT, insert("1"), BEGIN, COMMIT, insert("1")], fixed_describe)
    results, decoded = same_through_both([BEGIN, insert('"\\ud83d\\ude00 \\u00e9"'), COMMIT], fixed_describe)
    assert decoded == 3 and results[1][1][1].new[1] == "😀 é"


def test_describe_failing_inside_c_is_reported_as_python_reports_it() -> None:
    calls = []

    def failing(schema: str, table: str) -> TableInfo | None:
        calls.append(table)
        raise RuntimeError("catalog unavailable")

    results, _ = same_through_both([BEGIN, insert("1"), COMMIT], failing)
    assert results[1] == ("error", "RuntimeError", "catalog unavailable")


def test_a_step_error_leaves_no_events_behind() -> None:
    """Malformed input never reaches C's errors: everything not decodable is left to Python."""
    decoder = Wal2JsonDecoder(fixed_describe)
    out: list[Any] = []
    assert MODULE.step(decoder, BEGIN, out) is True and out == []
    assert MODULE.step(decoder, b'{"action":"I"', out) is False and out == []
    with pytest.raises(TypeError):
        MODULE.step(decoder, "not bytes", out)
