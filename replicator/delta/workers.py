"""Worker threads for a pass: each holds a source connection inside the pass's snapshot and a
destination connection, and takes tables from a queue. ``relay_copy`` waits in ``select()``,
which releases the GIL, so the threads really run in parallel.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import psycopg

from replicator.connect import connect, is_transient, retrying
from replicator.errors import ReplicatorError, SourceError
from replicator.job import Job
from replicator.relay import RelayError

APP = "replicator/delta-snapshot"

T = TypeVar("T")


class SnapshotLost(SourceError):
    """A worker could not join the pass's snapshot: its exporting connection is gone."""


def session_settings(conn: psycopg.Connection[Any], settings: dict[str, str]) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


class Session:
    """One thread's pair of connections; reconnects (and rejoins the snapshot) after a failure."""

    def __init__(self, job: Job, snapshot_name: str, settings: dict[str, str]):
        self.job, self.snapshot_name, self.settings = job, snapshot_name, settings
        self.src: psycopg.Connection[Any] | None = None
        self.dst: psycopg.Connection[Any] | None = None

    def connections(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        if self.src is None or self.src.closed:
            self.src = connect(self.job.source.value, "source", APP, autocommit=True)
            # Idle in the pass's snapshot between tables: managed services' timeouts must not cut it.
            session_settings(
                self.src,
                {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0", **self.settings},
            )
            self.src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                # SET TRANSACTION SNAPSHOT takes no parameters; the name came from pg_export_snapshot().
                self.src.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_id(self.snapshot_name)}'")
            except psycopg.Error as e:
                raise SnapshotLost(
                    f"cannot join the pass's snapshot {self.snapshot_name}: {e}; the coordinating "
                    f"connection was probably lost; the next pass starts over"
                ) from None
        if self.dst is None or self.dst.closed:
            self.dst = connect(self.job.destination.value, "destination", APP, autocommit=True)
            session_settings(self.dst, self.settings)
            # Safe: rows and watermark commit together, so a destination crash loses both or neither.
            self.dst.execute("SET synchronous_commit = off")
        return self.src, self.dst

    def cancel(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None and not conn.closed:
                try:
                    conn.cancel()
                except psycopg.Error:
                    pass

    def close(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
        self.src = self.dst = None


def _snapshot_id(name: str) -> str:
    if not name or any(ch not in "0123456789ABCDEFabcdef-" for ch in name):
        raise SourceError(f"invalid snapshot name {name!r}")
    return name


def run_parallel(
    job: Job,
    snapshot_name: str,
    settings: dict[str, str],
    items: list[T],
    threads: int,
    describe: Callable[[T], str],
    handle: Callable[[Session, T], None],
) -> None:
    """Run ``handle`` on every item in up to ``threads`` threads; the first error stops them all."""
    if not items:
        return
    work: queue.Queue[T] = queue.Queue()
    for item in items:
        work.put(item)
    stop = threading.Event()
    errors: list[BaseException] = []
    workers = [
        _Worker(job, Session(job, snapshot_name, settings), work, stop, errors, describe, handle)
        for _ in range(max(1, min(threads, len(items))))
    ]
    for w in workers:
        w.start()
    try:
        for w in workers:
            while w.is_alive():
                w.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for w in workers:
            w.session.cancel()
        for w in workers:
            w.join()
        raise
    if errors:
        raise errors[0]


class _Worker(threading.Thread, Generic[T]):
    def __init__(
        self,
        job: Job,
        session: Session,
        work: queue.Queue[T],
        stop: threading.Event,
        errors: list[BaseException],
        describe: Callable[[T], str],
        handle: Callable[[Session, T], None],
    ):
        super().__init__(daemon=True, name="delta-worker")
        self.job, self.session, self.work, self.stop, self.errors = job, session, work, stop, errors
        self.describe, self.handle = describe, handle

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    return
                self._with_retries(item)
        except BaseException as e:  # reported by the coordinating thread
            self.errors.append(e)
            self.stop.set()
        finally:
            self.session.close()

    def _with_retries(self, item: T) -> None:
        what = self.describe(item)
        for attempt in retrying(self.job.source.value, what):
            with attempt:
                try:
                    self.handle(self.session, item)
                except RelayError as e:
                    self.session.close()
                    if is_transient(e.error):
                        raise e.error from None
                    raise ReplicatorError(f"{what} failed at the {e.side}: {_reason(e.error)}") from None
                except psycopg.Error as e:
                    self.session.close()
                    if is_transient(e):
                        raise
                    raise ReplicatorError(f"{what} failed: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, psycopg.Error) and e.diag.message_primary:
        return e.diag.message_primary
    return str(e).strip()
