"""Decoder for pgoutput, PostgreSQL's built-in logical replication output (protocol 1 and 2).

Message formats: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
We never ask for streaming of in-progress transactions, so protocol 2 carries the same messages
as protocol 1 (streaming is what it adds). Values arrive in text format (we never ask for
``binary``), which is exactly what the change model wants.

This is the hot path of realtime catch-up. Row messages (Insert, Update, Delete) become Change
events in ``row_change``: the C extension ``replicator._pgoutput`` when it is built, else
``row_change_py``, which parses with precompiled ``struct`` readers straight from the buffer
and decodes a message made of ASCII only (the common case) to ``str`` once and slices it.
Both give the same events and the same errors (tests/decoding runs both).
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from replicator import native
from replicator.decoding.changes import (
    UNCHANGED_TOAST,
    Begin,
    Change,
    Column,
    Commit,
    DecodeError,
    Event,
    Message,
    Op,
    Relation,
    ReplicaIdentity,
    Truncate,
    Value,
    Values,
)
from replicator.lsn import Lsn, lsn_from_server

log = logging.getLogger(__name__)

_lsn = lsn_from_server
_int16 = struct.Struct(">h").unpack_from
_int32 = struct.Struct(">i").unpack_from
_uint32 = struct.Struct(">I").unpack_from
_uint64 = struct.Struct(">Q").unpack_from
_begin = struct.Struct(">QqI").unpack_from  # final LSN, commit time, xid
_commit = struct.Struct(">BQQq").unpack_from  # flags, commit LSN, end LSN, commit time
_attr = struct.Struct(">Ii").unpack_from  # type oid, typmod

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NONE: tuple[Event, ...] = ()

# Tuple column kinds, as byte values.
_TEXT, _NULL, _TOAST, _BINARY = b"t"[0], b"n"[0], b"u"[0], b"b"[0]


def pg_time(microseconds: int) -> datetime:
    """A PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=microseconds)


class PgOutputDecoder:
    """Decode pgoutput messages into change events. One instance per replication connection.

    ``publications``: the publications to stream (``publication_names``). ``messages``: ask for
    logical decoding messages too (``messages 'true'``, PostgreSQL 14+), decoded as ``Message``
    events (the DDL capture's, see ``replicator.source.ddlcapture``).
    """

    plugin = "pgoutput"

    def __init__(self, publications: Sequence[str], proto_version: int = 1, messages: bool = False):
        if proto_version not in (1, 2):
            raise ValueError(f"pgoutput protocol version {proto_version} is not supported (1 or 2)")
        if not publications:
            raise ValueError("pgoutput needs at least one publication")
        self.publications = tuple(publications)
        self.proto_version = proto_version
        self.messages = messages
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, tuple[str, str]] = {}  # oid -> (schema, name), from Type messages
        self._xid = 0
        self._time = PG_EPOCH
        self.in_transaction = False
        self._handlers: dict[int, Callable[[bytes, int], Sequence[Event]]] = {
            ord("B"): self._on_begin,
            ord("C"): self._on_commit,
            ord("I"): self._on_row,
            ord("U"): self._on_row,
            ord("D"): self._on_row,
            ord("T"): self._on_truncate,
            ord("R"): self._on_relation,
            ord("Y"): self._on_type,
            ord("O"): _ignore,  # origin of a transaction replayed from elsewhere
            ord("M"): self._on_message,  # logical decoding message (only sent when asked for)
        }

    def options(self) -> dict[str, str]:
        options = {
            "proto_version": str(self.proto_version),
            "publication_names": ",".join(_quote_ident(p) for p in self.publications),
        }
        if self.messages:
            options["messages"] = "true"
        return options

    def native_pump(self) -> Pump | None:
        """A loop in C that reads runs of Begin, row and Commit messages straight from libpq into
        events, keeping this decoder's transaction state (``replicator._pgoutput.pump``, used by
        ``ReplicationStream.read``), or None when the extension or psycopg's libpq cannot be used."""
        if NATIVE is None or not native.bind_pgoutput(NATIVE):
            return None
        pump, relations = NATIVE.pump, self.relations  # the dict itself: reset() clears it in place

        def run(conn_ptr: int, out: list[Event], max_events: int, max_messages: int, stop: int) -> PumpResult:
            got: PumpResult = pump(conn_ptr, self, relations, out, max_events, max_messages, stop)
            return got

        return run

    def reset(self) -> None:
        self.relations.clear()
        self.types.clear()
        self.in_transaction = False

    def decode(self, data: bytes, lsn: int) -> Sequence[Event]:
        try:
            handler = self._handlers[data[0]]
        except KeyError:
            raise DecodeError(f"unexpected pgoutput message {chr(data[0])!r} at {Lsn(lsn)}") from None
        except IndexError:
            raise DecodeError(f"empty pgoutput message at {Lsn(lsn)}") from None
        try:
            return handler(data, lsn)
        except (struct.error, IndexError, ValueError) as e:
            if isinstance(e, DecodeError):
                raise
            raise DecodeError(f"malformed pgoutput {chr(data[0])!r} message at {Lsn(lsn)}: {e}") from e

    # Transactions.

    def _on_begin(self, buf: bytes, lsn: int) -> Sequence[Event]:
        final_lsn, micros, xid = _begin(buf, 1)
        self._xid = xid
        self._time = pg_time(micros)
        self.in_transaction = True
        return (Begin(xid, _lsn(final_lsn), self._time),)

    def _on_commit(self, buf: bytes, lsn: int) -> Sequence[Event]:
        _flags, commit_lsn, end_lsn, _micros = _commit(buf, 1)
        self.in_transaction = False
        return (Commit(self._xid, _lsn(commit_lsn), _lsn(end_lsn), self._time),)

    # Rows.

    def _on_row(self, buf: bytes, lsn: int) -> Sequence[Event]:
        """Insert, Update or Delete."""
        change = row_change(buf, self.relations, lsn, self._xid, self._time)
        if change is None:
            self._known(_uint32(buf, 1)[0])  # raises: no Relation message for it yet
            raise AssertionError("unreachable")
        return (change,)

    def _on_truncate(self, buf: bytes, lsn: int) -> Sequence[Event]:
        (count,) = _int32(buf, 1)
        options = buf[5]
        oids = struct.unpack_from(f">{count}I", buf, 6)
        rels = tuple(self._known(oid) for oid in oids)
        return (Truncate(rels, bool(options & 1), bool(options & 2), _lsn(lsn), self._xid, self._time),)

    def _on_message(self, buf: bytes, lsn: int) -> Sequence[Event]:
        """Int8 flags (1: transactional), Int64 LSN, String prefix, Int32 length, Byte[n] content.
        (A streamed transaction's messages also carry its xid first; we never ask for streaming.)"""
        flags = buf[1]
        (message_lsn,) = _uint64(buf, 2)
        prefix, pos = _cstring(buf, 10)
        (size,) = _int32(buf, pos)
        pos += 4
        if size < 0 or pos + size != len(buf):
            raise DecodeError(f"pgoutput message at {Lsn(lsn)}: content length {size} does not fit")
        transactional = bool(flags & 1)
        xid = self._xid if transactional else 0
        return (Message(prefix, bytes(buf[pos:]), transactional, _lsn(message_lsn), xid),)

    # Catalog.

    def _on_relation(self, buf: bytes, lsn: int) -> Sequence[Event]:
        (oid,) = _uint32(buf, 1)
        schema, pos = _cstring(buf, 5)
        table, pos = _cstring(buf, pos)
        identity = ReplicaIdentity(chr(buf[pos]))
        (ncols,) = _int16(buf, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = buf[pos]
            name, pos = _cstring(buf, pos + 1)
            type_oid, typmod = _attr(buf, pos)
            pos += 8
            columns.append(Column(name, type_oid, typmod, bool(flags & 1)))
        self.relations[oid] = Relation(oid, schema or "pg_catalog", table, identity, tuple(columns))
        return _NONE

    def _on_type(self, buf: bytes, lsn: int) -> Sequence[Event]:
        (oid,) = _uint32(buf, 1)
        schema, pos = _cstring(buf, 5)
        name, _ = _cstring(buf, pos)
        self.types[oid] = (schema or "pg_catalog", name)
        return _NONE

    def _known(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None


def row_message_py(buf: bytes, toast: Value) -> tuple[int, Values | None, Values | None]:
    """An Insert, Update or Delete message: (relation oid, old values or None, new values or None).

    The pure-Python version of ``replicator._pgoutput.row_message`` (same results, same errors).
    """
    if len(buf) < 6:
        raise ValueError("row message cut short")
    try:
        return _row_message(buf, toast)
    except (struct.error, IndexError):
        raise ValueError("tuple data cut short") from None


def _row_message(buf: bytes, toast: Value) -> tuple[int, Values | None, Values | None]:
    (relid,) = _uint32(buf, 1)
    text = _text_of(buf)
    kind = buf[0]
    old = new = None
    if kind == 73:  # 'I'
        if buf[5] != 78:  # 'N'
            raise ValueError("INSERT without a new tuple")
        new, _ = read_tuple(buf, 6, text, toast)
    elif kind == 85:  # 'U'
        pos = 5
        tuple_kind = buf[pos]
        if tuple_kind == 75 or tuple_kind == 79:  # 'K' (old key) or 'O' (old row)
            old, pos = read_tuple(buf, pos + 1, text, toast)
            if pos >= len(buf):
                raise ValueError("UPDATE without a new tuple")
            tuple_kind = buf[pos]
        if tuple_kind != 78:
            raise ValueError("UPDATE without a new tuple")
        new, _ = read_tuple(buf, pos + 1, text, toast)
    elif kind == 68:  # 'D'
        if buf[5] not in (75, 79):
            raise ValueError("DELETE without an old tuple")
        old, _ = read_tuple(buf, 6, text, toast)
    else:
        raise ValueError(f"not a row message: {chr(kind)!r}")
    return relid, old, new


def read_tuple(buf: bytes, pos: int, text: str | None, toast: Value = UNCHANGED_TOAST) -> tuple[Values, int]:
    """TupleData at ``pos``: the values and the position after them.

    ``text`` is ``buf`` decoded, when it is ASCII (so byte offsets are character offsets).
    """
    (count,) = _int16(buf, pos)
    pos += 2
    size = len(buf)
    values: list[Value] = []
    append = values.append
    for _ in range(count):
        kind = buf[pos]
        if kind == _TEXT:
            (length,) = _int32(buf, pos + 1)
            pos += 5
            end = pos + length
            if length < 0 or end > size:
                raise ValueError("tuple value longer than its message")
            append(text[pos:end] if text is not None else buf[pos:end].decode())
            pos = end
        elif kind == _NULL:
            append(None)
            pos += 1
        elif kind == _TOAST:
            append(toast)
            pos += 1
        elif kind == _BINARY:
            raise ValueError("binary tuple data: the stream was started with binary 'true'")
        else:
            raise ValueError(f"unknown tuple column kind {chr(kind)!r}")
    return tuple(values), pos


def _text_of(buf: bytes) -> str | None:
    try:
        return buf.decode("ascii")
    except UnicodeDecodeError:  # not all ASCII: values are decoded one by one, as UTF-8
        return None


def row_change_py(
    buf: bytes, relations: dict[int, Relation], lsn: int, xid: int, commit_time: datetime
) -> Change | None:
    """An Insert, Update or Delete message as a Change event (None if its relation is unknown).

    The pure-Python version of ``replicator._pgoutput.row_change``.
    """
    relid, old, new = row_message_py(buf, UNCHANGED_TOAST)
    rel = relations.get(relid)
    if rel is None:
        return None
    return Change(_ROW_OPS[buf[0]], rel, new, old, _lsn(lsn), xid, commit_time)


def _configure(module: Any) -> str | None:
    """Hand the extension the classes it builds events from; why it does not fit, or None."""
    # row_change fills the fields the dataclass's __init__ would, and nothing else.
    if [f.name for f in dataclasses.fields(Change)] != [
        "op",
        "relation",
        "new",
        "old",
        "lsn",
        "xid",
        "commit_time",
    ]:
        return "Change's fields are not the ones the C decoder fills"
    for event, names in ((Begin, ["xid", "final_lsn", "commit_time"]),
                         (Commit, ["xid", "commit_lsn", "end_lsn", "commit_time"])):
        if [f.name for f in dataclasses.fields(event)] != names:
            return f"{event.__name__}'s fields are not the ones the C decoder fills"
    if any(hasattr(event, "__post_init__") for event in (Change, Begin, Commit)):
        return "an event class has a __post_init__ the C decoder would skip"
    try:
        module.configure(Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, UNCHANGED_TOAST, Begin, Commit)
    except TypeError as e:
        return f"the C decoder does not fit this code: {e}"
    return None


PumpResult = tuple[int, int, int, int, "bytes | None"]
"""(outcome, messages taken, highest WAL end seen, position after the last commit taken (0: none),
a message for the caller): see _pgoutput.c."""
Pump = Callable[[int, list[Event], int, int, int], PumpResult]
"""(PGconn pointer, events out, max events, max messages, stop at position) -> PumpResult"""
PUMP_FULL, PUMP_COUNT, PUMP_NO_DATA, PUMP_MESSAGE, PUMP_END, PUMP_FAILED, PUMP_UNTIL = range(7)


NATIVE = native.pgoutput(_configure)
"""``replicator._pgoutput`` when it is built and usable (not switched off: ``replicator.native``),
else None."""
row_message = NATIVE.row_message if NATIVE else row_message_py
row_change = NATIVE.row_change if NATIVE else row_change_py

_ROW_OPS = {ord("I"): Op.INSERT, ord("U"): Op.UPDATE, ord("D"): Op.DELETE}


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _quote_ident(name: str) -> str:
    # publication_names is parsed as a list of SQL identifiers.
    return '"' + name.replace('"', '""') + '"'


def _ignore(buf: bytes, lsn: int) -> Sequence[Event]:
    return _NONE
