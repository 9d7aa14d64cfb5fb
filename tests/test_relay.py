"""The COPY relay on real servers, through both of its loops: C (``replicator._relay``) and Python.

Each test runs once per loop; the other loop is made to fail loudly if it is reached, so a test
of the C loop cannot pass by silently falling back to Python.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from replicator import relay
from replicator.native import PURE_PYTHON_ENV, RELAY_ENV
from replicator.native import relay as native_relay
from replicator.native import relay_unavailable as unavailable_reason
from replicator.relay import PgCopyIn, RelayError, relay_copy
from tests.conftest import Database
from tests.support import checksum

SOURCE_DDL = """
CREATE TABLE t (id int PRIMARY KEY, s text, n numeric, ts timestamptz, j jsonb, b bytea, big text);
INSERT INTO t
SELECT g,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g || ' é ' || E'tab\\there' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END,
       CASE WHEN g % 3 = 0 THEN NULL
            ELSE '2025-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('k', g, 'v', md5(g::text)) END,
       CASE WHEN g % 6 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
       -- every 250th row carries a ~100 KB value, TOASTed at the source
       CASE WHEN g % 250 = 0
            THEN (SELECT string_agg(md5((g * 10000 + i)::text), '') FROM generate_series(1, 3200) i)
            WHEN g % 11 = 0 THEN NULL ELSE 'short' END
FROM generate_series(1, 3000) g;
"""
Conn = psycopg.Connection[Any]
DEST_DDL = "CREATE TABLE t (id int, s text, n numeric, ts timestamptz, j jsonb, b bytea, big text)"


@pytest.fixture(params=["c", "python"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which loop the relay must use in this test; reaching the other one fails the test."""

    def wrong_loop(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"the relay did not use the {request.param} loop")

    if request.param == "c":
        monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
        monkeypatch.delenv(RELAY_ENV, raising=False)
        # The C loop is part of the product: not being able to use it here is a failure, not a skip.
        assert unavailable_reason() is None, unavailable_reason()
        assert native_relay() is not None
        monkeypatch.setattr(relay, "_pump_python", wrong_loop)
    else:
        monkeypatch.setenv(RELAY_ENV, "1")
        assert native_relay() is None
        monkeypatch.setattr(relay, "_pump_native", wrong_loop)
    return str(request.param)


@pytest.fixture
def conns(source_db: Database, dest_db: Database) -> Iterator[tuple[Conn, Conn]]:
    with source_db.connect() as src, dest_db.connect() as dst:
        yield src, dst


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.first = threading.Event()

    def __call__(self, rows: int, nbytes: int) -> None:
        self.calls.append((rows, nbytes))
        self.first.set()

    @property
    def rows(self) -> int:
        return sum(r for r, _ in self.calls)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.calls)


def assert_usable(*conns: psycopg.Connection[Any]) -> None:
    """After a failed relay, each connection is out of COPY state and takes queries again."""
    for conn in conns:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT 42").fetchone() == (42,)


@pytest.mark.parametrize("fmt", ["binary", "text"])
@pytest.mark.parametrize("buffer_bytes", [4096, relay.BUFFER_BYTES], ids=["small-buffer", "default-buffer"])
def test_copies_identical_data(
    loop: str, fmt: str, buffer_bytes: int, source_db: Database, dest_db: Database, conns: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small buffer sends the ~100 KB rows on their own (the C loop's no-copy path) and makes
    # many sends, so progress is reported during the copy, not only at its end.
    monkeypatch.setattr(relay, "BUFFER_BYTES", buffer_bytes)
    monkeypatch.setattr(relay, "PROGRESS_EVERY_ROWS", 500)
    source_db.execute(SOURCE_DDL)
    dest_db.execute(DEST_DDL)
    src, dst = conns
    progress = Progress()
    copy_out, copy_in = f"COPY t TO STDOUT (FORMAT {fmt})", f"COPY t FROM STDIN (FORMAT {fmt})"
    result = relay_copy(src, copy_out.encode(), PgCopyIn(dst, copy_in.encode()), progress)
    assert result.rows == 3000
    assert checksum(dest_db, "public", "t") == checksum(source_db, "public", "t")
    assert dest_db.fetchone("SELECT count(*) FROM t WHERE length(big) > 100000") == 12
    assert dest_db.fetchone("SELECT count(*) FROM t WHERE s IS NULL AND j IS NULL") == 3000 // 28
    # Increments add up to the server's row count and to every byte moved.
    assert progress.rows == 3000 and progress.bytes == result.bytes
    assert result.bytes > 12 * 100_000
    if buffer_bytes < relay.BUFFER_BYTES or fmt == "text":
        assert len(progress.calls) > 2
    assert_usable(src, dst)


def test_empty_result(loop: str, source_db: Database, dest_db: Database, conns: Any) -> None:
    source_db.execute(SOURCE_DDL)
    dest_db.execute(DEST_DDL)
    src, dst = conns
    progress = Progress()
    result = relay_copy(
        src, b"COPY (SELECT * FROM t WHERE false) TO STDOUT (FORMAT binary)", PgCopyIn(dst,
        b"COPY t FROM STDIN (FORMAT binary)"), progress,
    )
    assert result.rows == 0
    assert progress.rows == 0
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0


@pytest.mark.parametrize("constraint", ["NOT NULL", "CHECK"])
def test_destination_error_mid_copy(
    loop: str, constraint: str, source_db: Database, dest_db: Database, conns: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "BUFFER_BYTES", 4096)
    source_db.execute(SOURCE_DDL)
    if constraint == "NOT NULL":
        dest_db.execute(DEST_DDL.replace("s text", "s text NOT NULL"))  # row 7 has a NULL s
        expected: type[psycopg.Error] = errors.NotNullViolation
    else:
        dest_db.execute(DEST_DDL.replace("id int", "id int CHECK (id <> 1500)"))
        expected = errors.CheckViolation
    src, dst = conns
    with pytest.raises(RelayError) as caught:
        with dst.transaction():
            relay_copy(
                src, b"COPY t TO STDOUT (FORMAT binary)", PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)")
            )
    assert caught.value.side == "destination"
    assert isinstance(caught.value.error, expected)
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0
    assert_usable(src, dst)


def test_source_error_mid_copy(
    loop: str, dest_db: Database, conns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "BUFFER_BYTES", 4096)
    monkeypatch.setattr(relay, "PROGRESS_EVERY_ROWS", 100)
    dest_db.execute("CREATE TABLE t (g int, q int)")
    src, dst = conns
    progress = Progress()
    failing = b"COPY (SELECT g, 1 / (g - 20000) FROM generate_series(1, 30000) g) TO STDOUT (FORMAT binary)"
    with pytest.raises(RelayError) as caught:
        with dst.transaction():
            relay_copy(src, failing, PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)"), progress)
    assert caught.value.side == "source"
    assert isinstance(caught.value.error, errors.DivisionByZero)
    assert 0 < progress.rows < 20000  # rows were flowing when the source failed
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0
    assert_usable(src, dst)


def test_cancel_from_another_thread(
    loop: str, dest_db: Database, conns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "PROGRESS_EVERY_ROWS", 1000)
    dest_db.execute("CREATE TABLE t (g int)")
    src, dst = conns
    progress = Progress()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            with dst.transaction():
                # Streams (a set-returning function in the select list is not materialized) for
                # far longer than the test waits, yet bounded: a relay that failed to stop must
                # fail the test, not fill the disk with billions of rows (it once did, in CI).
                relay_copy(
                    src, b"COPY (SELECT generate_series(1, 50000000)) TO STDOUT (FORMAT binary)",
                    PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)"), progress,
                )
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    assert progress.first.wait(60), "no progress before the cancel"
    src.cancel()
    worker.join(60)
    assert not worker.is_alive(), "the relay did not stop after the cancel"
    assert len(outcome) == 1 and isinstance(outcome[0], RelayError), outcome
    assert outcome[0].side == "source"
    assert isinstance(outcome[0].error, errors.QueryCanceled)
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0
    assert_usable(src, dst)


def test_ctrl_c_in_the_main_thread(
    loop: str, dest_db: Database, conns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C stops a relay running in the main thread (where Python runs signal handlers).

    No progress callback: in the C loop that would be a moment with the GIL where Python could
    notice the signal; without one the loop itself must.
    """
    dest_db.execute("CREATE TABLE t (g int)")
    src, dst = conns
    copying = threading.Event()
    done = threading.Event()

    def interrupt() -> None:
        with dest_db.connect() as watcher:
            while not done.is_set():
                row = watcher.execute(
                    "SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = %s",
                    (dst.info.backend_pid,),
                ).fetchone()
                if row and row[0] > 10_000:
                    # Python may raise a KeyboardInterrupt inside a finalizer, where it is
                    # swallowed: interrupt again for as long as the COPY is still running.
                    copying.set()
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                    time.sleep(0.5)
                    continue
                if copying.is_set():
                    return  # the COPY is over: the relay stopped
                time.sleep(0.05)

    # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: install it, as an interactive start does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter = threading.Thread(target=interrupt)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with dst.transaction():
                # Bounded for the same reason as above.
                relay_copy(
                    src, b"COPY (SELECT generate_series(1, 50000000)) TO STDOUT (FORMAT binary)",
                    PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)"),
                )
    finally:
        done.set()
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    assert copying.is_set()
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0
    assert_usable(src, dst)


def test_progress_callback_failure_aborts_both_sides(
    loop: str, source_db: Database, dest_db: Database, conns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "BUFFER_BYTES", 4096)
    monkeypatch.setattr(relay, "PROGRESS_EVERY_ROWS", 100)
    source_db.execute(SOURCE_DDL)
    dest_db.execute(DEST_DDL)
    src, dst = conns

    def broken(rows: int, nbytes: int) -> None:
        raise KeyError("progress display broke")

    with pytest.raises(KeyError, match="progress display broke"):
        with dst.transaction():
            relay_copy(
                src,
                b"COPY t TO STDOUT (FORMAT binary)",
                PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)"),
                broken,
            )
    assert dest_db.fetchone("SELECT count(*) FROM t") == 0
    assert_usable(src, dst)


def test_notices_on_both_sides_during_copy(
    loop: str, source_db: Database, dest_db: Database, conns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq hands notices to psycopg's receivers from inside the loop (in C: without the GIL)."""
    monkeypatch.setattr(relay, "BUFFER_BYTES", 4096)
    source_db.execute(
        """CREATE FUNCTION noisy(g int) RETURNS int LANGUAGE plpgsql AS $$
           BEGIN IF g % 500 = 0 THEN RAISE NOTICE 'source row %', g; END IF; RETURN g; END $$"""
    )
    dest_db.execute(
        """CREATE TABLE t (g int);
           CREATE FUNCTION noisy() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN IF NEW.g % 500 = 0 THEN RAISE NOTICE 'destination row %', NEW.g; END IF; RETURN NEW; END $$;
           CREATE TRIGGER noisy BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION noisy()"""
    )
    src, dst = conns
    heard: list[str] = []
    src.add_notice_handler(lambda d: heard.append(d.message_primary or ""))
    dst.add_notice_handler(lambda d: heard.append(d.message_primary or ""))
    result = relay_copy(
        src, b"COPY (SELECT noisy(g) FROM generate_series(1, 20000) g) TO STDOUT (FORMAT binary)",
        PgCopyIn(dst, b"COPY t FROM STDIN (FORMAT binary)"),
    )
    assert result.rows == 20000
    assert sorted(heard) == sorted([f"source row {g}" for g in range(500, 20001, 500)]
                                   + [f"destination row {g}" for g in range(500, 20001, 500)])
    assert dest_db.fetchone("SELECT sum(g) FROM t") == 20000 * 20001 // 2
