"""Helpers for tests that decode changes from a real server: slots that clean up, reading to a position."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import pytest

from replicator.config.connection import ConnectionConfig
from replicator.decoding.changes import Decoder, Event
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.decoding.wal2json import Wal2JsonDecoder
from replicator.lsn import Lsn
from replicator.source.describe import CatalogDescriber
from replicator.source.publication import PublishedTable, ensure_publication
from replicator.source.slots import create_slot, drop_slot
from replicator.source.sqlreader import SqlReader
from replicator.source.stream import ReplicationStream
from tests.conftest import Database

_slot_counter = itertools.count()


class Reader(Protocol):
    @property
    def position(self) -> Lsn: ...

    def read(self, max_events: int = ..., timeout: float = ...) -> list[Event]: ...


def source_config(db: Database, **extra: Any) -> ConnectionConfig:
    return ConnectionConfig.model_validate(db.config(**extra))


def flush_lsn(db: Database) -> Lsn:
    return Lsn(db.fetchone("SELECT pg_current_wal_flush_lsn()"))


def read_until(reader: Reader, target: Lsn, timeout: float = 60.0, batch: int = 10_000) -> list[Event]:
    """Everything the reader returns until its position passes ``target`` (a position already flushed)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while reader.position < target:
        events.extend(reader.read(batch, 0.5))
        if time.monotonic() > deadline:
            raise AssertionError(f"reader stuck at {reader.position}, waiting for {target}")
    return events


@dataclass
class Replication:
    """One test database prepared for decoding: a publication, and slots dropped at teardown."""

    db: Database
    cfg: ConnectionConfig
    publication: str = "pub"
    slots: list[str] = field(default_factory=list)
    _conns: list[psycopg.Connection[Any]] = field(default_factory=list)

    def publish(self, *tables: str) -> None:
        """Create the publication for ``tables`` ("schema.table" or "table" in public)."""
        with self.db.connect() as conn:
            ensure_publication(conn, self.publication, [_published(t) for t in tables])

    def slot(self, plugin: str) -> str:
        name = f"t{os.getpid()}_{next(_slot_counter)}_{plugin[:3]}"
        with self.db.connect() as conn:
            create_slot(conn, name, plugin)
        self.slots.append(name)
        return name

    def decoder(self, plugin: str, tables: Sequence[str] | None = None) -> Decoder:
        if plugin == "pgoutput":
            return PgOutputDecoder([self.publication])
        conn = self.db.connect()
        self._conns.append(conn)
        pairs = [(p.schema, p.table) for p in map(_published, tables)] if tables is not None else None
        return Wal2JsonDecoder(CatalogDescriber(conn), pairs)

    def stream(
        self, slot: str, plugin: str, tables: Sequence[str] | None = None, start: Lsn = Lsn(0), **kw: Any
    ) -> ReplicationStream:
        return ReplicationStream.open(self.cfg, slot, self.decoder(plugin, tables), start, **kw)

    def sql_reader(
        self, slot: str, plugin: str, tables: Sequence[str] | None = None, start: Lsn = Lsn(0), **kw: Any
    ) -> SqlReader:
        kw.setdefault("poll_interval_s", 0.1)
        return SqlReader.open(self.cfg, slot, self.decoder(plugin, tables), start, **kw)

    def events(
        self, slot: str, plugin: str, tables: Sequence[str] | None = None, reader: str = "stream"
    ) -> list[Event]:
        """All events in the slot up to now (nothing confirmed)."""
        target = flush_lsn(self.db)
        open_ = self.stream if reader == "stream" else self.sql_reader
        with open_(slot, plugin, tables) as r:
            return read_until(r, target)

    def confirmed_flush(self, slot: str) -> Lsn:
        return Lsn(
            self.db.fetchone(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
        )

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        with self.db.connect() as conn:
            for name in self.slots:
                # A walsender may still be exiting after its client closed: wait for the slot to be free.
                for _ in range(100):
                    active = conn.execute(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)
                    ).fetchone()
                    if not active or not active[0]:
                        break
                    time.sleep(0.05)
                drop_slot(conn, name)


def _published(name: str) -> PublishedTable:
    schema, _, table = name.rpartition(".")
    return PublishedTable(schema or "public", table)


@pytest.fixture
def replication(source_db: Database) -> Iterator[Replication]:
    rep = Replication(source_db, source_config(source_db))
    try:
        yield rep
    finally:
        rep.close()
