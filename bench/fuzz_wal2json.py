"""Mutation fuzzer: replicator._wal2json (C) against the Python wal2json decoder.

Transactions of wal2json format-version 2 actions as the server prints them (Begin, Insert,
Update with and without TOASTed columns and old keys, Delete, Commit, Truncate, messages) on
tables of every shape the decoder knows (key, identity FULL, a generated column, columns in
another order, bool and bytea fixes, escaped names) go through a C and a Python decoder after one
of their messages was mutated: bytes flipped, inserted, deleted or duplicated, JSON tokens
spliced in (escapes cut short, lone surrogates, deep nesting, numbers at the end), two messages
spliced together, the message cut short. After every message both must give the same events or
the same error, and leave the same decoder state. Seeded: the same seed runs the same cases.

    python -m bench.fuzz_wal2json --cases 50000 --seed 1

Run it under AddressSanitizer (docs/development.md, "Sanitizers") to catch memory errors too;
tests/decoding/test_wal2json_fuzz.py runs a short fixed-seed slice of it.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from replicator.decoding.changes import Column, Relation, ReplicaIdentity
from replicator.decoding.wal2json import TableInfo, Wal2JsonDecoder

LSN = 0x16B374D848

TABLES: dict[tuple[str, str], TableInfo] = {
    ("public", "t"): TableInfo(
        Relation(
            42,
            "public",
            "t",
            ReplicaIdentity.DEFAULT,
            (
                Column("id", 20, -1, True),
                Column("v", 25, -1, False),
                Column("b", 16, -1, False),
                Column("by", 17, -1, False),
                Column("big", 25, -1, False),
            ),
        )
    ),
    ("public", "full"): TableInfo(
        Relation(
            43,
            "public",
            "full",
            ReplicaIdentity.FULL,
            (Column("a", 23, -1, False), Column("b", 25, -1, False)),
        )
    ),
    ("public", "gen"): TableInfo(
        Relation(
            44,
            "public",
            "gen",
            ReplicaIdentity.DEFAULT,
            (Column("k", 23, -1, True), Column("k2", 23, -1, True), Column("x", 1700, -1, False)),
        ),
        frozenset({"g"}),
    ),
    # More columns than the C parser keeps on its stack (16): its column array grows.
    ("public", "wide"): TableInfo(
        Relation(
            46,
            "public",
            "wide",
            ReplicaIdentity.DEFAULT,
            (Column("id", 23, -1, True), *(Column(f"c{i}", 25, -1, False) for i in range(40))),
        )
    ),
    ('we"ird', "é ✓"): TableInfo(
        Relation(45, 'we"ird', "é ✓", ReplicaIdentity.DEFAULT, (Column('c "q"', 23, -1, True),))
    ),
}


def describe(schema: str, table: str) -> TableInfo | None:
    return TABLES.get((schema, table))


def _txn(xid: int, lsn: int) -> str:
    return f'"xid":{xid},"timestamp":"2026-11-30 03:31:42.{lsn % 1000000:06d}+00","lsn":"0/{lsn:X}"'


def _col(name: str, typeoid: int, value: str) -> str:
    return f'{{"name":{name},"typeoid":{typeoid},"value":{value}}}'


def _row(schema: str, table: str, action: str, xid: int, lsn: int, **lists: list[str]) -> bytes:
    parts = [f'{{"action":"{action}",{_txn(xid, lsn)},"schema":{schema},"table":{table}']
    for key, cols in lists.items():
        parts.append(f',"{key}":[{",".join(cols)}]')
    return ("".join(parts) + "}").encode()


def corpus() -> list[list[bytes]]:
    """Transactions (lists of messages) as wal2json prints them for the tables above."""
    t, pub = '"t"', '"public"'
    full_row = [
        _col('"id"', 20, "1"),
        _col('"v"', 25, '"quote \\" bs \\\\ \\u00e9 \\ud83d\\ude00 \\n"'),
        _col('"b"', 16, "true"),
        _col('"by"', 17, '"00ff5c22"'),
        _col('"big"', 25, '"' + "x" * 300 + '\\t"'),  # escaped and longer than C's stack buffer
    ]
    txns: list[list[bytes]] = []
    for xid in (7, 8):
        lsn = 0x1506000 + xid * 0x100
        begin = f'{{"action":"B",{_txn(xid, lsn)},"nextlsn":"0/{lsn + 0x30:X}"}}'.encode()
        commit = f'{{"action":"C",{_txn(xid, lsn)},"nextlsn":"0/{lsn + 0x30:X}"}}'.encode()
        rows = [
            _row(pub, t, "I", xid, lsn + 1, columns=full_row),
            _row(
                pub,
                t,
                "I",
                xid,
                lsn + 2,
                columns=[
                    _col('"id"', 20, "2"),
                    _col('"v"', 25, "null"),
                    _col('"b"', 16, "false"),
                    _col('"by"', 17, '""'),
                    _col('"big"', 25, "-1.50e-10"),
                ],
            ),
            # TOASTed big left out; key unchanged (old key dropped), then changed.
            _row(pub, t, "U", xid, lsn + 3, columns=full_row[:4], identity=[_col('"id"', 20, "1")]),
            _row(
                pub,
                t,
                "U",
                xid,
                lsn + 4,
                columns=[_col('"id"', 20, "3"), *full_row[1:4]],
                identity=[_col('"id"', 20, "1")],
            ),
            _row(pub, t, "D", xid, lsn + 5, identity=[_col('"id"', 20, "3")]),
            # Columns in another order: positions.
            _row(
                pub,
                t,
                "I",
                xid,
                lsn + 6,
                columns=[full_row[1], full_row[0], full_row[3], full_row[2], full_row[4]],
            ),
            _row(pub, '"full"', "I", xid, lsn + 7, columns=[_col('"a"', 23, "1"), _col('"b"', 25, '"a"')]),
            _row(
                pub,
                '"full"',
                "U",
                xid,
                lsn + 8,
                columns=[_col('"a"', 23, "1"), _col('"b"', 25, '"b"')],
                identity=[_col('"a"', 23, "1"), _col('"b"', 25, '"a"')],
            ),
            _row(
                pub, '"full"', "D", xid, lsn + 9, identity=[_col('"a"', 23, "null"), _col('"b"', 25, "null")]
            ),
            _row(
                pub,
                '"gen"',
                "I",
                xid,
                lsn + 10,
                columns=[
                    _col('"k"', 23, "1"),
                    _col('"k2"', 23, "2"),
                    _col('"x"', 1700, "1.50"),
                    _col('"g"', 23, "4"),
                ],
            ),
            _row(
                pub,
                '"gen"',
                "U",
                xid,
                lsn + 11,
                columns=[
                    _col('"k"', 23, "1"),
                    _col('"k2"', 23, "5"),
                    _col('"x"', 1700, "-0"),
                    _col('"g"', 23, "4"),
                ],
                identity=[_col('"k"', 23, "1"), _col('"k2"', 23, "2")],
            ),
            _row(
                '"we\\"ird"', '"\\u00e9 \\u2713"', "I", xid, lsn + 12, columns=[_col('"c \\"q\\""', 23, "1")]
            ),
            _row(pub, '"gone"', "I", xid, lsn + 13, columns=[_col('"a"', 23, "1")]),
            _row(
                pub,
                '"wide"',
                "U",
                xid,
                lsn + 14,
                columns=[_col('"id"', 23, "2"), *(_col(f'"c{i}"', 25, f'"v{i}"') for i in range(0, 40, 2))],
                identity=[_col('"id"', 23, "1")],
            ),
        ]
        txns.append([begin, *rows, commit])
    lsn = 0x1507000
    txns.append(
        [
            f'{{"action":"B",{_txn(9, lsn)}}}'.encode(),
            f'{{"action":"T",{_txn(9, lsn + 1)},"schema":"public","table":"full"}}'.encode(),
            f'{{"action":"M",{_txn(9, lsn + 2)},"transactional":true,"prefix":"p","content":"c"}}'.encode(),
            _row(pub, t, "I", 9, lsn + 3, columns=full_row),
            f'{{"action":"C",{_txn(9, lsn)},"nextlsn":"0/{lsn + 0x30:X}"}}'.encode(),
        ]
    )
    return txns


# What the mutations splice in: the edges of the scanner.
TOKENS = [
    b'"',
    b"\\",
    b"\\u",
    b"\\u1",
    b"\\ud83d",
    b"\\ude00",
    b"\\ud83d\\u",
    b"\\ud83d\\ude0",
    b"\\u0000",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xff",
    b"\x00",
    b"\x1f",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\t\n",
    b"-",
    b"0",
    b"1e",
    b"1.",
    b"-0",
    b"1e+",
    b"NaN",
    b"-Infinity",
    b"true",
    b"null",
    b"nul",
    b'"value":',
    b'"name":"id",',
    b'"typeoid":16,',
    b'"action":"U",',
    b'"identity":null,',
    b"[" * 40,
    b"{" * 40,
    b'"lsn":"FFFFFFFF/FFFFFFFF",',
    b'"xid":999999999999999999,',
]


def mutate(rng: random.Random, data: bytes, others: Sequence[bytes]) -> bytes:
    """One to three random edits of data."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        n = len(data)
        pos = rng.randrange(n + 1)
        op = rng.randrange(9)
        if op == 0 and n:  # flip bits of one byte
            pos = min(pos, n - 1)
            data = data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :]
        elif op == 1 and n:  # replace a byte
            pos = min(pos, n - 1)
            data = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1 :]
        elif op == 2:  # delete a run
            data = data[:pos] + data[pos + rng.randrange(1, 8) :]
        elif op == 3:  # insert a token
            data = data[:pos] + rng.choice(TOKENS) + data[pos:]
        elif op == 4:  # replace a run by a token
            data = data[:pos] + rng.choice(TOKENS) + data[pos + rng.randrange(1, 6) :]
        elif op == 5:  # cut short, possibly right after a token (an escape at the very end)
            data = data[:pos] + (rng.choice(TOKENS) if rng.random() < 0.5 else b"")
        elif op == 6 and n:  # duplicate a run
            end = min(n, pos + rng.randrange(1, 40))
            data = data[:end] + data[pos:end] + data[end:]
        elif op == 7:  # splice with another message
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            data = data[:pos] + other[cut:]
        else:  # swap two bytes
            if n > 1:
                a, b = rng.randrange(n), rng.randrange(n)
                lo, hi = min(a, b), max(a, b)
                if lo != hi:
                    data = (
                        data[:lo] + data[hi : hi + 1] + data[lo + 1 : hi] + data[lo : lo + 1] + data[hi + 1 :]
                    )
    return data


def outcome(decoder: Wal2JsonDecoder, data: bytes) -> tuple[Any, ...]:
    try:
        return ("events", list(decoder.decode(data, LSN)))
    except Exception as e:  # noqa: BLE001 (the very exception is what is compared)
        return ("error", type(e).__name__, str(e))


def state(decoder: Wal2JsonDecoder) -> tuple[Any, ...]:
    return (decoder._xid, decoder._time, decoder._begin, decoder.in_transaction, decoder._truncate)


def exact_buffer(data: bytes) -> Any:
    """data in a buffer that ends where its allocation ends (bytes keep a NUL after their end, so a
    read one byte too far goes unseen): under ASan with PYTHONMALLOC=malloc such a read is reported.
    ctypes keeps arrays of up to 16 bytes inside the object: those stay bytes."""
    return ctypes.create_string_buffer(data, len(data)) if len(data) > 16 else data


class _Counting:
    def __init__(self, module: Any, exact: bool) -> None:
        self.module = module
        self.exact = exact
        self.decoded = 0

    def step(self, decoder: Any, data: bytes, out: list[Any]) -> bool:
        done: bool = self.module.step(decoder, exact_buffer(data) if self.exact else data, out)
        self.decoded += done
        return done


@dataclass
class Mismatch:
    case: int
    messages: list[bytes]
    index: int
    c: Any
    python: Any


@dataclass
class Summary:
    cases: int
    decoded_in_c: int
    mismatches: list[Mismatch]


def fuzz(
    seed: int,
    cases: int,
    module: Any,
    describe_fn: Callable[[str, str], TableInfo | None] = describe,
    exact: bool = False,
) -> Summary:
    """Runs cases mutated transactions through a C and a Python decoder; returns what differed."""
    rng = random.Random(seed)
    txns = corpus()
    everything = [m for txn in txns for m in txn]
    mismatches: list[Mismatch] = []
    decoded = 0
    for case in range(cases):
        txn = rng.choice(txns)
        messages = list(txn)
        k = rng.randrange(len(messages))
        messages[k] = mutate(rng, messages[k], everything)
        if rng.random() < 0.1:  # a second message mutated too: the state carried over matters
            j = rng.randrange(len(messages))
            messages[j] = mutate(rng, messages[j], everything)
        counting = _Counting(module, exact)
        c, py = Wal2JsonDecoder(describe_fn), Wal2JsonDecoder(describe_fn)
        c._native = counting  # type: ignore[assignment]
        py._native = None
        for i, data in enumerate(messages):
            got_c, got_py = (outcome(c, data), state(c)), (outcome(py, data), state(py))
            if got_c != got_py:
                mismatches.append(Mismatch(case, messages, i, got_c, got_py))
                break
        decoded += counting.decoded
    return Summary(cases, decoded, mismatches)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--exact-buffers", action="store_true", help="hand C buffers without bytes' trailing NUL (for ASan)"
    )
    args = parser.parse_args(argv)
    import replicator._wal2json as module  # noqa: PLC0415 (the extension must be built)
    from replicator.decoding import wal2json  # noqa: PLC0415

    if (why := wal2json._configure(module)) is not None:
        print(why, file=sys.stderr)
        return 2
    started = time.monotonic()
    summary = fuzz(args.seed, args.cases, module, exact=args.exact_buffers)
    took = time.monotonic() - started
    print(
        f"{summary.cases} cases, {summary.decoded_in_c} messages decoded in C, "
        f"{len(summary.mismatches)} mismatches, {took:.1f} s"
    )
    for m in summary.mismatches[:10]:
        print(f"case {m.case}, message {m.index}: {m.messages[m.index]!r}")
        print(f"  C:      {m.c!r}\n  Python: {m.python!r}")
    return 1 if summary.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
