"""One walk over two ordered key streams: which destination keys the source no longer has.

A delta pass finds deletes by comparing key sets (``delta/walk.py``). Both servers stream one
table's keys in the same order as binary ``COPY ... TO STDOUT`` (a ``CopySource`` each: the
source's keys in the pass's snapshot, the destination's live keys), and this module merges the
two streams in one pass, like the merge step of a merge sort:

- a destination key below the source's current key is not at the source: it is *gone*, and
  its tuple (binary COPY bytes, as the destination sent it) goes to ``on_gone``, a buffer at a
  time;
- a source key below the destination's current key is not at the destination: *missing*,
  only counted (a caller knows how many keys its own pass adds; more is a sign of trouble);
- equal keys advance both.

Memory stays bounded: one row of each side at a time, plus one buffer of gone keys. Nothing is
decoded into Python objects on the C path (``replicator._relay.keywalk``, without the GIL);
the Python twin decodes each key into a tuple that orders the same way.

Ordering in both servers and here must agree. Each key column has a *kind*:
``i``: a big-endian two's-complement integer (int2/4/8, date, time, timestamp, timestamptz,
the same type on both sides); ``b``: bytes ordered by memcmp, then length (text and varchar
under ``COLLATE "C"`` with the same encoding on both sides, uuid, bytea, bool, oid, "char",
name). Other types (numeric, floats, enums, user types, ...) order in ways these bytes do not
show: ``kinds()`` returns None for them and the caller compares them another way.

Whether a stream *succeeded* is known only from its COPY's result, read after the walk
(``CopySource.finish``): a stream cut short by an error looks like a stream that ended, which
would make every later destination key look gone. So ``walk`` raises unless both COPYs
succeeded and their row counts are the rows walked, and a caller must not act on the gone
keys before ``walk`` has returned.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg

from replicator import native
from replicator.catalog import Column
from replicator.errors import ReplicatorError
from replicator.libpq import pgconn_ptr
from replicator.relay import BUFFER_BYTES, CopySource, RelayError

# Built-in type OIDs whose binary form orders like the server (see the module docstring).
_INTEGER_LIKE = {21: "int2", 23: "int4", 20: "int8", 1082: "date", 1083: "time", 1114: "timestamp",
                 1184: "timestamptz"}  # fmt: skip
_BYTES_LIKE = {25: "text", 1043: "varchar", 19: "name", 2950: "uuid", 17: "bytea", 16: "bool", 26: "oid",
               18: '"char"'}  # fmt: skip
COLLATABLE = {25, 1043}  # need COLLATE "C" and the same encoding on both sides
KIND_BY_OID = {**{oid: "i" for oid in _INTEGER_LIKE}, **{oid: "b" for oid in _BYTES_LIKE}}

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"

# Outcomes of the C loop, as in _relay.c (0: both streams ended).
_SOURCE_RECEIVE, _SOURCE_CONSUME, _DEST_RECEIVE, _DEST_CONSUME, _SOURCE_ROW, _DEST_ROW = 1, 2, 6, 7, 8, 9


class KeyWalkError(ReplicatorError):
    """A key stream sent something that is not a key of the expected shape."""


@dataclass(frozen=True)
class WalkResult:
    source_keys: int
    destination_keys: int
    gone: int  # destination keys the source does not have (handed to on_gone)
    missing: int  # source keys the destination does not have


def kinds(columns: Iterable[Column]) -> str | None:
    """The kinds of a key's columns, or None when one cannot be walked here."""
    found = [KIND_BY_OID.get(c.type_oid) for c in columns]
    if not found or any(k is None for k in found):
        return None
    return "".join(k for k in found if k is not None)


def walk(
    source: CopySource, destination: CopySource, key_kinds: str, on_gone: Callable[[bytes], None]
) -> WalkResult:
    """Start both streams, merge them (see the module docstring), and check both COPYs succeeded."""
    source.start()
    try:
        destination.start()
    except BaseException:
        source.abort()
        raise
    try:
        sp, dp = source.libpq_conn(), destination.libpq_conn()
        c_loop = native.keywalk() if sp is not None and dp is not None else None
        if c_loop is not None and sp is not None and dp is not None:
            counts = _walk_native(c_loop, source, destination, key_kinds, on_gone)
        else:
            counts = _walk_python(source, destination, key_kinds, on_gone)
    except BaseException:
        source.abort()
        destination.abort()
        raise
    try:
        source_rows = source.finish()
    except BaseException:
        destination.abort()
        raise
    destination_rows = destination.finish()
    result = WalkResult(*counts)
    if (source_rows, destination_rows) != (result.source_keys, result.destination_keys):
        raise KeyWalkError(
            f"the key streams said {source_rows:,} and {destination_rows:,} rows but "
            f"{result.source_keys:,} and {result.destination_keys:,} were walked; no key was deleted"
        )
    return result


def _walk_native(
    keywalk: native.KeyWalk,
    source: CopySource,
    destination: CopySource,
    key_kinds: str,
    on_gone: Callable[[bytes], None],
) -> tuple[int, int, int, int]:
    sp, dp = source.libpq_conn(), destination.libpq_conn()
    assert sp is not None and dp is not None
    src_ptr, dst_ptr = pgconn_ptr(sp), pgconn_ptr(dp)
    if src_ptr is None or dst_ptr is None:
        raise psycopg.OperationalError("the connection is closed")
    in_main_thread = threading.current_thread() is threading.main_thread()
    outcome, src_rows, dst_rows, gone, missing = keywalk(
        src_ptr, dst_ptr, key_kinds.encode(), on_gone, BUFFER_BYTES, in_main_thread
    )
    if outcome in (_SOURCE_RECEIVE, _SOURCE_CONSUME):
        raise RelayError(source.side, psycopg.OperationalError(f"reading keys: {sp.get_error_message()}"))
    if outcome in (_DEST_RECEIVE, _DEST_CONSUME):
        message = f"reading keys: {dp.get_error_message()}"
        raise RelayError(destination.side, psycopg.OperationalError(message))
    if outcome in (_SOURCE_ROW, _DEST_ROW):
        side = source.side if outcome == _SOURCE_ROW else destination.side
        raise KeyWalkError(f"the {side} sent a key row of an unexpected shape (or a NULL key)")
    return src_rows, dst_rows, gone, missing


# -- the Python twin ---------------------------------------------------------------------------

Key = tuple[int | bytes, ...]


class _Rows:
    """One side's tuples, decoded into keys that order like the server's."""

    def __init__(self, stream: CopySource, key_kinds: str):
        self.stream, self.kinds = stream, key_kinds
        self.started = False
        self.rows = 0
        self.tuple: bytes = b""
        self.key: Key | None = None  # None: ended

    def next(self) -> None:
        while True:
            data = self.stream.read_row()
            if data is None:
                self.key = None
                return
            if not self.started:
                self.started = True
                if len(data) < 19 or data[:11] != COPY_HEADER[:11]:
                    raise KeyWalkError(f"the {self.stream.side} sent no binary COPY header")
                data = data[19 + struct.unpack_from(">I", data, 15)[0] :]
                if not data:
                    continue
            if data == COPY_TRAILER:
                continue
            self.tuple, self.key = data, self._decode(data)
            self.rows += 1
            return

    def _decode(self, data: bytes) -> Key:
        if len(data) < 2 or struct.unpack_from(">h", data)[0] != len(self.kinds):
            raise KeyWalkError(f"the {self.stream.side} sent a key row of an unexpected shape")
        at, key = 2, []
        for kind in self.kinds:
            if at + 4 > len(data):
                raise KeyWalkError(f"the {self.stream.side} sent a truncated key row")
            (size,) = struct.unpack_from(">i", data, at)
            at += 4
            if size < 0 or at + size > len(data):
                raise KeyWalkError(f"the {self.stream.side} sent a NULL key or a truncated key row")
            value = data[at : at + size]
            key.append(int.from_bytes(value, "big", signed=True) if kind == "i" else value)
            at += size
        if at != len(data):
            raise KeyWalkError(f"the {self.stream.side} sent a key row with trailing bytes")
        return tuple(key)


def _walk_python(
    source: CopySource, destination: CopySource, key_kinds: str, on_gone: Callable[[bytes], None]
) -> tuple[int, int, int, int]:
    src, dst = _Rows(source, key_kinds), _Rows(destination, key_kinds)
    src.next()
    dst.next()
    gone = missing = 0
    buffer: list[bytes] = []
    size = 0
    while dst.key is not None:
        if src.key is None or src.key > dst.key:
            gone += 1
            buffer.append(dst.tuple)
            size += len(dst.tuple)
            if size >= BUFFER_BYTES:
                on_gone(b"".join(buffer))
                buffer.clear()
                size = 0
            dst.next()
            continue
        if src.key < dst.key:
            missing += 1
        else:
            dst.next()
        src.next()
    while src.key is not None:
        missing += 1
        src.next()
    if buffer:
        on_gone(b"".join(buffer))
    return src.rows, dst.rows, gone, missing
