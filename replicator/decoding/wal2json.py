"""Decoder for wal2json format version 2 (one JSON object per action), into the same events as pgoutput.

What wal2json does differently from pgoutput, and how we even it out:

- It has no Relation messages: each action names its schema and table and lists its columns
  (name, type oid). Table oid, typmod, replica identity and key flags come from ``describe``
  (a catalog lookup, see ``replicator.source.describe``), called once per table shape.
- Values are JSON: numbers arrive unquoted (we parse them as strings, so ``1.50`` stays
  ``1.50``), booleans as ``true``/``false`` (we turn them back to ``t``/``f``), ``bytea`` without
  its leading ``\\x`` (we put it back). wal2json prints NaN and ±Infinity in float and numeric
  columns as ``null``, a loss we cannot undo, unless asked for ``numeric-data-types-as-string``
  (wal2json 2.6+; ``numeric_as_string=True``).
- An UPDATE leaves out unchanged TOASTed columns: they become ``UNCHANGED_TOAST``.
- ``identity`` holds the old replica identity: key columns (DEFAULT / INDEX) or the whole old
  row (FULL). For an UPDATE that did not change the key it repeats the new key; pgoutput sends
  no old tuple then, and neither do we.
- It sends empty transactions and, for TRUNCATE, one action per table; pgoutput (PostgreSQL 15)
  skips the former and sends one message for the latter. We do the same as pgoutput
  (wal2json does not say whether CASCADE or RESTART IDENTITY was used: both read False).
- It prints generated columns; pgoutput (PostgreSQL 15) does not publish them: we drop them.
  (Known from the catalog: a generated column dropped before its changes are decoded is taken
  for a plain one.)
- It names partitions, not the partitioned table (it knows nothing of publish_via_partition_root).
- Logical decoding messages (``pg_logical_emit_message``) come as action ``M`` whatever the
  options; transactional ones sit inside their transaction, as with pgoutput's ``messages``.

The hot path (Begin, Insert, Update, Delete, Commit) runs in C when ``replicator._wal2json`` is
built (``replicator/native.py`` decides): ``decode`` tries it first, and ``native_pump`` reads
runs of such actions straight from libpq, as pgoutput's does. The C parser hands anything it is
not sure of back to the Python code here, which stays the reference (same events, same errors;
tests/decoding/test_wal2json_native.py), and it learns column-list shapes from ``_native_shape``.

The options we ask for are already the leanest that carry what we need: no type names, typmods,
not-null flags, defaults or primary-key lists (all off); xids, timestamps and LSNs are needed by
Begin and Commit (wal2json repeats the first two in every action, which no option prevents).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
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

BOOL_OID = 16
BYTEA_OID = 17
_NONE: tuple[Event, ...] = ()


@dataclass(frozen=True)
class TableInfo:
    """A table as the catalog describes it now: the relation pgoutput would send, and its generated
    columns."""

    relation: Relation
    generated: frozenset[str] = frozenset()


Describe = Callable[[str, str], "TableInfo | None"]
"""(schema, table) -> what the catalog says about the table, or None if it is gone."""


# Numbers stay the text the server printed: "1.50" must not become 1.5, nor a float8 "-0" become 0.
# The C scanner itself: JSONDecoder.decode only wraps it with whitespace checks we do not need.
_scan = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=str).scan_once  # type: ignore[attr-defined]
_name_and_type = operator.itemgetter("name", "typeoid")
_value_of = operator.itemgetter("value")


@dataclass
class _Shape:
    """How one column list (as a message lists it) maps onto a relation."""

    relation: Relation
    positions: tuple[int, ...] | None  # message column i -> relation column; None: identical order
    fix: tuple[tuple[int, int], ...]  # (message position, type oid) of values to convert (bool, bytea)


class Wal2JsonDecoder:
    """Decode wal2json v2 actions into change events. One instance per replication connection.

    ``tables``: (schema, table) pairs to stream (wal2json's ``add-tables``); all tables when None.
    """

    plugin = "wal2json"

    def __init__(
        self,
        describe: Describe,
        tables: Iterable[tuple[str, str]] | None = None,
        numeric_as_string: bool = False,
    ):
        self.describe = describe
        self.tables = tuple(tables) if tables is not None else None
        # wal2json 2.6+: numbers as JSON strings, which keeps NaN and Infinity (else printed null).
        # See replicator.source.slots.wal2json_accepts to find out whether the server's wal2json can.
        self.numeric_as_string = numeric_as_string
        self._shapes: dict[tuple[str, str, tuple[Any, ...]], _Shape] = {}
        self._tables: dict[tuple[str, str], TableInfo] = {}
        # The C decoder's shapes: raw column-list key -> _native_shape()'s tuple. Cleared (never
        # replaced: the C code holds it) whenever a table's shape in _tables changes.
        self._native_shapes: dict[bytes, tuple[Any, ...]] = {}
        self._native: ModuleType | None = NATIVE
        self._begin: Begin | None = None  # Begin not yet sent: sent with the first change
        self.in_transaction = False
        self._xid = 0
        self._time: datetime | None = None
        self._truncate: list[Relation] = []
        self._truncate_lsn = 0

    def options(self) -> dict[str, str]:
        options = {
            "format-version": "2",
            "include-xids": "1",
            "include-timestamp": "1",
            "include-lsn": "1",
            "include-type-oids": "1",
            "include-types": "0",
        }
        if self.numeric_as_string:
            options["numeric-data-types-as-string"] = "1"
        if self.tables is not None:
            options["add-tables"] = ",".join(f"{_escape(s)}.{_escape(t)}" for s, t in self.tables)
        return options

    def native_pump(self) -> Pump | None:
        """A loop in C that reads runs of Begin, row and Commit actions straight from libpq into
        events (``replicator._wal2json.pump``, used by ``ReplicationStream.read``), or None when
        the extension or psycopg's libpq cannot be used."""
        module = self._native
        if module is None or not native.bind_wal2json(module):
            return None
        pump = module.pump

        def run(conn_ptr: int, out: list[Event], max_events: int, max_messages: int, stop: int) -> PumpResult:
            got: PumpResult = pump(conn_ptr, self, out, max_events, max_messages, stop)
            return got

        return run

    def reset(self) -> None:
        self._shapes.clear()
        self._tables.clear()
        self._native_shapes.clear()
        self._begin = None
        self.in_transaction = False
        self._truncate = []

    def decode(self, data: bytes | str, lsn: int) -> Sequence[Event]:
        if self._native is not None and not isinstance(data, str):
            out: list[Event] = []
            if self._native.step(self, data, out):
                return out
        try:
            msg = _scan(data if isinstance(data, str) else data.decode(), 0)[0]
            action = msg["action"]
        except (ValueError, KeyError, TypeError, StopIteration) as e:
            raise DecodeError(f"malformed wal2json message at {Lsn(lsn)}: {e!r}") from None
        try:
            if self._truncate and action != "T":
                flushed = self._flush_truncate()
                return (*flushed, *self._action(action, msg, lsn))
            return self._action(action, msg, lsn)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DecodeError):
                raise
            raise DecodeError(f"unexpected wal2json {action!r} message at {Lsn(lsn)}: {e!r}") from None

    def _action(self, action: str, msg: dict[str, Any], lsn: int) -> Sequence[Event]:
        if action == "I" or action == "U" or action == "D":
            change = self._change(action, msg)
            if change is None:
                return _NONE
            return self._with_begin(change)
        if action == "B":
            self._xid = int(msg["xid"])
            self._time = _timestamp(msg["timestamp"])
            self._begin = Begin(self._xid, _lsn(msg["lsn"]), self._time)
            self.in_transaction = True
            return _NONE
        if action == "C":
            self.in_transaction = False
            if self._begin is not None:  # nothing was sent: skip the empty transaction
                self._begin = None
                return _NONE
            assert self._time is not None
            return (Commit(self._xid, _lsn(msg["lsn"]), _lsn(msg["nextlsn"]), self._time),)
        if action == "T":
            shape = self._reshape(msg["schema"], msg["table"], (), (), partial=True)
            self._truncate.append(shape.relation)
            self._truncate_lsn = _lsn(msg["lsn"])
            return _NONE
        if action == "M":
            return self._message(msg)
        raise DecodeError(f"unknown wal2json action {action!r}")

    def _message(self, msg: dict[str, Any]) -> Sequence[Event]:
        """A logical decoding message, as pgoutput's ``messages 'true'`` gives it. (wal2json prints
        the content as text: a binary content is cut at its first NUL byte.)"""
        transactional = bool(msg["transactional"])
        message = Message(
            str(msg["prefix"]),
            str(msg["content"]).encode(),
            transactional,
            _lsn(msg["lsn"]),
            self._xid if transactional else 0,
        )
        return self._with_begin(message) if transactional else (message,)

    def _with_begin(self, event: Event) -> Sequence[Event]:
        if self._begin is not None:
            begin, self._begin = self._begin, None
            return (begin, event)
        return (event,)

    def _flush_truncate(self) -> Sequence[Event]:
        rels, self._truncate = tuple(self._truncate), []
        assert self._time is not None
        return self._with_begin(Truncate(rels, False, False, Lsn(self._truncate_lsn), self._xid, self._time))

    # Rows.

    def _change(self, action: str, msg: dict[str, Any]) -> Change | None:
        schema, table = msg["schema"], msg["table"]
        assert self._time is not None
        lsn = _lsn(msg["lsn"])
        if action == "D":
            ident = msg["identity"]
            shape = self._shape_of(schema, table, ident, partial=True)
            return Change(
                Op.DELETE, shape.relation, None, _values(shape, ident, None), lsn, self._xid, self._time
            )
        columns = msg["columns"]
        if action == "I":
            shape = self._shape_of(schema, table, columns, partial=False)
            new = _values(shape, columns, None)
            return Change(Op.INSERT, shape.relation, new, None, lsn, self._xid, self._time)
        shape = self._shape_of(schema, table, columns, partial=True)
        new = _values(shape, columns, UNCHANGED_TOAST)
        rel = shape.relation
        old: Values | None = None
        ident = msg.get("identity")
        if ident is not None:
            ishape = self._shape_of(schema, table, ident, partial=True)
            if ishape.relation is rel:
                old = _values(ishape, ident, None)
                if rel.replica_identity is not ReplicaIdentity.FULL and all(
                    old[i] == new[i] for i in rel.key_indexes
                ):
                    old = None  # the key did not change: pgoutput sends no old key then
        return Change(Op.UPDATE, rel, new, old, lsn, self._xid, self._time)

    # Relations.

    def _shape_of(self, schema: str, table: str, columns: list[dict[str, Any]], partial: bool) -> _Shape:
        return self._shape_for(schema, table, tuple(map(_name_and_type, columns)), partial)

    def _native_shape(
        self, schema: str, table: str, names: tuple[str, ...], typeoids: tuple[str, ...], partial: bool
    ) -> tuple[Relation, tuple[int, ...] | None, bytes | None, tuple[int, ...] | None, int]:
        """What the C decoder needs of a column list's shape: (relation, positions, a fix code
        per listed column (1 bool, 2 bytea) or None, the key indexes an UPDATE's old key is
        compared on (None with identity FULL), the relation's column count)."""
        shape = self._shape_for(schema, table, tuple(zip(names, typeoids, strict=True)), partial)
        rel = shape.relation
        fix = None
        if shape.fix:
            codes = bytearray(len(names))
            for i, type_oid in shape.fix:
                codes[i] = 1 if type_oid == BOOL_OID else 2
            fix = bytes(codes)
        compare = None if rel.replica_identity is ReplicaIdentity.FULL else rel.key_indexes
        return rel, shape.positions, fix, compare, len(rel.columns)

    def _shape_for(self, schema: str, table: str, signature: tuple[Any, ...], partial: bool) -> _Shape:
        key = (schema, table, signature)
        shape = self._shapes.get(key)
        if shape is not None:
            state = self._tables.get((schema, table))
            if state is not None and shape.relation is state.relation:
                return shape
        names = tuple(n for n, _ in signature)
        types = tuple(int(t) for _, t in signature)
        return self._reshape(schema, table, names, types, partial, key)

    def _reshape(
        self,
        schema: str,
        table: str,
        names: tuple[str, ...],
        types: tuple[int, ...],
        partial: bool,
        key: tuple[str, str, tuple[Any, ...]] | None = None,
    ) -> _Shape:
        """The table's relation as of this message: the one we have if the columns fit, else a new one."""
        state = self._tables.get((schema, table))
        if state is None or not _fits(state, names, types, partial):
            state = self._build(schema, table, names, types, partial)
            self._tables[(schema, table)] = state
            self._native_shapes.clear()  # shapes of this table's old relation are stale
        shape = _make_shape(state.relation, names, types)
        if key is not None:
            self._shapes[key] = shape
        return shape

    def _build(
        self, schema: str, table: str, names: tuple[str, ...], types: tuple[int, ...], partial: bool
    ) -> TableInfo:
        info = self.describe(schema, table)
        if info is None:  # dropped since: the message is all we know
            columns = tuple(Column(n, t, -1, False) for n, t in zip(names, types, strict=False))
            return TableInfo(Relation(0, schema, table, ReplicaIdentity.DEFAULT, columns))
        if _fits(info, names, types, partial):
            return info  # the catalog's shape is the message's (or a superset: TOAST, identity)
        # The catalog has moved on since this change (a column added or dropped later):
        # the message's columns are the truth, the catalog still knows their typmod and key flag.
        by_name = {c.name: c for c in info.relation.columns}
        listed = []
        for name, type_oid in zip(names, types, strict=False):
            if name in info.generated:
                continue
            col = by_name.get(name)
            listed.append(
                col if col is not None and col.type_oid == type_oid else Column(name, type_oid, -1, False)
            )
        known = info.relation
        return TableInfo(
            Relation(known.oid, schema, table, known.replica_identity, tuple(listed)), info.generated
        )


def _fits(info: TableInfo, names: tuple[str, ...], types: tuple[int, ...], partial: bool) -> bool:
    """Whether a message listing these columns can come from this table shape (a subset, when ``partial``)."""
    by_name = {c.name: c.type_oid for c in info.relation.columns}
    listed = [(n, t) for n, t in zip(names, types, strict=False) if n not in info.generated]
    if not all(by_name.get(n) == t for n, t in listed):
        return False
    return partial or len(listed) == len(by_name)


def _make_shape(rel: Relation, names: tuple[str, ...], types: tuple[int, ...]) -> _Shape:
    index = {n: i for i, n in enumerate(rel.names)}
    positions = tuple(index.get(n, -1) for n in names)
    fix = tuple((i, t) for i, t in enumerate(types) if t == BOOL_OID or t == BYTEA_OID)
    same = positions == tuple(range(len(rel.columns)))
    return _Shape(rel, None if same else positions, fix)


def _values(shape: _Shape, columns: list[dict[str, Any]], missing: Value) -> Values:
    values: list[Any] = list(map(_value_of, columns))  # str or None; bool for bool columns
    for i, type_oid in shape.fix:
        v = values[i]
        if v is not None:
            if type_oid == BOOL_OID:
                values[i] = "t" if v is True else "f"
            else:
                values[i] = "\\x" + v
    if shape.positions is None:
        return tuple(values)
    row: list[Value] = [missing] * len(shape.relation.columns)
    for pos, v in zip(shape.positions, values, strict=False):
        if pos >= 0:  # -1: a generated column, which pgoutput does not publish
            row[pos] = v
    return tuple(row)


PumpResult = tuple[int, int, int, int, "bytes | None"]
Pump = Callable[[int, list[Event], int, int, int], PumpResult]
"""(PGconn pointer, events out, max events, max messages, stop at position): as pgoutput's."""


def _configure(module: Any) -> str | None:
    """Hand the change model to ``replicator._wal2json``; why it cannot be used, or None."""
    try:
        module.configure(
            *(Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, UNCHANGED_TOAST),
            *(Begin, Commit, datetime.fromisoformat),
        )
    except (TypeError, AttributeError) as e:
        return f"the C decoder does not fit this code ({e}); `pip install -e .` rebuilds it"
    return None


NATIVE = native.wal2json(_configure)


def _lsn(text: str) -> Lsn:
    """An LSN wal2json printed ("16/B374D848"): well-formed, so parsed without Lsn.parse's checks."""
    hi, _, lo = text.partition("/")
    return lsn_from_server((int(hi, 16) << 32) | int(lo, 16))


def _timestamp(text: str) -> datetime:
    # timestamptz_to_str: "2024-05-01 12:00:00.1234+02" (fractional digits trimmed, offset in hours).
    return datetime.fromisoformat(text)


def _escape(name: str) -> str:
    # add-tables splits on "," and "."; a backslash makes the next character literal.
    out = []
    for ch in name:
        if ch in ",.\\ " or ch == "*":
            out.append("\\")
        out.append(ch)
    return "".join(out)
