"""Worker threads that read inside one exported snapshot and write to the destination.

Each worker holds a ``Session``: a source connection that joined the snapshot and a
destination connection for loading. Workers take items from a queue; a transient failure
reconnects (rejoining the snapshot, which works for as long as the exporting transaction is
open) and retries the item; any other failure stops every worker. ``relay_copy`` waits in
``select()`` or in C without the GIL, so the threads really run in parallel.

Used by the snapshot (chunks) and by delta-snapshot passes (tables, key ranges).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import psycopg

from replicator.connect import connect, is_transient, retrying
from replicator.errors import DestinationError, ReplicatorError, SourceError
from replicator.job import Job
from replicator.relay import RelayError

T = TypeVar("T")

# Managed services often set these; a snapshot held open while workers read must not be cut by them.
SNAPSHOT_SESSION = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"}


class SnapshotLost(SourceError):
    """A worker could not join the snapshot: the connection that exported it is gone."""


def snapshot_id(name: str) -> str:
    """``name`` checked to be a snapshot name (SET TRANSACTION SNAPSHOT takes no parameters)."""
    if not name or any(ch not in "0123456789ABCDEFabcdef-" for ch in name):
        raise SourceError(f"invalid snapshot name {name!r}")
    return name


def session_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def begin_in_snapshot(conn: psycopg.Connection[Any], snapshot_name: str | None) -> None:
    """Start the repeatable-read transaction that reads as of ``snapshot_name`` (or its own)."""
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if snapshot_name:
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id(snapshot_name)}'")


class Session:
    """One worker's pair of connections; reconnects (and rejoins the snapshot) after a failure."""

    def __init__(self, job: Job, snapshot_name: str, settings: Mapping[str, str], app: str):
        self.job, self.snapshot_name, self.settings, self.app = job, snapshot_name, settings, app
        self.src: psycopg.Connection[Any] | None = None
        self.dst: psycopg.Connection[Any] | None = None

    def connections(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        if self.src is None or self.src.closed:
            self.src = connect(self.job.source.value, "source", self.app, autocommit=True)
            session_settings(self.src, {**SNAPSHOT_SESSION, **self.settings})
            try:
                begin_in_snapshot(self.src, self.snapshot_name)
            except psycopg.Error as e:
                raise SnapshotLost(
                    f"cannot join the snapshot {self.snapshot_name}: {e}; the coordinating connection was "
                    f"probably lost; run again to resume"
                ) from None
        if self.dst is None or self.dst.closed:
            self.dst = connect(self.job.destination.value, "destination", self.app, autocommit=True)
            session_settings(self.dst, self.settings)
            # Safe: rows and their checkpoint commit together, so a destination crash loses both or neither.
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


def run_parallel(
    job: Job,
    snapshot_name: str,
    settings: Mapping[str, str],
    items: list[T],
    threads: int,
    describe: Callable[[T], str],
    handle: Callable[[Session, T], None],
    app: str,
    stop: threading.Event | None = None,
) -> bool:
    """Run ``handle`` on the items, in order, in up to ``threads`` threads.

    The first error stops them all and is raised. When ``stop`` is set, workers finish the item
    in hand and take no more; returns whether every item was handled.
    """
    if not items:
        return True
    work: queue.Queue[T] = queue.Queue()
    for item in items:
        work.put(item)
    stop = stop or threading.Event()
    errors: list[BaseException] = []
    workers = [
        _Worker(job, Session(job, snapshot_name, settings, app), work, stop, errors, describe, handle, f"{app}-{i}")
        for i in range(max(1, min(threads, len(items))))
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
    return work.empty()


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
        name: str,
    ):
        super().__init__(daemon=True, name=name)
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
                    self.session.close()  # reconnect (and rejoin the snapshot) on the next attempt
                    if is_transient(e.error):
                        raise e.error from None
                    kind = SourceError if e.side == "source" else DestinationError
                    raise kind(f"{what} failed at the {e.side}: {reason(e.error)}") from None
                except psycopg.Error as e:
                    self.session.close()
                    if is_transient(e):
                        raise
                    raise ReplicatorError(f"{what} failed: {reason(e)}") from None


def reason(e: BaseException) -> str:
    """The server's own words for a database error."""
    if isinstance(e, psycopg.Error) and e.diag.message_primary:
        return e.diag.message_primary
    return str(e).strip()
