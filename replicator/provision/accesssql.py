"""The statements that give the replication user its rights and shape its publications.

Shared by provisioning (``pgaccess``) and ``replicator check``, whose fixes must be exactly what
the program would have run.
"""

from __future__ import annotations

from typing import Literal

from psycopg import sql

from replicator.provision.accessspec import QualifiedName, ReplicationRight, table_identifier
from replicator.source.publication import publication_options


def grant_replication(user: str, right: ReplicationRight) -> sql.Composed:
    if right == "rds_replication":
        return sql.SQL("GRANT rds_replication TO {}").format(sql.Identifier(user))
    return sql.SQL("ALTER ROLE {} WITH REPLICATION").format(sql.Identifier(user))


def grant_schema_usage(user: str, schema: str) -> sql.Composed:
    return sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(user))


def grant_select_all(user: str, schema: str) -> sql.Composed:
    return sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(user)
    )


def grant_select(user: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("GRANT SELECT ON {} TO {}").format(table_identifier(table), sql.Identifier(user))


def grant_select_all_sequences(user: str, schema: str) -> sql.Composed:
    """Sequence values (``pg_sequences.last_value`` reads NULL without SELECT or USAGE on the sequence)."""
    return sql.SQL("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
        sql.Identifier(schema), sql.Identifier(user)
    )


def default_select(
    user: str,
    schema: str,
    owner: str | None,
    revoke: bool = False,
    objects: Literal["TABLES", "SEQUENCES"] = "TABLES",
) -> sql.Composed:
    """ALTER DEFAULT PRIVILEGES: tables (or sequences) created later in ``schema`` are readable too."""
    kind = sql.SQL(objects)
    action = (
        sql.SQL("REVOKE SELECT ON {} FROM {}") if revoke else sql.SQL("GRANT SELECT ON {} TO {}")
    ).format(kind, sql.Identifier(user))
    for_role = sql.SQL("FOR ROLE {} ").format(sql.Identifier(owner)) if owner else sql.SQL("")
    return sql.SQL("ALTER DEFAULT PRIVILEGES {}IN SCHEMA {} {}").format(
        for_role, sql.Identifier(schema), action
    )


def grant_connect(user: str, database: str) -> sql.Composed:
    return sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(database), sql.Identifier(user)
    )


def create_publication(
    name: str, tables: tuple[QualifiedName, ...] | Literal["*"], server_version: int = 150000
) -> sql.Composed:
    """CREATE PUBLICATION with the options of the replicator's own (``publication_options``)."""
    options = sql.SQL(" WITH ({})").format(publication_options(server_version))
    if isinstance(tables, str):  # ALL_TABLES
        return sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES{}").format(sql.Identifier(name), options)
    if not tables:
        return sql.SQL("CREATE PUBLICATION {}{}").format(sql.Identifier(name), options)
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
        sql.Identifier(name), sql.SQL(", ").join(table_identifier(t) for t in tables), options
    )


def publish_all_operations(name: str, server_version: int = 150000, publish: str = "") -> sql.Composed:
    """What the publication publishes (default: every operation), and via the partition root (13+)."""
    options = publication_options(server_version, publish) if publish else publication_options(server_version)
    return sql.SQL("ALTER PUBLICATION {} SET ({})").format(sql.Identifier(name), options)


def add_to_publication(name: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), table_identifier(table))


def drop_from_publication(name: str, table: QualifiedName) -> sql.Composed:
    return sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), table_identifier(table))


def reassign_and_drop_owned(user: str) -> sql.Composed:
    """The statements that free a role for DROP ROLE in one database (shared with messages)."""
    return sql.SQL("REASSIGN OWNED BY {u} TO CURRENT_USER; DROP OWNED BY {u}").format(u=sql.Identifier(user))
