"""The C row decoder (replicator._pgoutput) against the pure-Python one: same values, same errors.

The end-to-end decoding tests (test_pgoutput.py) run with both against a real server; here the
two are compared on hand-built messages, including the malformed ones a server never sends.
"""

from __future__ import annotations

import importlib
import random
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from replicator.decoding import pgoutput
from replicator.decoding.changes import UNCHANGED_TOAST, Change, Column, Op, Relation, ReplicaIdentity
from replicator.lsn import Lsn

# The extension is part of the product: not being able to import it is a failure, not a skip
# (whichever decoder the REPLICATOR_PURE_PYTHON switches pick for the rest of the suite).
native = importlib.import_module("replicator._pgoutput")
assert pgoutput._configure(native) is None
uses_native = pytest.mark.skipif(
    pgoutput.NATIVE is None, reason="a REPLICATOR_PURE_PYTHON switch is set: the decoder uses Python"
)

REPO = Path(__file__).resolve().parents[2]
REL = Relation(
    7, "public", "t", ReplicaIdentity.DEFAULT, (Column("id", 20, -1, True), Column("v", 25, -1, False))
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def tuple_data(*values: object) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        else:
            raw = v.encode() if isinstance(v, str) else v
            out += b"t" + struct.pack(">i", len(raw)) + raw  # type: ignore[operator]
    return out


def message(kind: bytes, *parts: bytes, relid: int = 7) -> bytes:
    return kind + struct.pack(">I", relid) + b"".join(parts)


GOOD = [
    message(b"I", b"N", tuple_data("1", "plain")),
    message(b"I", b"N", tuple_data("2", "ünïcödé ✓ \\ tab\tnewline\n")),
    message(b"I", b"N", tuple_data("3", None)),
    message(b"I", b"N", tuple_data("4", "")),
    message(b"U", b"N", tuple_data("1", UNCHANGED_TOAST)),
    message(b"U", b"K", tuple_data("1", None), b"N", tuple_data("9", "moved")),
    message(b"U", b"O", tuple_data("1", "old"), b"N", tuple_data("1", "new")),
    message(b"D", b"K", tuple_data("1", None)),
    message(b"D", b"O", tuple_data("1", "whole old row")),
    message(b"I", b"N", tuple_data()),
]

BAD = [
    b"I\x00\x00",  # cut short before the tuple kind
    message(b"I", b"X", tuple_data("1", "a")),  # INSERT without a new tuple
    message(b"U", b"K", tuple_data("1", None)),  # UPDATE without a new tuple (ends after the old one)
    message(b"U", b"K", tuple_data("1", None), b"Z"),  # UPDATE with something else than a new tuple
    message(b"D", b"N", tuple_data("1", "a")),  # DELETE without an old tuple
    message(b"I", b"N", tuple_data("1", "a")[:-1]),  # a value longer than the message
    message(
        b"I", b"N", struct.pack(">h", 2) + b"t" + struct.pack(">i", 1) + b"1"
    ),  # fewer values than counted
    message(b"I", b"N", struct.pack(">h", 1) + b"t" + struct.pack(">i", -5)),  # negative length
    message(b"I", b"N", struct.pack(">h", 1) + b"b" + struct.pack(">i", 1) + b"\x01"),  # binary format
    message(b"I", b"N", struct.pack(">h", 1) + b"q"),  # unknown column kind
    message(b"I", b"N", tuple_data(b"\xff\xfe")),  # not UTF-8
    message(b"B", b"N", tuple_data("1")),  # not a row message
]


@pytest.mark.parametrize("msg", GOOD)
def test_same_values(msg: bytes) -> None:
    assert native.row_message(msg, UNCHANGED_TOAST) == pgoutput.row_message_py(msg, UNCHANGED_TOAST)
    c = native.row_message(msg, UNCHANGED_TOAST)
    assert all(type(v) is str or v is None or v is UNCHANGED_TOAST for t in c[1:] if t for v in t)


@pytest.mark.parametrize("msg", BAD)
def test_same_errors(msg: bytes) -> None:
    with pytest.raises(ValueError) as py_error:
        pgoutput.row_message_py(msg, UNCHANGED_TOAST)
    with pytest.raises(ValueError) as c_error:
        native.row_message(msg, UNCHANGED_TOAST)
    assert type(c_error.value) is type(py_error.value)
    if not isinstance(py_error.value, UnicodeDecodeError):
        assert str(c_error.value) == str(py_error.value)


@pytest.mark.parametrize("msg", GOOD)
def test_row_change_builds_the_same_change(msg: bytes) -> None:
    got = native.row_change(msg, {7: REL}, 0x16_B374_D848, 42, NOW)
    want = pgoutput.row_change_py(msg, {7: REL}, 0x16_B374_D848, 42, NOW)
    assert type(got) is Change and got == want
    assert type(got.lsn) is Lsn and str(got.lsn) == "16/B374D848"
    assert got.op is {ord("I"): Op.INSERT, ord("U"): Op.UPDATE, ord("D"): Op.DELETE}[msg[0]]
    assert got.relation is REL


def test_row_change_of_an_unknown_relation_is_none() -> None:
    msg = message(b"I", b"N", tuple_data("1", "a"), relid=99)
    assert native.row_change(msg, {7: REL}, 1, 1, NOW) is None
    assert pgoutput.row_change_py(msg, {7: REL}, 1, 1, NOW) is None


@uses_native
def test_the_decoder_uses_the_extension_when_it_is_built() -> None:
    assert pgoutput.row_change is native.row_change and pgoutput.row_message is native.row_message


def test_without_the_extension_the_python_decoder_is_used() -> None:
    # A fresh interpreter in which importing the extension fails, as when it was never built.
    code = (
        "import sys; sys.modules['replicator._pgoutput'] = None\n"
        "from replicator.decoding import pgoutput\n"
        "assert pgoutput.NATIVE is None\n"
        "assert pgoutput.row_change is pgoutput.row_change_py\n"
        "print('fallback ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr


def test_commit_times_convert_like_python() -> None:
    """Begin and Commit are decoded in C by the stream's read loop; their commit times are the
    datetimes pgoutput.pg_time makes, also across day, leap-year and century edges."""
    day = 86_400_000_000
    edges = [0, 1, -1, 999_999, -1_000_000, day - 1, day, 59 * day, 60 * day, 366 * day, 36_524 * day,
             -730_119 * day, 2_913_000 * day + 12_345]
    rng = random.Random(7)
    samples = edges + [rng.randint(-730_000 * day, 2_900_000 * day) for _ in range(50_000)]
    for micros in samples:
        assert native.pg_time(micros) == pgoutput.pg_time(micros), micros
    with pytest.raises(OverflowError):
        native.pg_time(4_000_000 * day)
