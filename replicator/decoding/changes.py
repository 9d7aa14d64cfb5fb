"""The change model: what both decoders (pgoutput, wal2json) produce, and what destinations apply.

A decoded replication stream is a sequence of events::

    Begin, (Change | Truncate | Message)*, Commit, Begin, ...

(a ``Message`` that is not transactional may also come between transactions).

Row values are PostgreSQL *text-format* strings (what the type's output function prints),
``None`` for NULL, or ``UNCHANGED_TOAST`` for a TOASTed value an UPDATE did not modify (the
source did not send it: keep what the destination holds). Value tuples are aligned with
``Relation.columns``.

Everything here is a value: build it once, share it, never mutate it. The hot-path classes
(``Change``) are not ``frozen`` only because frozen dataclasses are markedly slower to create.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol, TypeAlias

from replicator.lsn import Lsn


class _UnchangedToast:
    """The type of ``UNCHANGED_TOAST``; there is exactly one instance."""

    __slots__ = ()
    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()
"""An unchanged TOASTed value (pgoutput ``u``; a column wal2json leaves out of an UPDATE)."""

Value: TypeAlias = str | None | _UnchangedToast
Values: TypeAlias = tuple[Value, ...]


class Op(enum.Enum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    TRUNCATE = "truncate"

    def __repr__(self) -> str:
        return f"Op.{self.name}"


class ReplicaIdentity(enum.Enum):
    """``pg_class.relreplident``: which old values the source logs for UPDATE and DELETE."""

    DEFAULT = "d"  # the primary key, if there is one
    NOTHING = "n"
    FULL = "f"  # the whole old row
    INDEX = "i"  # the columns of a chosen unique index

    def __repr__(self) -> str:
        return f"ReplicaIdentity.{self.name}"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int  # pg_attribute.atttypmod; -1 when the type has none
    is_key: bool  # part of the replica identity (with REPLICA IDENTITY FULL: every column)


@dataclass(frozen=True, slots=True)
class Relation:
    """A published table as the stream describes it at this point of the WAL."""

    oid: int
    schema: str
    table: str
    replica_identity: ReplicaIdentity
    columns: tuple[Column, ...]
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    key_indexes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.columns))
        object.__setattr__(self, "key_indexes", tuple(i for i, c in enumerate(self.columns) if c.is_key))

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"

    def key_names(self) -> tuple[str, ...]:
        return tuple(self.names[i] for i in self.key_indexes)


@dataclass(frozen=True, slots=True)
class Begin:
    xid: int
    final_lsn: Lsn  # where the transaction's commit record is (== Commit.commit_lsn)
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Commit:
    xid: int
    commit_lsn: Lsn  # the commit record
    end_lsn: Lsn  # just past it: the position to confirm once this transaction is applied
    commit_time: datetime


@dataclass(slots=True)
class Change:
    """One row inserted, updated or deleted.

    ``new``: the row after an INSERT or UPDATE (``None`` for DELETE); may hold ``UNCHANGED_TOAST``.
    ``old``: for UPDATE and DELETE, the old replica-identity values the source logged, aligned with
    ``relation.columns``: with identity FULL the whole old row; otherwise only the positions in
    ``relation.key_indexes`` carry values (the others are ``None``). An UPDATE has ``old`` only
    when it changed the key (or identity is FULL); otherwise the key is the one in ``new``.
    ``lsn``: the change's own WAL position; ``xid`` and ``commit_time`` are its transaction's.
    """

    op: Op
    relation: Relation
    new: Values | None
    old: Values | None
    lsn: Lsn
    xid: int
    commit_time: datetime

    def key(self) -> Values:
        """The identity values locating the row before this change (old key, else the new one)."""
        row = self.old if self.old is not None else self.new
        assert row is not None
        return tuple(row[i] for i in self.relation.key_indexes)


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more tables in one statement (CASCADE and RESTART IDENTITY as given)."""

    relations: tuple[Relation, ...]
    cascade: bool
    restart_identity: bool
    lsn: Lsn
    xid: int
    commit_time: datetime

    @property
    def op(self) -> Op:
        return Op.TRUNCATE


@dataclass(frozen=True, slots=True)
class Message:
    """A logical decoding message: what ``pg_logical_emit_message(transactional, prefix, content)``
    wrote into the WAL.

    Transactional messages arrive inside their transaction (between its Begin and Commit, in
    order with its changes) and only if it commits; the others arrive at once, outside any
    transaction, whatever becomes of the transaction that wrote them. ``lsn`` is the end of the
    message's WAL record (what ``pg_logical_emit_message`` returned); ``xid`` is the transaction's
    (0 when not transactional). Prefixes say who a message is for (``replicator.ddl``: the DDL
    capture, see ``replicator.source.ddlcapture``); consumers skip the ones they do not know.
    """

    prefix: str
    content: bytes
    transactional: bool
    lsn: Lsn
    xid: int


Event: TypeAlias = Begin | Change | Truncate | Message | Commit


class Decoder(Protocol):
    """Turns one output-plugin message into events; keeps whatever state that needs (relations)."""

    plugin: str  # the output plugin this decoder reads: "pgoutput" or "wal2json"

    def options(self) -> dict[str, str]:
        """The plugin options to start decoding with (START_REPLICATION / pg_logical_slot_*)."""
        ...

    def decode(self, data: bytes, lsn: int) -> Sequence[Event]:
        """Events for one message; ``lsn`` is the position the server gave with it."""
        ...

    def reset(self) -> None:
        """Forget per-connection state (call after reconnecting: the server resends relations)."""
        ...

    in_transaction: bool
    """Whether the messages decoded so far left a transaction open (Begin seen, Commit not)."""


class DecodeError(ValueError):
    """A message did not have the shape its protocol says: a bug here or in the plugin."""
