"""One transience rule and one retry policy, for every place that tries again.

The rule (``is_transient``): an error may go away by itself (a restart, a failover, the network)
or it may not (a wrong password, a missing table). It honours the error's own word first:

1. an exception with a ``transient`` attribute says so itself: ours do (``ReplicationLost``,
   ``SlotInUse``; ``RelayError`` asks the server error it carries);
   then a server that says it is a read-only node (in recovery, an Aurora reader: a failover
   in progress) is transient, whatever the error's class (``on_read_only_node``), and so is a
   catalog row changed under a statement by a concurrent session (XX000 "tuple concurrently
   updated": two GRANTs on one object; a duplicate in a catalog's unique index: two CREATE ...
   IF NOT EXISTS of one name; ``concurrent_catalog_change``);
2. psycopg's ``OperationalError``s are transient (connection exceptions, operator intervention,
   insufficient resources, ...), except authorization and unknown-catalog SQLSTATEs (28, 3D) and
   the connection failures libpq describes in words only (a failed connection attempt has no
   SQLSTATE; ``permanent_connect_failure``): a wrong password, an unknown database or user,
   pg_hba.conf, SSL required but off, bad certificates and host names;
3. anything else is not.

Some failures end an operation whose own retries are spent, or whose context is gone, yet a
fresh start later may succeed: ``ConnectError`` after ``connect`` retried an unreachable server,
``SnapshotLost`` when the exported snapshot a worker must join is gone. Such exceptions carry
``recoverable = True``; ``may_recover_later`` is the rule for loops that start over from the
beginning (the delta loop's next pass), never for retrying the same operation again at once.

The policy (``retrying``): tenacity, retrying only what the rule says is transient, a fixed
wait apart (or a jittered exponential backoff), a bounded number of times in a row, logging
each retry. Used by ``connect``, the snapshot/delta worker pool (an item is retried on new
connections), the realtime pipeline (the stream resumes from the destination's checkpoint), the
delta loop (a failed pass is tried again after the interval) and provisioning (each step's
transaction is redone: ``replicator.provision.adminsession``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import tenacity

log = logging.getLogger(__name__)

# SQLSTATE classes for which trying again cannot help: bad credentials, unknown database.
_PERMANENT_SQLSTATE_PREFIXES = ("28", "3D")

# A failed connection attempt carries no SQLSTATE (psycopg's OperationalError from connect() has
# none): libpq's text, and the server's FATAL message inside it, are all there is to go by.
# (libpq message fragment, the cause in a few words) for the failures no retry can cure.
_PERMANENT_CONNECT_FAILURES = (
    ("password authentication failed", "wrong username or password"),
    ("no password supplied", "the server wants a password and none is configured"),
    ('" does not exist', "unknown database or user"),
    ("is not permitted to log in", "the user may not log in"),
    ("permission denied for database", "the user lacks CONNECT on the database"),
    ("no pg_hba.conf entry", "the server's pg_hba.conf has no line admitting this connection"),
    ("pg_hba.conf rejects connection", "the server's pg_hba.conf rejects this connection"),
    (
        "server does not support SSL, but SSL was required",
        "SSL is required by ssl-mode but the server has SSL off",
    ),
    ("certificate", "the server's certificate is not trusted"),
    ("does not match host name", "the server's certificate does not name this host"),
    ("SSL error", "the SSL handshake failed"),
    ("must be superuser or replication role", "the user lacks the REPLICATION right"),
    ("invalid connection option", "a connection parameter is invalid"),
    ("invalid sslmode value", "a connection parameter is invalid"),
)


def permanent_connect_failure(exc: BaseException) -> str | None:
    """The cause, in a few words, when a failed connection attempt cannot succeed by retrying; else None.

    Transient (None): refused or timed-out connections, a server starting up, shutting down or in
    recovery, too many clients, host names that do not resolve (yet): restarts and failovers.
    """
    text = str(exc)
    for fragment, cause in _PERMANENT_CONNECT_FAILURES:
        if fragment in text:
            return cause
    return None


# A failover can briefly leave the endpoint on a read-only node (a standby still in recovery, an
# Aurora reader): what fails there succeeds once the writer is back. SQLSTATE 55000 (object not
# in prerequisite state) also covers permanent errors, such as a wrong wal_level, so these are
# recognised by the server's words.
_READ_ONLY_NODE = (
    "cannot be used on RO node",  # Aurora: "replication slots cannot be used on RO node"
    "while in recovery",  # "logical decoding cannot be used while in recovery"
    "recovery is in progress",
    "in a read-only transaction",  # "cannot execute INSERT in a read-only transaction" (heartbeat)
    "the source is a read-only node",  # ours: ReadOnlyNode below
)


# 55000: a wrong wal_level, a physical slot used for logical decoding, ...: permanent, except on a
# read-only node (recognised by its message, above).
_NOT_IN_PREREQUISITE_STATE = "55000"


def on_read_only_node(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is a read-only node (in recovery): a failover in progress."""
    text = str(exc)
    return any(marker in text for marker in _READ_ONLY_NODE)


# PostgreSQL changes a catalog row (an ACL in pg_class, pg_namespace, pg_database, pg_default_acl, a
# publication's options) without re-checking it: a statement that waited for another session's change of
# the same row fails with XX000 once that session commits. Likewise CREATE ... IF NOT EXISTS that waited for
# another session's creation of the same name fails on the catalog's unique index (23505 in pg_catalog).
# Either way the row is then settled, and trying again works.
_CONCURRENT_CATALOG_UPDATE = ("tuple concurrently updated", "tuple concurrently deleted")
_INTERNAL_ERROR = "XX000"
_UNIQUE_VIOLATION = "23505"


def concurrent_catalog_change(exc: BaseException) -> bool:
    """Whether ``exc`` is a race with another session on a catalog row ("tuple concurrently updated", or
    a duplicate in a catalog's unique index)."""
    state = getattr(exc, "sqlstate", None)
    if state == _INTERNAL_ERROR:
        text = str(exc)
        return any(marker in text for marker in _CONCURRENT_CATALOG_UPDATE)
    if state == _UNIQUE_VIOLATION and isinstance(exc, psycopg.Error):
        return exc.diag.schema_name == "pg_catalog"
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away by itself (network, restart, a concurrent session's change), so
    that retrying makes sense. Deadlocks (40P01) and serialization failures (40001) are psycopg
    ``OperationalError``s: transient by rule 2."""
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    if on_read_only_node(exc) or concurrent_catalog_change(exc):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith(_PERMANENT_SQLSTATE_PREFIXES) or state == _NOT_IN_PREREQUISITE_STATE:
        return False
    return permanent_connect_failure(exc) is None


def may_recover_later(exc: BaseException) -> bool:
    """Whether starting over later (new connections, a new snapshot) may succeed."""
    return is_transient(exc) or bool(getattr(exc, "recoverable", False))


@dataclass
class Streak:
    """Failures in a row. A caller that made progress since the last failure calls ``reset()``,
    so a long-lived loop (a stream that runs for days) gets its full budget for each outage."""

    failures: int = 0

    def reset(self) -> None:
        self.failures = 0


class Stopped(Exception):
    """Raised by a ``sleep`` that was cut short (a stop was requested while waiting to retry)."""


def retrying(
    attempts: int | None,
    wait_s: float,
    what: str | Callable[[], str],
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    streak: Streak | None = None,
    before_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_wait_s: float | None = None,
) -> tenacity.Retrying:
    """Retry ``what`` while ``retry_if`` says the failure is transient: ``attempts`` attempts in
    all (None: no limit), ``wait_s`` apart. The last failure is re-raised as it is.

    ``max_wait_s``: back off instead: a random wait up to ``wait_s`` doubled after each failure,
    at most ``max_wait_s``. Sessions that conflicted once (a deadlock between two of them) would
    collide again if they retried in step; the jitter takes them apart.

    ``streak``: count failures in a row there (the caller resets it on progress) instead of
    attempts since the start. ``before_retry``: cleanup before waiting (e.g. close connections).
    ``sleep``: how to wait; may raise ``Stopped`` to end the retrying. ``what`` names the
    operation in the log (a callable: named when it fails).
    """
    counter = streak if streak is not None else Streak()

    def stop(state: tenacity.RetryCallState) -> bool:
        counter.failures += 1
        return attempts is not None and counter.failures >= attempts

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        assert exc is not None
        if before_retry is not None:
            before_retry(exc)
        limit = f" of {attempts}" if attempts is not None else ""
        wait = state.next_action.sleep if state.next_action is not None else wait_s
        log.warning(
            "%s failed, trying again in %.2f s (attempt %d%s): %s",
            what() if callable(what) else what, wait, counter.failures, limit, first_line(exc),
        )  # fmt: skip

    waits: tenacity.wait.wait_base = tenacity.wait_fixed(wait_s)
    if max_wait_s is not None:
        waits = tenacity.wait_random_exponential(multiplier=wait_s, max=max_wait_s)
    return tenacity.Retrying(
        stop=stop,
        wait=waits,
        retry=tenacity.retry_if_exception(retry_if),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


def first_line(exc: BaseException | None) -> str:
    """An error in a few words: libpq prefixes every connection attempt with "connection failed:
    connection to server at ... failed:"; the server's own words say what is wrong."""
    text = str(exc or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(exc).__name__
