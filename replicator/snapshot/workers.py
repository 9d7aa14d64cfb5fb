"""Worker threads that read inside one exported snapshot and write to the destination.

Each worker holds a ``Session``: a source connection that joined the snapshot and a
destination session for loading. Workers take items from a queue; a transient failure
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

from replicator.connect import connect, retrying_for
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession
from replicator.errors import DestinationError, ReplicatorError, SourceError
from replicator.job import Job
from replicator.relay import RelayError
from replicator.retry import is_transient

T = TypeVar("T")

# Managed services often set these; a snapshot held open while workers read must not be cut by them.
SNAPSHOT_SESSION = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0"}


class SnapshotLost(SourceError):
    """A worker could not join the snapshot: the connection that exported it is gone.

    Joining it again cannot succeed; a new pass (delta-snapshot) takes a new snapshot."""

    transient = False
    recoverable = True


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
    """One worker's source connection and destination session; reconnects (and rejoins the
    snapshot) after a failure. ``settings`` apply to both (e.g. identical text forms)."""

    def __init__(self, job: Job, snapshot_name: str, settings: Mapping[str, str], app: str):
        self.job, self.snapshot_name, self.settings, self.app = job, snapshot_name, settings, app
        self.src: psycopg.Connection[Any] | None = None
        self.dst: DestinationSession | None = None

    def connections(self) -> tuple[psycopg.Connection[Any], DestinationSession]:
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
        if self.dst is None or not self.dst.usable:
            if self.dst is not None:
                self.dst.close()
            destination = open_destination(self.job.destination.value)
            self.dst = destination.open_session(self.app, role="writer", settings=self.settings)
        return self.src, self.dst

    def cancel(self) -> None:
        if self.src is not None and not self.src.closed:
            try:
                self.src.cancel()
            except psycopg.Error:
                pass
        if self.dst is not None:
            self.dst.cancel()

    def close(self) -> None:
        if self.src is not None:
            try:
                self.src.close()
            except psycopg.Error:
                pass
        if self.dst is not None:
            self.dst.close()
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
    on_error: Callable[[T, Exception], bool] | None = None,
) -> bool:
    """Run ``handle`` on the items, in order, in up to ``threads`` threads.

    The first error stops them all and is raised, unless ``on_error(item, error)`` (called once
    an item's retries are spent) returns True: the error is then the caller's, and the workers
    go on with the other items. When ``stop`` is set, workers finish the item in hand and take
    no more; returns whether every item was handled.
    """
    if not items:
        return True
    work: queue.Queue[T] = queue.Queue()
    for item in items:
        work.put(item)
    stop = stop or threading.Event()
    errors: list[BaseException] = []
    workers = [
        _Worker(
            job,
            Session(job, snapshot_name, settings, app),
            work,
            stop,
            errors,
            describe,
            handle,
            f"{app}-{i}",
            on_error,
        )
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
        on_error: Callable[[T, Exception], bool] | None = None,
    ):
        super().__init__(daemon=True, name=name)
        self.job, self.session, self.work, self.stop, self.errors = job, session, work, stop, errors
        self.describe, self.handle, self.on_error = describe, handle, on_error

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._with_retries(item)
                except Exception as e:
                    if self.on_error is None or not self.on_error(item, e):
                        raise
        except BaseException as e:  # reported by the coordinating thread
            self.errors.append(e)
            self.stop.set()
        finally:
            self.session.close()

    def _with_retries(self, item: T) -> None:
        """``handle`` the item; a transient failure retries it on new connections (rejoining the
        snapshot). When retrying cannot help, the server's words, and which side said them."""
        what = self.describe(item)

        def reconnect_next_time(e: BaseException) -> None:
            self.session.close()

        try:
            for attempt in retrying_for(self.job.source.value, what, before_retry=reconnect_next_time):
                with attempt:
                    self.handle(self.session, item)
        except RelayError as e:
            self.session.close()
            if is_transient(e):
                raise e.error from None  # retries spent: the server's error, for the caller's rule
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
