"""Schema changes as the DDL capture writes them (``replicator.source.ddlcapture``): the model.

A ``Message`` with prefix ``replicator.ddl`` carries one command's effect: each table it touched,
as it was before and as it is after (``TableShape``), and what the trigger did with publications.
``parse`` turns one into a ``DdlMessage``; ``decoding/ddlplan.py`` works out what the destination
must do. Values only: nothing here touches a database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from replicator.decoding.changes import DecodeError, Message
from replicator.lsn import Lsn

PREFIX = "replicator.ddl"

# table_rewrite reasons (PostgreSQL's AT_REWRITE_* bits).
REWRITE_PERSISTENCE = 1
REWRITE_DEFAULT = 2  # a volatile default filled every row (ADD COLUMN ... DEFAULT random())
REWRITE_COLUMN = 4  # a column's values were converted (ALTER COLUMN TYPE)
REWRITE_ACCESS_METHOD = 8


@dataclass(frozen=True)
class ColumnShape:
    attnum: int
    name: str
    type_sql: str  # format_type, schema-qualified for user types
    type_oid: int
    typmod: int
    not_null: bool
    default: str | None  # pg_get_expr of the default (None: none, or a generated column)
    generated: str | None  # the expression of a STORED generated column
    identity: str  # '' | 'a' (ALWAYS) | 'd' (BY DEFAULT)
    collation: str | None
    has_missing: bool  # added with a non-volatile default that rows not rewritten since read


@dataclass(frozen=True)
class IndexShape:
    name: str
    definition: str  # pg_get_indexdef: CREATE [UNIQUE] INDEX name ON schema.table USING ...


@dataclass(frozen=True)
class ConstraintShape:
    name: str
    type: str  # contype: c check, f foreign key, p primary key, u unique, x exclusion
    definition: str  # pg_get_constraintdef


@dataclass(frozen=True)
class PartitionShape:
    relid: int
    schema: str
    name: str
    leaf: bool
    constraint: str | None  # pg_get_partition_constraintdef: which rows are in it


@dataclass(frozen=True)
class TableShape:
    """A table (not a partition) as the catalog described it at one point of the WAL."""

    relid: int
    schema: str
    name: str
    kind: str  # 'r' table, 'p' partitioned
    identity: str  # relreplident
    columns: tuple[ColumnShape, ...]
    key: tuple[str, ...]  # primary key columns, in key order
    identity_columns: tuple[str, ...]
    indexes: tuple[IndexShape, ...]  # not backing a constraint
    constraints: tuple[ConstraintShape, ...]
    partitions: tuple[PartitionShape, ...] = ()
    persistence: str = "p"  # relpersistence: 'p' permanent, 'u' unlogged (never decoded)

    @property
    def qualified(self) -> tuple[str, str]:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> ColumnShape | None:
        return next((c for c in self.columns if c.name == name), None)

    def by_attnum(self) -> dict[int, ColumnShape]:
        return {c.attnum: c for c in self.columns}

    @property
    def publishable_changes(self) -> bool:
        """Whether its UPDATEs and DELETEs can be published (the source logs which row they touch)."""
        if self.identity == "f" or self.identity_columns:
            return True
        return self.identity == "d" and bool(self.key)


@dataclass(frozen=True)
class TableEvent:
    """One table touched by a command: ``before`` None for a table new to the registry (created,
    detached from a partitioned table), ``after`` None for one gone (dropped, attached)."""

    relid: int
    before: TableShape | None
    after: TableShape | None
    rewrite: int = 0  # REWRITE_* bits
    casts: dict[str, bool] = field(default_factory=dict)  # retyped column -> immutable conversion
    filled: dict[str, str | None] = field(default_factory=dict)  # added column -> what its rows read
    rows: bool | None = None  # for a table entering (new or renamed): whether it holds rows
    partition_rows: dict[int, bool] = field(default_factory=dict)  # new leaf partition -> holds rows
    attached_to: int | None = None  # relid of the partitioned table it became a partition of
    detached_from: int | None = None

    @property
    def created(self) -> bool:
        return self.before is None and self.after is not None

    @property
    def dropped(self) -> bool:
        return self.after is None and self.attached_to is None


@dataclass(frozen=True)
class PublicationEvent:
    publication: str
    relid: int
    schema: str
    name: str
    event: str  # 'added' | 'refused'
    error: str | None = None
    shape: TableShape | None = None  # the table now (ALTER PUBLICATION ... ADD TABLE by hand)
    rows: bool | None = None


@dataclass(frozen=True)
class DdlMessage:
    tag: str  # the command tag: ALTER TABLE, CREATE TABLE, DROP INDEX ...
    using: bool  # the query text has a USING clause (ALTER COLUMN TYPE ... USING expr)
    tables: tuple[TableEvent, ...]
    publications: tuple[PublicationEvent, ...]
    error: str | None  # the trigger failed: nothing else is known
    lsn: Lsn  # where the message is in the WAL


def is_ddl(message: Message) -> bool:
    return message.prefix == PREFIX


def parse(message: Message) -> DdlMessage:
    """The capture's message as values; DecodeError when it is not one this version reads."""
    try:
        body = json.loads(message.content)
        if body.get("v") != 1:
            raise DecodeError(
                f"DDL message at {message.lsn} is version {body.get('v')!r}; this replicator reads "
                "version 1: upgrade replicator, or install the DDL capture this replicator comes with"
            )
        return DdlMessage(
            tag=str(body.get("tag", "")),
            using=bool(body.get("using")),
            tables=tuple(_event(t) for t in body.get("tables") or ()),
            publications=tuple(_publication(p) for p in body.get("publications") or ()),
            error=body.get("error"),
            lsn=message.lsn,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"malformed DDL message at {message.lsn}: {e!r}") from None


def _event(raw: dict[str, Any]) -> TableEvent:
    return TableEvent(
        relid=int(raw["relid"]),
        before=shape(raw.get("before")),
        after=shape(raw.get("after")),
        rewrite=int(raw.get("rewrite") or 0),
        casts={str(k): bool(v) for k, v in (raw.get("casts") or {}).items()},
        filled={str(k): (None if v is None else str(v)) for k, v in (raw.get("filled") or {}).items()},
        rows=raw.get("rows"),
        partition_rows={int(k): bool(v) for k, v in (raw.get("partition_rows") or {}).items()},
        attached_to=_oid(raw.get("attached_to")),
        detached_from=_oid(raw.get("detached_from")),
    )


def shape(raw: dict[str, Any] | None) -> TableShape | None:
    """A table shape from its JSON (the registry's and the messages' form)."""
    if raw is None:
        return None
    return TableShape(
        relid=int(raw["relid"]),
        schema=str(raw["schema"]),
        name=str(raw["name"]),
        kind=str(raw.get("kind", "r")),
        identity=str(raw.get("identity", "d")),
        columns=tuple(
            ColumnShape(
                attnum=int(c["attnum"]),
                name=str(c["name"]),
                type_sql=str(c["type"]),
                type_oid=int(c["type_oid"]),
                typmod=int(c["typmod"]),
                not_null=bool(c.get("not_null")),
                default=c.get("default"),
                generated=c.get("generated"),
                identity=str(c.get("identity") or ""),
                collation=c.get("collation"),
                has_missing=bool(c.get("has_missing")),
            )
            for c in raw.get("columns") or ()
        ),
        key=tuple(str(k) for k in raw.get("key") or ()),
        identity_columns=tuple(str(k) for k in raw.get("identity_columns") or ()),
        indexes=tuple(IndexShape(str(i["name"]), str(i["definition"])) for i in raw.get("indexes") or ()),
        constraints=tuple(
            ConstraintShape(str(c["name"]), str(c["type"]), str(c["definition"]))
            for c in raw.get("constraints") or ()
        ),
        partitions=tuple(
            PartitionShape(
                int(p["relid"]), str(p["schema"]), str(p["name"]), bool(p.get("leaf")), p.get("constraint")
            )
            for p in raw.get("partitions") or ()
        ),
        persistence=str(raw.get("persistence", "p")),
    )


def _publication(raw: dict[str, Any]) -> PublicationEvent:
    return PublicationEvent(
        publication=str(raw["publication"]),
        relid=int(raw["relid"]),
        schema=str(raw["schema"]),
        name=str(raw["name"]),
        event=str(raw["event"]),
        error=raw.get("error"),
        shape=shape(raw.get("shape")),
        rows=raw.get("rows"),
    )


def _oid(value: Any) -> int | None:
    return None if value is None else int(value)
