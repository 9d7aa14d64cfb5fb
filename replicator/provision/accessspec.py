"""What the replication user must be able to do in one database: the resource's declared inputs, as values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql

ReplicationRight = Literal["rds_replication", "attribute"]
QualifiedName = tuple[str, str]  # (schema, table)

ALL_TABLES = "*"


@dataclass(frozen=True)
class AccessSpec:
    """What the replication user must be able to do in one database."""

    user: str
    schemas: tuple[str, ...] = ("public",)
    # rds_replication on RDS/Aurora; the REPLICATION attribute on self-hosted PostgreSQL.
    replication_right: ReplicationRight = "rds_replication"
    # Roles whose future tables the user may read (ALTER DEFAULT PRIVILEGES FOR ROLE ...);
    # empty means the admin role that runs this.
    table_owners: tuple[str, ...] = ()
    heartbeat_table: QualifiedName | None = None
    publication: str | None = None
    # Managed publication members: (schema, table) pairs, or ALL_TABLES for FOR ALL TABLES
    # (superuser only, so not on RDS). None leaves the publication to someone else.
    publication_tables: tuple[QualifiedName, ...] | Literal["*"] | None = None
    # The DDL capture (event triggers: schema changes into the WAL, see replicator.source.ddlcapture),
    # installed by this admin session, which also becomes a member of the replication user (the owner
    # of the publications the replicator creates) so the trigger may add new tables to them.
    ddl_capture: bool = False

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> AccessSpec:
        """From the dynamic provider's property bag (plain JSON values)."""
        hb = props.get("heartbeat_table")
        tables = props.get("publication_tables")
        if tables is not None and tables != ALL_TABLES:
            tables = tuple(split_name(t) for t in tables)
        return cls(
            user=props["user"],
            schemas=tuple(props.get("schemas") or ("public",)),
            replication_right=props.get("replication_right", "rds_replication"),
            table_owners=tuple(props.get("table_owners") or ()),
            heartbeat_table=split_name(hb) if hb else None,
            publication=props.get("publication") or None,
            publication_tables=tables,
            ddl_capture=bool(props.get("ddl_capture")),
        )


def split_name(name: str) -> QualifiedName:
    """``"sales.orders"`` -> ``("sales", "orders")``; a bare name is in ``public``."""
    schema, dot, table = name.partition(".")
    return (schema, table) if dot else ("public", schema)


def table_identifier(name: QualifiedName) -> sql.Identifier:
    return sql.Identifier(*name)
