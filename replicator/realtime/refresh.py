"""Rows the stream does not carry, read from the source as of a point of the stream.

A table rewrite (a volatile default, a ``USING`` conversion), a partition attached with its rows, a
table that enters replication holding rows: no row change tells the destination the values. They
are read from the source under the snapshot a *temporary* replication slot exports: its
consistent point ``point`` is exact, the snapshot holding every transaction that commits before
it and none after (PostgreSQL's own guarantee for a new slot, the one ``full`` mode relies on).
The stream applies everything committing before ``point`` first; then the copied rows replace
the destination's (in the transaction whose checkpoint passes ``point``); then the stream goes on
with what commits after. So the destination is exactly the source at ``point``, and at every
checkpoint after it.

The copy is made at once, while the snapshot is fresh, into a temp table of the destination
session (``schemasync.stage_refresh``), and merged when the stream gets to ``point``. Reading a
table under an older snapshot after a rewrite or TRUNCATE committed is not safe in PostgreSQL (the
table reads empty), so the copy checks afterwards that every relation read still has the file it
had in the snapshot; if not, ``RefreshRaced`` (transient): the stream resumes from its checkpoint
and the refresh is planned again with a new snapshot.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.config.connection import ConnectionConfig
from replicator.connect import connect
from replicator.destinations.base import Fill
from replicator.errors import SourceError
from replicator.lsn import Lsn
from replicator.relay import CopySink, RelayResult, relay_copy
from replicator.snapshot.workers import SNAPSHOT_SESSION, begin_in_snapshot, session_settings
from replicator.source.slots import SnapshotSlot

log = logging.getLogger(__name__)

APP = "replicator/refresh"
_counter = itertools.count()


class RefreshRaced(SourceError):
    """A relation copied for a refresh was rewritten or truncated after the snapshot: copy again."""

    transient = True


@dataclass
class RefreshSnapshot:
    """A temporary slot's exported snapshot, open until ``close()``; reads happen on connections
    that join it."""

    slot: SnapshotSlot
    point: Lsn
    readers: list[psycopg.Connection[Any]] = field(default_factory=list)

    @classmethod
    def take(cls, cfg: ConnectionConfig) -> RefreshSnapshot:
        name = f"replicator_refresh_{os.getpid()}_{next(_counter)}"
        slot = SnapshotSlot.create(cfg, name, "pgoutput", APP, temporary=True)
        log.info("refresh snapshot at %s (temporary slot %s)", slot.consistent_point, name)
        return cls(slot, slot.consistent_point)

    def reader(self, cfg: ConnectionConfig, relid: int) -> RelationReader:
        conn = connect(cfg, "source", APP, autocommit=True)
        self.readers.append(conn)
        session_settings(conn, SNAPSHOT_SESSION)
        begin_in_snapshot(conn, self.slot.snapshot_name)
        return RelationReader(conn, relid)

    def close(self) -> None:
        for conn in self.readers:
            conn.close()
        self.readers.clear()
        self.slot.close()


@dataclass
class RelationReader:
    """One source relation as of the snapshot: its columns, its rows (text COPY)."""

    conn: psycopg.Connection[Any]
    relid: int

    def columns(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """The relation's columns in the snapshot, and those NOT NULL; None when it did not exist then."""
        rows = self.conn.execute(
            """SELECT a.attname, a.attnotnull FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
            (self.relid,),
        ).fetchall()
        if not rows:
            return None
        return tuple(str(r[0]) for r in rows), tuple(str(r[0]) for r in rows if r[1])

    def fill(self, columns: tuple[str, ...]) -> Fill:
        files = self._files()
        name = self.conn.execute("SELECT %s::oid::regclass::text", (self.relid,)).fetchone()
        assert name is not None
        query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(str(name[0]))
        )
        copy_out = query.as_bytes(self.conn)

        def fill(sink: CopySink) -> RelayResult:
            try:
                result = relay_copy(self.conn, copy_out, sink)
            except psycopg.Error as e:
                raise RefreshRaced(
                    f"reading relation {self.relid} as of the refresh snapshot failed: {e}"
                ) from None
            self._check(files)
            return result

        return fill

    def _files(self) -> dict[int, int]:
        """Each relation's file as the snapshot sees it (the relation and its partitions)."""
        rows = self.conn.execute(
            """SELECT c.oid, c.relfilenode FROM pg_catalog.pg_class c
               WHERE c.oid = %s OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree(%s))""",
            (self.relid, self.relid),
        ).fetchall()
        return {int(oid): int(node) for oid, node in rows}

    def _check(self, files: dict[int, int]) -> None:
        for oid, node in files.items():
            if node == 0:
                continue  # a partitioned table has no file of its own
            row = self.conn.execute("SELECT pg_catalog.pg_relation_filenode(%s)", (oid,)).fetchone()
            if row is None or row[0] != node:
                raise RefreshRaced(
                    f"relation {oid} was rewritten or truncated after the refresh snapshot was taken: "
                    "copying it again from a new snapshot"
                )
