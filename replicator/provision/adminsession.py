"""The admin session provisioning runs in: one transaction per step, redone when a transient conflict ends it.

Provisioning changes catalog rows other sessions may change at the same moment: the role (pg_authid,
pg_auth_members), the database's and tables' ACLs, default privileges, publications. Another ``pulumi
up`` on the same server, an operator's GRANT or an application's migration can make a step fail with
an error that trying again cures: a deadlock (40P01), a serialization failure (40001), "tuple
concurrently updated" (XX000: a GRANT whose catalog row another session changed first), or the end
of the connection (57P01 ``pg_terminate_backend`` or a server shutting down for a failover, 08006).

Each step is idempotent and runs in one transaction, so a failed attempt leaves nothing behind and the
next one redoes the whole step from a clean slate: on a new connection when the old one is gone (the
session knows how to open one). Attempts are bounded, with a jittered backoff between them; errors
the rule calls permanent (permission denied, a missing schema, a bad spec) fail at once. Either way the
error names the step (``AccessError``). The rule and the policy are ``replicator.retry``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import psycopg

from replicator.retry import first_line, is_transient, retrying

T = TypeVar("T")

# Five attempts, waits drawn up to 0.5, 1, 2, 4 s: about 8 s in the worst case, far longer than one
# conflicting GRANT or migration holds its locks, short enough for a `pulumi up` to fail promptly.
STEP_ATTEMPTS = 5
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 4.0


class AccessError(RuntimeError):
    """The database refused a step; the message says which and why."""


Connector = Callable[[], "psycopg.Connection[Any]"]


class AdminSession:
    """An autocommit admin connection and how to open it again; ``step`` runs one retried transaction.

    Made from a connector (``AdminSession(connect)``: the connection is opened when first needed, again
    after a connection loss, and closed with the session) or from a connection someone else owns
    (``AdminSession.of(conn)``: kept open; a lost connection then ends the step, as nothing can reopen it).
    """

    def __init__(
        self,
        connect: Connector | None,
        conn: psycopg.Connection[Any] | None = None,
        *,
        attempts: int = STEP_ATTEMPTS,
        wait_s: float = FIRST_WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        if connect is None and conn is None:
            raise ValueError("an admin session needs a connection or a way to open one")
        self._connect, self._conn = connect, conn
        self._owns_conn = conn is None
        self.attempts, self.wait_s, self.max_wait_s = attempts, wait_s, max_wait_s

    @classmethod
    def of(cls, admin: Admin) -> AdminSession:
        return admin if isinstance(admin, AdminSession) else cls(None, admin)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The open connection (opened now if there is none)."""
        if self._conn is None:
            assert self._connect is not None
            self._conn = self._connect()
            self._owns_conn = True
        return self._conn

    def step(self, what: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work(conn)`` in one transaction; redone (up to ``attempts`` in all) while it fails transiently.

        ``what`` names the step in the log and in the ``AccessError`` raised when it fails.
        """
        tries = 0
        try:
            for attempt in retrying(
                self.attempts, self.wait_s, what,
                retry_if=self._may_retry, before_retry=self._drop_lost_connection, max_wait_s=self.max_wait_s,
            ):  # fmt: skip
                with attempt:
                    tries += 1
                    conn = self.conn
                    with conn.transaction():
                        return work(conn)
        except psycopg.Error as e:
            raise AccessError(_explain(what, e, tries, transient=self._may_retry(e))) from None
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _may_retry(self, exc: BaseException) -> bool:
        if not is_transient(exc):
            return False
        # A connection someone else owns cannot be replaced: once lost, every attempt would fail alike.
        return self._connect is not None or (self._conn is not None and not _lost(self._conn))

    def _drop_lost_connection(self, _exc: BaseException) -> None:
        if self._conn is not None and _lost(self._conn):
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None and self._owns_conn:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> AdminSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


Admin = psycopg.Connection[Any] | AdminSession


def _lost(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.closed or conn.broken)


def _explain(what: str, exc: psycopg.Error, tries: int, transient: bool) -> str:
    detail = f" ({exc.diag.message_detail})" if exc.diag.message_detail else ""
    message = f"{what}: {exc.diag.message_primary or first_line(exc)}{detail}"
    if not transient:
        return message
    return (
        f"{message}; gave up after {tries} attempt{'s' if tries != 1 else ''}: another session keeps "
        "changing the same objects (a concurrent pulumi up, GRANT or migration), or the server is "
        "failing over. Run pulumi up again once it is done: every step is idempotent"
    )
