"""The SQL log reader (``log-reader-type: SQL``): polls the slot with ``pg_logical_slot_peek_*``.

For servers or networks where the streaming protocol is not an option. It *peeks* (reads without
consuming) and moves the slot with ``pg_replication_slot_advance`` only to what the caller
``confirm()``ed, so it is exactly-once like the stream, with the same events and the same API.

How a poll works: a peek always starts at the slot's confirmed position, so it returns again the
transactions we delivered but the caller has not confirmed yet. We skip those (a transaction
whose commit is before the end of the last one delivered), and we ask for enough rows to get
past them (``upto_nchanges`` counts them too). A peek returns whole transactions; its rows are
streamed, so a large transaction does not have to fit in memory here. Confirmed positions are
pushed to the server just before the next peek (and on close): the slot lags the destination by
at most one poll.
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql

from replicator.config.connection import ConnectionConfig
from replicator.connect import connect, describe
from replicator.decoding.changes import Begin, Commit, Decoder, Event
from replicator.errors import SourceError
from replicator.lsn import Lsn
from replicator.source.session import apply_output_settings
from replicator.source.slots import get_slot
from replicator.source.stream import ReplicationLost, SlotInUse, drain

log = logging.getLogger(__name__)

# Rows per round trip when streaming a peek; chunked results need libpq 17+ (else one by one).
_STREAM_CHUNK = 1000 if pq.version() >= 170000 else 1


class SqlReader:
    """Change events from a slot by polling, on a regular (autocommit) connection. Not thread-safe."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        slot: str,
        decoder: Decoder,
        start_lsn: Lsn = Lsn(0),
        fetch_rows: int = 10_000,
        poll_interval_s: float = 1.0,
        where: str = "the source",
    ):
        self.conn = conn
        self.slot = slot
        self.decoder = decoder
        self.fetch_rows = fetch_rows
        self.poll_interval_s = poll_interval_s
        self._where = where
        self._binary = decoder.plugin == "pgoutput"
        self._rows: Iterator[Any] | None = None  # psycopg's stream(): a generator
        self._peek_rows = 0  # rows read from the current peek
        self._peek_limit = 0  # its upto_nchanges
        self._peek_upto = Lsn(0)  # its upto_lsn
        self._delivered_new = False  # whether the current peek delivered anything not seen before
        self._extra = 0  # more rows to ask for when a peek was all rows seen before
        self._skipping = False  # inside a transaction delivered by an earlier peek
        self._tx_rows = 0  # rows since the last transaction boundary
        self._unconfirmed: deque[tuple[Lsn, int]] = deque()  # (boundary, rows up to it), delivered
        self._delivered = Lsn(start_lsn)  # end of the last transaction delivered
        self._boundary = Lsn(start_lsn)  # the last transaction boundary counted in _unconfirmed
        self._position = Lsn(start_lsn)
        self._flushed = Lsn(0)
        self._last_poll = 0.0
        apply_output_settings(conn)
        info = get_slot(conn, slot)
        if info is None:
            raise SourceError(f"replication slot {slot!r} does not exist on {where}")
        self._server_confirmed = info.confirmed_flush_lsn or Lsn(0)
        decoder.reset()
        if start_lsn > self._server_confirmed:
            self.confirm(Lsn(start_lsn))  # the caller has all that: no need to decode it again
            self._advance()

    @classmethod
    def open(
        cls,
        cfg: ConnectionConfig,
        slot: str,
        decoder: Decoder,
        start_lsn: Lsn = Lsn(0),
        fetch_rows: int = 10_000,
        poll_interval_s: float = 1.0,
        application_name: str = "replicator",
    ) -> SqlReader:
        conn = connect(cfg, "source", application_name, autocommit=True)
        try:
            return cls(
                conn, slot, decoder, start_lsn, fetch_rows, poll_interval_s, f"the source {describe(cfg)}"
            )
        except BaseException:
            conn.close()
            raise

    @property
    def position(self) -> Lsn:
        """Every transaction committing before this LSN has been returned by ``read()``."""
        return self._position

    @property
    def received(self) -> Lsn:
        """The source's WAL end as last heard (how far there is to read)."""
        return max(self._peek_upto, self._position)

    @property
    def confirmed(self) -> Lsn:
        return self._flushed

    def read(
        self,
        max_events: int = 10_000,
        timeout: float = 1.0,
        until: Lsn | None = None,
        wake: int | None = None,
    ) -> list[Event]:
        """Events from the slot: returns at ``max_events``, or once the current peek is read and
        the next one is not due, or after ``timeout`` seconds with nothing, or as soon as
        ``position`` reaches ``until``, or when ``wake`` (a file descriptor) becomes readable
        while waiting (its bytes are read). Polls the server at most every ``poll_interval_s``
        when idle."""
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        decoder = self.decoder
        while len(out) < max_events:
            if until is not None and self._position >= until:
                break
            if self._rows is None:
                wait = self._last_poll + self.poll_interval_s - time.monotonic()
                if wait > 0:
                    remaining = deadline - time.monotonic()
                    if out or remaining <= 0:
                        break
                    if wake is None:
                        time.sleep(min(wait, remaining))
                    elif select.select([wake], [], [], min(wait, remaining))[0]:
                        drain(wake)
                        break
                    continue
                self._poll()
            assert self._rows is not None
            try:
                row = next(self._rows, None)
            except psycopg.Error as e:
                self._rows = None
                raise self._failed(e) from None
            if row is None:
                self._peek_done()
                continue
            lsn, data = row
            self._peek_rows += 1
            self._tx_rows += 1
            for event in decoder.decode(data, lsn):
                if type(event) is Begin and event.final_lsn < self._delivered:
                    self._skipping = True  # delivered by an earlier peek, not confirmed yet
                if not self._skipping:
                    out.append(event)
                    self._delivered_new = True
                    if type(event) is Commit:
                        self._delivered = event.end_lsn
                elif type(event) is Commit:
                    self._skipping = False
            if not decoder.in_transaction:
                # A transaction boundary: a commit, or an empty transaction the decoder skipped.
                if lsn > self._boundary:  # not one an earlier peek already counted
                    self._boundary = Lsn(lsn)
                    self._unconfirmed.append((self._boundary, self._tx_rows))
                    if lsn > self._position:
                        self._position = Lsn(lsn)
                self._tx_rows = 0
        return out

    def confirm(self, lsn: Lsn) -> None:
        """The destination has committed everything before ``lsn``: the slot moves there at the next poll."""
        if lsn > self._flushed:
            self._flushed = Lsn(lsn)

    def close(self) -> None:
        if self.conn.closed:
            return
        try:
            if self._rows is not None:
                rows, self._rows = self._rows, None
                # Abandon the peek (psycopg cancels it); its rows are read again next time.
                close = getattr(rows, "close", None)  # a generator's; typed as a plain iterator
                if close is not None:
                    close()
            self._advance()
        except psycopg.Error as e:
            log.warning("could not move slot %s to %s on close: %s", self.slot, self._flushed, e)
        finally:
            self.conn.close()

    def __enter__(self) -> SqlReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Polling.

    def _poll(self) -> None:
        self._advance()
        self._last_poll = time.monotonic()
        try:
            row = self.conn.execute("SELECT pg_catalog.pg_current_wal_flush_lsn()").fetchone()
        except psycopg.Error as e:
            raise self._failed(e) from None
        assert row is not None
        self._peek_upto = row[0]
        unconfirmed = sum(n for _, n in self._unconfirmed)
        self._peek_limit = unconfirmed + max(self.fetch_rows, 1) + self._extra
        function = "pg_logical_slot_peek_binary_changes" if self._binary else "pg_logical_slot_peek_changes"
        options = [x for kv in self.decoder.options().items() for x in kv]
        query = sql.SQL("SELECT lsn, data FROM pg_catalog.{}(%s, %s, %s{})").format(
            sql.Identifier(function), sql.SQL("").join(sql.SQL(", %s") for _ in options)
        )
        self._rows = self.conn.cursor(binary=True).stream(
            query, [self.slot, self._peek_upto, self._peek_limit, *options], size=_STREAM_CHUNK
        )
        self._peek_rows = 0
        self._delivered_new = False
        self._skipping = False

    def _peek_done(self) -> None:
        self._rows = None
        if self._peek_rows < self._peek_limit:
            # The peek was not cut short: everything committed before its end is delivered.
            self._extra = 0
            if not self.decoder.in_transaction and self._peek_upto > self._position:
                self._position = self._peek_upto
            return
        # Cut short at upto_nchanges: there is more, so poll again at once.
        self._last_poll = 0.0
        if not self._delivered_new:
            # Only transactions delivered before (the caller is confirming slowly): ask for more.
            self._extra = max(self._extra * 2, self.fetch_rows)

    def _advance(self) -> None:
        target = self._flushed
        if target <= self._server_confirmed:
            return
        try:
            self.conn.execute("SELECT pg_catalog.pg_replication_slot_advance(%s, %s)", (self.slot, target))
        except psycopg.Error as e:
            raise self._failed(e) from None
        self._server_confirmed = target
        while self._unconfirmed and self._unconfirmed[0][0] <= target:
            self._unconfirmed.popleft()

    def _failed(self, exc: psycopg.Error) -> SourceError:
        text = exc.diag.message_primary or str(exc)
        if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.ObjectInUse):
            return ReplicationLost(
                f"connection to {self._where} (slot {self.slot!r}) lost: {text}; "
                "reconnect and resume from the last checkpoint"
            )
        message = f"reading slot {self.slot!r} on {self._where} failed: {text}"
        if isinstance(exc, psycopg.errors.ObjectInUse):
            return SlotInUse(message)
        return SourceError(message)
