"""Stream ``COPY ... TO STDOUT`` from the source into a destination's sink, rows never decoded.

Two halves. The source half is a ``COPY ... TO STDOUT`` on a source connection, read at psycopg's
``pq`` (libpq) layer: libpq hands us each row's bytes, and we batch them into large buffers.
The destination half is a ``CopySink``, which a destination opens for what it loads (a table,
a stage, a set of keys; see ``replicator.destinations``). ``PgCopyIn`` is the sink of a
PostgreSQL destination: a ``COPY ... FROM STDIN`` on its connection, also at the libpq layer.

When both ends are PostgreSQL the per-row loop runs in C without the GIL
(``replicator._relay``, chosen by ``replicator.native``), feeding the sink's libpq connection
directly. Otherwise a Python loop does the same, waiting on the sockets with ``select`` (which
releases the GIL) so several relays still overlap, and hands each buffer to ``sink.write``.
Starting, finishing and aborting both COPYs is here, shared by the two loops.

Both connections must stay open, and be used by no other thread, while a relay runs on them
(cancelling the source from another thread is fine: that is what libpq's cancel is for).
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import pq

from replicator import native
from replicator.libpq import pgconn_ptr
from replicator.native import NativeRelay
from replicator.retry import is_transient

BUFFER_BYTES = 256 * 1024
PROGRESS_EVERY_ROWS = 20_000

# Outcomes of the C loop's pump(), as in _relay.c.
DONE = 0
SOURCE_RECEIVE = 1
SOURCE_CONSUME = 2
DEST_SEND = 3
DEST_FLUSH = 4
DEST_CONSUME = 5


class RelayError(Exception):
    """The copy failed on one side; ``side`` says which, ``error`` carries the server's error."""

    def __init__(self, side: str, error: psycopg.Error):
        super().__init__(f"{side}: {error}")
        self.side = side
        self.error = error

    @property
    def transient(self) -> bool:
        return is_transient(self.error)


@dataclass(frozen=True)
class RelayResult:
    rows: int
    bytes: int


class CopySink(Protocol):
    """The destination half of a relay: takes COPY data in the format it was opened for.

    Failures raise ``RelayError("destination", ...)`` (the server's error inside), so the relay
    knows which side to abandon.
    """

    def start(self) -> None:
        """Get ready to receive (e.g. send ``COPY ... FROM STDIN``); nothing is written yet."""
        ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None:
        """Everything was written: end the COPY and wait for the destination to accept it."""
        ...

    def abort(self, reason: str) -> None:
        """Abandon the COPY (the source failed, or the relay was interrupted); never raises."""
        ...

    def libpq_conn(self) -> pq.abc.PGconn | None:
        """The libpq connection a ``COPY FROM STDIN`` is open on, for the C loop to feed
        directly (bypassing ``write``); None if this sink is not one."""
        ...


class CopySource(Protocol):
    """A ``COPY ... TO STDOUT`` read row by row by us (the key walk of delta passes), rather than
    relayed: the other half of ``CopySink``. Failures raise ``RelayError`` naming its side."""

    side: str  # "source" or "destination": who to blame

    def start(self) -> None:
        """Send the COPY; on return the server is ready to stream rows."""
        ...

    def read_row(self) -> bytes | None:
        """The next CopyData message (one row; the binary header comes with the first), None at
        the end (the Python loop; the C loop reads ``libpq_conn()`` itself)."""
        ...

    def finish(self) -> int:
        """After the last row: the server's row count, or ``RelayError`` if the COPY failed."""
        ...

    def abort(self) -> None:
        """Stop a COPY that will not be read to its end; never raises."""
        ...

    def libpq_conn(self) -> pq.abc.PGconn | None:
        """The libpq connection the COPY runs on, for the C loop; None if there is none."""
        ...


class PgCopyOut:
    """A ``CopySource``: ``copy_out`` (a ``COPY ... TO STDOUT``) on ``conn``, which must be idle
    in a transaction or autocommit and used by no other thread meanwhile."""

    def __init__(self, conn: psycopg.Connection[Any], copy_out: bytes, side: str):
        self.conn, self.copy_out, self.side = conn, copy_out, side
        self._pgconn = conn.pgconn

    def start(self) -> None:
        _start(self._pgconn, self.copy_out, pq.ExecStatus.COPY_OUT, self.side, self.conn)

    def read_row(self) -> bytes | None:
        pgconn = self._pgconn
        while True:
            n, data = pgconn.get_copy_data(1)
            if n > 0:
                return bytes(data)
            if n == 0:
                select.select([pgconn.socket], [], [])
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as e:
                    raise RelayError(self.side, e) from None
            elif n == -1:
                return None
            else:
                raise RelayError(self.side, psycopg.OperationalError(pgconn.get_error_message()))

    def finish(self) -> int:
        try:
            return _finish_copy_out(self._pgconn, self.conn)
        except RelayError as e:
            raise RelayError(self.side, e.error) from None

    def abort(self) -> None:
        _abandon_copy_out(self.conn)

    def libpq_conn(self) -> pq.abc.PGconn | None:
        return self._pgconn


def relay_copy(
    src: psycopg.Connection[Any],
    copy_out: bytes,
    sink: CopySink,
    on_progress: Callable[[int, int], None] | None = None,
) -> RelayResult:
    """Run ``copy_out`` on ``src`` and feed its output to ``sink``.

    The source connection must be idle in a transaction or autocommit; nothing commits here.
    ``on_progress(rows, bytes)`` is called with increments every few thousand rows.
    """
    sp = src.pgconn
    _start(sp, copy_out, pq.ExecStatus.COPY_OUT, "source", src)
    try:
        sink.start()
    except BaseException:
        _abandon_copy_out(src)
        raise
    try:
        dp = sink.libpq_conn()
        c_loop = native.relay() if dp is not None else None
        if c_loop is not None and dp is not None:
            moved = _pump_native(c_loop, sp, dp, on_progress)
        else:
            moved = _pump_python(sp, sink.write, on_progress)
        exact_rows = _finish_copy_out(sp, src)
    except RelayError as e:
        if e.side == "source":
            sink.abort("source failed")
        else:
            _abandon_copy_out(src)
        raise
    except BaseException:
        _abandon_copy_out(src)
        sink.abort("relay interrupted")
        raise
    sink.finish()
    # Progress counted CopyData messages; binary COPY adds a trailer message, so settle on the
    # server's own row count.
    if on_progress:
        on_progress(exact_rows - moved.reported_rows, moved.bytes - moved.reported_bytes)
    return RelayResult(rows=exact_rows, bytes=moved.bytes)


@dataclass(frozen=True)
class _Moved:
    """What a pump moved: all bytes, and the part already reported to ``on_progress``."""

    bytes: int
    reported_rows: int
    reported_bytes: int


def _pump_native(
    c_loop: NativeRelay, sp: pq.abc.PGconn, dp: pq.abc.PGconn, on_progress: Callable[[int, int], None] | None
) -> _Moved:
    """The loop in C, without the GIL; failures raise what ``_pump_python`` raises for them."""
    src_ptr, dst_ptr = pgconn_ptr(sp), pgconn_ptr(dp)
    if src_ptr is None or dst_ptr is None:
        raise psycopg.OperationalError("the connection is closed")
    in_main_thread = threading.current_thread() is threading.main_thread()  # where Ctrl-C is handled
    outcome, _, total, reported_rows, reported_bytes = c_loop.pump(
        src_ptr, dst_ptr, on_progress, PROGRESS_EVERY_ROWS, BUFFER_BYTES, in_main_thread
    )
    if outcome == SOURCE_RECEIVE:
        raise psycopg.OperationalError(f"receiving copy data failed: {sp.get_error_message()}")
    if outcome == SOURCE_CONSUME:
        raise psycopg.OperationalError(f"consuming input failed: {sp.get_error_message()}")
    if outcome == DEST_SEND:
        message = f"sending copy data failed: {dp.get_error_message()}"
        raise RelayError("destination", psycopg.OperationalError(message))
    if outcome in (DEST_FLUSH, DEST_CONSUME):
        what = "flushing" if outcome == DEST_FLUSH else "consuming input"
        raise RelayError("destination", psycopg.OperationalError(f"{what} failed: {dp.get_error_message()}"))
    return _Moved(total, reported_rows, reported_bytes)


def _pump_python(
    sp: pq.abc.PGconn, write: Callable[[bytes], None], on_progress: Callable[[int, int], None] | None
) -> _Moved:
    """Read rows until the COPY TO ends, passing them on in large buffers."""
    rows = total = 0  # rows: already reported to on_progress
    pending_rows = pending_bytes = 0
    parts: list[memoryview] = []
    size = 0
    get = sp.get_copy_data
    sock = sp.socket
    while True:
        n, data = get(1)
        if n > 0:
            parts.append(data)
            size += n
            pending_rows += 1
            if size >= BUFFER_BYTES:
                write(b"".join(parts))
                total += size
                pending_bytes += size
                parts.clear()
                size = 0
                if on_progress and pending_rows >= PROGRESS_EVERY_ROWS:
                    on_progress(pending_rows, pending_bytes)
                    rows += pending_rows
                    pending_rows = pending_bytes = 0
        elif n == 0:
            select.select([sock], [], [])
            sp.consume_input()
        else:
            break
    if parts:
        write(b"".join(parts))
        total += size
        pending_bytes += size
    return _Moved(total, rows, total - pending_bytes)


class PgCopyIn:
    """The sink of a PostgreSQL destination: ``copy_in`` (a ``COPY ... FROM STDIN``) on ``conn``,
    which must be idle in a transaction or autocommit and used by no other thread meanwhile."""

    def __init__(self, conn: psycopg.Connection[Any], copy_in: bytes):
        self.conn = conn
        self.copy_in = copy_in
        self._pgconn = conn.pgconn

    def start(self) -> None:
        _start(self._pgconn, self.copy_in, pq.ExecStatus.COPY_IN, "destination", self.conn)

    def write(self, data: bytes) -> None:
        _put(self._pgconn, data)

    def finish(self) -> None:
        _finish_copy_in(self._pgconn, self.conn)

    def abort(self, reason: str) -> None:
        _abort_copy_in(self._pgconn, self.conn, reason)

    def libpq_conn(self) -> pq.abc.PGconn | None:
        return self._pgconn


def _start(
    pgconn: pq.abc.PGconn, query: bytes, expected: pq.ExecStatus, side: str, conn: psycopg.Connection[Any]
) -> None:
    pgconn.send_query(query)
    _flush(pgconn)
    _wait_readable(pgconn, side, conn)
    res = pgconn.get_result()
    if res is None or res.status != expected:
        err = _error(res, conn)
        while pgconn.get_result() is not None:
            pass
        raise RelayError(side, err)


def _wait_readable(pgconn: pq.abc.PGconn, side: str, conn: psycopg.Connection[Any]) -> None:
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [])
        pgconn.consume_input()


def _put(dp: pq.abc.PGconn, data: bytes) -> None:
    # psycopg keeps its connections in libpq's nonblocking mode: libpq never blocks (while
    # holding the GIL) on a full socket; we wait for writability in select, which releases it.
    try:
        while (rv := dp.put_copy_data(data)) == 0:
            select.select([], [dp.socket], [])
        if rv < 0:
            raise psycopg.OperationalError(dp.get_error_message())
        _flush(dp)
    except psycopg.OperationalError as e:
        raise RelayError("destination", e) from None


def _flush(dp: pq.abc.PGconn) -> None:
    while dp.flush() > 0:
        select.select([], [dp.socket], [])


def _finish_copy_out(sp: pq.abc.PGconn, conn: psycopg.Connection[Any]) -> int:
    """Collect the COPY TO result; return the row count the server reports."""
    res = sp.get_result()
    status = res.status if res is not None else None
    rows = res.command_tuples if res is not None else None
    while sp.get_result() is not None:
        pass
    if status != pq.ExecStatus.COMMAND_OK:
        raise RelayError("source", _error(res, conn))
    return rows or 0


def _finish_copy_in(dp: pq.abc.PGconn, conn: psycopg.Connection[Any]) -> None:
    try:
        while (rv := dp.put_copy_end(None)) == 0:
            select.select([], [dp.socket], [])
        if rv < 0:
            raise psycopg.OperationalError(dp.get_error_message())
        _flush(dp)
    except psycopg.OperationalError as e:
        raise RelayError("destination", e) from None
    _wait_readable(dp, "destination", conn)
    res = dp.get_result()
    status = res.status if res is not None else None
    while dp.get_result() is not None:
        pass
    if status != pq.ExecStatus.COMMAND_OK:
        raise RelayError("destination", _error(res, conn))


def _abort_copy_in(dp: pq.abc.PGconn, conn: psycopg.Connection[Any], reason: str) -> None:
    if dp.status != pq.ConnStatus.OK:
        return
    try:
        dp.put_copy_end(reason.encode())
        _flush(dp)
        _wait_readable(dp, "destination", conn)
        while dp.get_result() is not None:
            pass
    except Exception:
        pass


def _abandon_copy_out(conn: psycopg.Connection[Any]) -> None:
    """Stop a COPY TO that we will not read to the end (the destination failed)."""
    sp = conn.pgconn
    if sp.status != pq.ConnStatus.OK:
        return
    try:
        cancel = sp.get_cancel()
        cancel.cancel()
        while True:
            n, _ = sp.get_copy_data(0)
            if n < 0:
                break
    except Exception:
        pass  # e.g. the COPY had already ended (read to its end by the key walk): its result remains
    try:
        while sp.get_result() is not None:
            pass
    except Exception:
        pass


def _error(res: pq.abc.PGresult | None, conn: psycopg.Connection[Any]) -> psycopg.Error:
    """The server's error as the matching psycopg exception (so SQLSTATE classes work)."""
    if res is None:
        return psycopg.OperationalError(conn.pgconn.get_error_message().strip())
    return psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
