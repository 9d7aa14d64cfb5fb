"""The PostgreSQL destination.

- ``session``: the one place connections are opened and session settings set; ``PostgresSession``
  satisfies ``DestinationSession`` by calling the modules below;
- ``ddl`` (schemas, user types, tables, keys; ``types`` turns source types into DDL);
- ``load`` (the relay's COPY sink, appended or merged by key; key-range digests; deleting
  absent keys), ``stage`` (the one stage-and-merge), ``deletes`` (hard or soft);
- ``apply`` (folded realtime batches; ``copytext`` formats them on the reading thread);
- ``state`` (the state store: the only code that touches ``_replicator``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from replicator.config.connection import ConnectionConfig
from replicator.connect import describe
from replicator.destinations.base import SessionRole
from replicator.destinations.postgres.deletes import SOFT_DELETE_COLUMN, DeletePolicy
from replicator.destinations.postgres.session import PostgresSession, open_connection

__all__ = ["SOFT_DELETE_COLUMN", "PostgresDestination", "PostgresSession"]


class PostgresDestination:
    """A ``Destination``: a PostgreSQL database, as its connection config describes it."""

    def __init__(self, cfg: ConnectionConfig):
        self.cfg = cfg
        self.deletes = DeletePolicy(soft=cfg.deletes == "soft")

    @property
    def description(self) -> str:
        return describe(self.cfg)

    def open_session(
        self, application_name: str, role: SessionRole = "control", settings: Mapping[str, str] | None = None
    ) -> PostgresSession:
        def connect() -> psycopg.Connection[Any]:
            return open_connection(self.cfg, application_name, role, settings)

        keep = self.cfg.schema_changes.dropped_columns == "keep"
        return PostgresSession(connect(), self.deletes, reconnect=connect, keep_dropped_columns=keep)
