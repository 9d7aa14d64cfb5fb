"""The logical replication stream (``log-reader-type: STREAM``), over psycopg's libpq layer.

psycopg 3 has no replication API, but its ``pq`` wrapper has all we need: a ``replication=database``
connection, ``START_REPLICATION`` sent with ``send_query``, and the COPY BOTH sub-protocol read
with non-blocking ``get_copy_data`` while we wait on the socket with ``select`` (which releases
the GIL). Protocol: https://www.postgresql.org/docs/current/protocol-replication.html

Exactly-once is the caller's to keep, and this class never gets in its way: the flush position
reported to the server (which lets it drop WAL and decides where a restart begins) is only ever
what the caller passed to ``confirm()``: what the destination has committed.

Usage::

    with ReplicationStream.open(cfg, slot, PgOutputDecoder(["pub"]), start_lsn=checkpoint) as stream:
        while running:
            events = stream.read(max_events=10_000, timeout=1.0)   # [] when idle
            ...apply events; at a transaction boundary, commit them with checkpoint C...
            stream.confirm(C)
"""

from __future__ import annotations

import logging
import os
import selectors
import struct
import time
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.pq.misc import error_message

from replicator.config.connection import ConnectionConfig
from replicator.connect import connect, describe
from replicator.decoding.changes import Decoder, Event
from replicator.decoding.pgoutput import (
    PUMP_COUNT,
    PUMP_END,
    PUMP_FULL,
    PUMP_MESSAGE,
    PUMP_NO_DATA,
    PUMP_UNTIL,
    Pump,
)
from replicator.errors import SourceError
from replicator.libpq import pgconn_ptr
from replicator.lsn import Lsn
from replicator.source.session import apply_output_settings

log = logging.getLogger(__name__)

_xlogdata = struct.Struct(">QQq").unpack_from  # 'w': WAL start, WAL end, server clock
_keepalive = struct.Struct(">QqB").unpack_from  # 'k': WAL end, server clock, reply requested
_status = struct.Struct(">cQQQqB").pack  # 'r': written, flushed, applied, clock, reply requested
_W, _K = ord("w"), ord("k")
_PG_EPOCH_UNIX = 946_684_800  # 2000-01-01 in Unix time
_CHECK_EVERY = 512  # messages between clock checks while data keeps flowing
_NO_LSN = (1 << 64) - 1  # no LSN is past it: read() without ``until`` (fits C's uint64)


class ReplicationLost(SourceError):
    """The replication connection broke (walsender terminated, server restart, network).

    Transient: reconnect and resume from the destination's checkpoint; nothing is lost because
    the source only ever heard of what the destination committed.
    """

    transient = True


class SlotInUse(SourceError):
    """Another connection streams the slot: usually our previous walsender, still exiting.

    Transient: retry after a moment (if another replicator runs on this slot, it keeps failing).
    """

    transient = True


# SQLSTATEs that end a stream and may go away by themselves: connection exceptions (08),
# operator intervention (57: terminate, shutdown, crash), insufficient resources (53).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "57", "53")
_OBJECT_IN_USE = "55006"


class ReplicationStream:
    """A started logical replication stream on its own connection. Not thread-safe."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        slot: str,
        decoder: Decoder,
        start_lsn: Lsn = Lsn(0),
        status_interval_s: float = 10.0,
        where: str = "the source",
    ):
        """Start streaming ``slot`` on ``conn`` (a ``replication=database`` connection)."""
        self.conn = conn
        self.slot = slot
        self.decoder = decoder
        self.status_interval_s = status_interval_s
        self._where = where
        self._pgconn = conn.pgconn
        # Plain ints on the hot path; the properties hand out Lsn values.
        self._received = int(start_lsn)  # highest WAL position the server told us about
        self._position = int(start_lsn)  # everything committing before it has been returned
        self._flushed = Lsn(0)  # what the caller confirmed; 0 = nothing yet (the server ignores 0)
        self._last_status = 0.0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._pgconn.socket, selectors.EVENT_READ)
        self._wake_fds: set[int] = set()  # registered in _selector by read(wake=...)
        # pgoutput can read runs of row messages in C, straight from libpq (see _pgoutput.c).
        native_pump = getattr(decoder, "native_pump", None)
        self._pump: Pump | None = native_pump() if native_pump is not None else None
        ptr = pgconn_ptr(self._pgconn)
        assert ptr is not None  # an open connection
        self._conn_ptr = ptr
        try:
            self._start(start_lsn)
        except BaseException:
            self._selector.close()
            raise

    @classmethod
    def open(
        cls,
        cfg: ConnectionConfig,
        slot: str,
        decoder: Decoder,
        start_lsn: Lsn = Lsn(0),
        application_name: str = "replicator",
        status_interval_s: float = 10.0,
    ) -> ReplicationStream:
        """Connect (with the config's retries) and start streaming ``slot`` from ``start_lsn``.

        The server starts at the slot's ``confirmed_flush_lsn`` if that is later than ``start_lsn``.
        """
        conn = connect(cfg, "source", application_name, autocommit=True, replication=True)
        try:
            return cls(conn, slot, decoder, start_lsn, status_interval_s, where=f"the source {describe(cfg)}")
        except BaseException:
            conn.close()
            raise

    # The caller's API.

    @property
    def position(self) -> Lsn:
        """Every transaction committing before this LSN has been returned by ``read()``.

        Once everything returned so far is committed at the destination (and the last event
        returned was not inside a transaction), confirming ``position`` is safe; on an idle source
        it moves with the server's keepalives, so the slot keeps up without any change to apply.
        """
        return Lsn(self._position)

    @property
    def received(self) -> Lsn:
        """The source's WAL end as last heard (how far there is to read)."""
        return Lsn(self._received)

    @property
    def confirmed(self) -> Lsn:
        """The last position passed to ``confirm()``."""
        return self._flushed

    def read(
        self,
        max_events: int = 10_000,
        timeout: float = 1.0,
        until: Lsn | None = None,
        wake: int | None = None,
    ) -> list[Event]:
        """Events decoded from the stream, as soon as there are some and nothing more is ready.

        Returns at ``max_events``; or once at least one event was read and neither libpq nor the
        socket holds another message (what arrives later goes in the next read: a caller that
        commits after each read commits as soon as the stream has nothing more, never later);
        or when ``position`` reaches ``until`` (the end of a catch-up). ``timeout`` bounds the
        wait while nothing has arrived (then [] is returned), and a read while data keeps
        flowing. ``wake``: a file descriptor that ends the wait as soon as it is readable (its
        bytes are read here), e.g. another thread saying it wants attention. Keepalives are
        answered while reading."""
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        stop_at = _NO_LSN if until is None else int(until)
        if wake is not None and wake not in self._wake_fds:
            self._selector.register(wake, selectors.EVENT_READ)
            self._wake_fds.add(wake)
        pgconn = self._pgconn
        decoder = self.decoder
        decode = decoder.decode
        extend = out.extend
        countdown = _CHECK_EVERY
        pump, conn_ptr = self._pump, self._conn_ptr
        # Whether the socket was read since the last message was taken: nothing in libpq's
        # buffer then means nothing is ready at all.
        socket_read = False
        buf: bytes | memoryview
        while True:
            if pump is not None:
                # Runs of Begin, row and Commit messages are read and decoded in C; anything else
                # comes back here.
                outcome, taken, received, ended, message = pump(conn_ptr, out, max_events, countdown, stop_at)
                if received > self._received:
                    self._received = received
                if ended > self._position:
                    self._position = ended
                if taken:
                    socket_read = False
                countdown -= taken
                if outcome == PUMP_UNTIL:
                    break
                if outcome == PUMP_MESSAGE:
                    assert message is not None
                    nbytes, buf = len(message), message
                    countdown += 1  # counted again below
                elif outcome == PUMP_NO_DATA:
                    nbytes = 0
                elif outcome == PUMP_FULL:
                    break
                elif outcome == PUMP_COUNT:
                    countdown = _CHECK_EVERY
                    self._status_if_due()
                    if time.monotonic() >= deadline:
                        break
                    continue
                elif outcome == PUMP_END:
                    nbytes = -1
                else:  # PUMP_FAILED: as psycopg's get_copy_data() would raise
                    raise self._lost(error_message(pgconn))
            else:
                try:
                    nbytes, buf = pgconn.get_copy_data(1)  # buf: a memoryview, used like bytes
                except psycopg.OperationalError as e:
                    raise self._lost(str(e)) from None
            if nbytes > 0:
                socket_read = False
                kind = buf[0]
                if kind == _W:
                    start, end, _clock = _xlogdata(buf, 1)
                    events = decode(bytes(buf[25:]), start)
                    if events:
                        extend(events)
                    if end > self._received:
                        self._received = end
                    if start > self._position and not decoder.in_transaction:
                        # A commit (or a skipped empty transaction) ends here.
                        self._position = start
                        if start >= stop_at:
                            break
                    if len(out) >= max_events:
                        break
                elif kind == _K:
                    end, _clock, reply = _keepalive(buf, 1)
                    if end > self._received:
                        self._received = end
                    if end > self._position and not decoder.in_transaction:
                        self._position = end
                    if reply:
                        self._send_status()
                    if self._position >= stop_at:
                        break
                countdown -= 1
                if countdown == 0:
                    countdown = _CHECK_EVERY
                    self._status_if_due()
                    if time.monotonic() >= deadline:
                        break
                continue
            if nbytes == 0:  # nothing buffered in libpq
                if self._position >= stop_at:
                    break
                if out and not socket_read:
                    # Take what the socket already holds (never waits); if that was nothing,
                    # nothing more is ready: return what we have.
                    self._consume()
                    socket_read = True
                    continue
                if out:
                    break
                self._status_if_due()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, max(0.0, self._last_status + self.status_interval_s - time.monotonic()))
                ready = self._selector.select(wait)
                if wake is not None:
                    if self._woken(ready, wake):
                        break
                if ready:
                    self._consume()
                    socket_read = True
                continue
            raise self._ended()
        return out

    def _consume(self) -> None:
        try:
            self._pgconn.consume_input()
        except psycopg.OperationalError as e:
            raise self._lost(str(e)) from None

    @staticmethod
    def _woken(ready: list[tuple[selectors.SelectorKey, int]], wake: int) -> bool:
        """Whether ``wake`` is among the ready descriptors (its bytes are then read)."""
        if any(key.fd == wake for key, _ in ready):
            drain(wake)
            return True
        return False

    def confirm(self, lsn: Lsn) -> None:
        """The destination has committed everything before ``lsn``: tell the server (now)."""
        if lsn > self._flushed:
            self._flushed = Lsn(lsn)
            self._send_status()

    def close(self) -> None:
        """Report the last confirmed position once more and disconnect."""
        if self.conn.closed:
            return
        try:
            if self._pgconn.status == pq.ConnStatus.OK:
                self._send_status()
        except (psycopg.Error, ReplicationLost):
            pass  # closing anyway; the server keeps the last position it heard
        finally:
            self._selector.close()
            self.conn.close()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Protocol.

    def _start(self, start_lsn: Lsn) -> None:
        self.decoder.reset()  # a new session resends Relation messages
        apply_output_settings(self.conn)
        options = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(_repl_literal(v)))
            for k, v in self.decoder.options().items()
        )
        command = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self.slot), sql.SQL(str(Lsn(start_lsn))), options
        )
        pgconn = self._pgconn
        pgconn.send_query(command.as_bytes(self.conn))
        self._flush_output()
        while True:
            while pgconn.is_busy():
                self._selector.select(self.status_interval_s)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                raise self._lost("the server did not start replication")
            if result.status == pq.ExecStatus.COPY_BOTH:
                break
            if result.status == pq.ExecStatus.FATAL_ERROR:
                message = _first_line(result.error_message)
                text = f"cannot stream slot {self.slot!r} from {self._where}: {message}"
                if _sqlstate(result) == _OBJECT_IN_USE:
                    raise SlotInUse(text)
                raise SourceError(text)
        self._last_status = time.monotonic()
        log.info("streaming slot %s (%s) from %s", self.slot, self.decoder.plugin, Lsn(start_lsn))

    def _status_if_due(self) -> None:
        if time.monotonic() - self._last_status >= self.status_interval_s:
            self._send_status()

    def _send_status(self) -> None:
        flushed = self._flushed
        written = max(self._received, flushed)
        clock = int((time.time() - _PG_EPOCH_UNIX) * 1_000_000)
        try:
            self._pgconn.put_copy_data(_status(b"r", written, flushed, flushed, clock, 0))
            self._flush_output()
        except psycopg.OperationalError as e:
            raise self._lost(str(e)) from None
        self._last_status = time.monotonic()

    def _flush_output(self) -> None:
        # The connection is non-blocking: flush() returns 1 while data is still queued.
        if not self._pgconn.flush():
            return
        with selectors.DefaultSelector() as writable:
            writable.register(self._pgconn.socket, selectors.EVENT_WRITE)
            while self._pgconn.flush():
                writable.select(1.0)

    def _ended(self) -> SourceError:
        """The server ended the COPY: collect its reason, and whether trying again can help."""
        messages = []
        permanent = False
        while (result := self._pgconn.get_result()) is not None:
            if result.error_message:
                messages.append(_first_line(result.error_message))
                state = _sqlstate(result)  # none: libpq's own (the connection broke)
                permanent = permanent or bool(state and not state.startswith(_TRANSIENT_SQLSTATE_PREFIXES))
        reason = "; ".join(messages) or "the server ended the replication stream"
        if permanent:  # e.g. the publication was dropped: reconnecting would fail the same way
            return SourceError(f"streaming slot {self.slot!r} from {self._where} failed: {reason}")
        return self._lost(reason)

    def _lost(self, reason: str) -> ReplicationLost:
        reason = " ".join(line.strip() for line in reason.splitlines() if line.strip())
        return ReplicationLost(
            f"replication connection to {self._where} (slot {self.slot!r}) lost: {reason}; "
            "reconnect and resume from the last checkpoint"
        )


def drain(fd: int) -> None:
    """Read whatever a non-blocking wake-up descriptor holds."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _sqlstate(result: pq.abc.PGresult) -> str:
    state = result.error_field(pq.DiagnosticField.SQLSTATE)
    return state.decode() if state else ""


def _first_line(message: bytes | None) -> str:
    # libpq appends CONTEXT lines; the first one says what is wrong.
    text = (message or b"").decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else ""


def _repl_literal(value: str) -> str:
    # The replication command grammar knows only standard strings ('' doubles a quote; no E'',
    # backslashes are plain characters), so psycopg's Literal (which may emit E'') cannot be used.
    return "'" + value.replace("'", "''") + "'"
