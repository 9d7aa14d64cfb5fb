"""The heartbeat table: a tiny write every ``interval-ms`` so an idle source still moves our slot.

A slot only advances when the stream hands the caller a position to confirm. When the replicated
tables are idle but the server writes WAL elsewhere (other databases, RDS's own housekeeping),
nothing arrives and the slot pins ever more WAL. Writing one row of a table that is in the
publication produces a small transaction through the slot; applying and confirming it lets the
server release WAL. The table has the shape Arcion uses::

    replicate_io_cdc_heartbeat("timestamp" INT8 PRIMARY KEY)   -- one row: milliseconds since 1970

``HeartbeatWriter.tick()`` is called by the realtime loop (every ``read()`` returns within its
timeout, so ticks come often enough) rather than running in a thread of its own: there is then
nothing to start, stop or synchronise, a failure surfaces in the loop that can act on it, and no
heartbeat is written while the pipeline is stalled (it would only pin WAL for nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from replicator.config.extractor import Heartbeat
from replicator.errors import SourceError
from replicator.source.publication import PublishedTable

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "public"

T = TypeVar("T")


def heartbeat_table(hb: Heartbeat) -> PublishedTable:
    """The heartbeat table as a table to publish (add it to the publication / wal2json tables)."""
    return PublishedTable(hb.schema_name or DEFAULT_SCHEMA, hb.table_name)


def without_heartbeat(tables: list[T], hb: Heartbeat, key: Callable[[T], tuple[str, str]]) -> list[T]:
    """``tables`` without the heartbeat table: replicator's own, never compared or migrated."""
    table = heartbeat_table(hb)
    return [t for t in tables if key(t) != (table.schema, table.table)]


def ensure_heartbeat_table(conn: psycopg.Connection[Any], hb: Heartbeat) -> PublishedTable:
    """Create the heartbeat table if it does not exist; check its column if it does."""
    _check_catalog(conn, hb)
    table = heartbeat_table(hb)
    ident = table.identifier()
    column = sql.Identifier(hb.column_name)
    try:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({} INT8 PRIMARY KEY)").format(ident, column))
    except psycopg.Error as e:
        raise SourceError(
            f"cannot create the heartbeat table {table.qualified_name}: {e.diag.message_primary or e}; "
            f"create it as the tables' owner: "
            + sql.SQL("CREATE TABLE {} ({} INT8 PRIMARY KEY);").format(ident, column).as_string(conn)
            + " (or set realtime.heartbeat.enable: false)"
        ) from None
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass AND attname = %s AND NOT "
        "attisdropped",
        (ident.as_string(conn), hb.column_name),
    ).fetchone()
    if row is None:
        raise SourceError(
            f"the heartbeat table {table.qualified_name} exists without a column {hb.column_name!r}: "
            "fix realtime.heartbeat.column-name in the extractor config, or drop the table"
        )
    return table


class HeartbeatWriter:
    """Writes the heartbeat row when ``tick()`` finds ``interval-ms`` has passed since the last write.

    ``conn`` is an autocommit connection of its own (not the replication connection).
    """

    def __init__(
        self, conn: psycopg.Connection[Any], hb: Heartbeat, clock: Callable[[], float] = time.monotonic
    ):
        self.conn = conn
        self.interval_s = hb.interval_ms / 1000
        self.clock = clock
        self.last_write: float | None = None
        table = heartbeat_table(hb).identifier()
        column = sql.Identifier(hb.column_name)
        # One row, whose key is the time: update it, or insert it the first time. Writers of
        # other slots (threads of this process, or other jobs) share the table: without the
        # lock, two first writes insert two rows (or collide on the key), and the next update
        # then gives both rows the same key.
        self._lock = sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=table)
        self._statement = sql.SQL(
            "WITH moved AS (UPDATE {t} SET {c} = %(now)s RETURNING 1) "
            "INSERT INTO {t} ({c}) SELECT %(now)s WHERE NOT EXISTS (SELECT FROM moved) "
            # Two writers racing on the very first row must not fail.
            "ON CONFLICT DO NOTHING"
        ).format(t=table, c=column)

    def tick(self) -> bool:
        """Write the heartbeat if it is due; whether it wrote."""
        now = self.clock()
        if self.last_write is not None and now - self.last_write < self.interval_s:
            return False
        self.beat()
        self.last_write = now
        return True

    def beat(self) -> int:
        """Write the heartbeat now; returns the value written (milliseconds since 1970)."""
        millis = int(time.time() * 1000)
        with self.conn.transaction():
            # Explicitly read-write: `switchover --read-only-source` makes the database read-only
            # by default for new sessions, and a reconnected heartbeat must still beat.
            self.conn.execute("SET TRANSACTION READ WRITE")
            self.conn.execute(self._lock)
            self.conn.execute(self._statement, {"now": millis})
        return millis


def _check_catalog(conn: psycopg.Connection[Any], hb: Heartbeat) -> None:
    # In Arcion configs `catalog` is the database; ours is the one the connection config names.
    if hb.catalog is not None and hb.catalog != conn.info.dbname:
        raise SourceError(
            f"realtime.heartbeat.catalog is {hb.catalog!r} but the source database is {conn.info.dbname!r}: "
            "the heartbeat must be written in the database the slot decodes (remove `catalog` or make it "
            "match)"
        )
