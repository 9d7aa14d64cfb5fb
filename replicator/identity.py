"""Is the destination the source? Decided by what the servers are, never by how their hosts are spelled.

A run whose destination is its own source empties the tables it reads (a snapshot truncates
the destination table first) and exits 0. ``localhost`` and ``127.0.0.1``, a host name and its
address, a second port forwarded to the same server, a Unix socket: all spell one server, so
comparing the configs cannot tell. The servers can:

- **Seen from inside.** The source connection carries a one-off ``application_name``; if the
  destination's ``pg_stat_activity`` lists a session with that name and the source session's
  own process id, the destination *is* that server. ``pid`` and ``application_name`` are shown
  to every role, so no extra privilege is needed. The session's database OID then says whether
  it is the same database (another database on the same server is a legitimate destination).
- **Failing that**, the same ``system_identifier`` *and* the same ``pg_postmaster_start_time()``
  (to the microsecond) mean the same running server. The system identifier alone does not:
  a destination restored from a physical copy of the source shares it (a common migration).

The same identity names the replication in the destination's state (``Job.job_id``): the
source's system identifier and database name, so that neither a re-spelt host nor a tunnel
through ``127.0.0.1:<ephemeral port>`` changes which checkpoints a run finds (or which job
lock it takes). Progress recorded under the old key (``host:port/database`` as spelt in the
config) is adopted on the first run that finds it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from replicator import state
from replicator.config import ConfigFile, ConnectionConfig
from replicator.connect import connect, describe
from replicator.errors import ConfigError
from replicator.job import Job

log = logging.getLogger(__name__)

APP = "replicator/identity"


class SameDatabaseError(ConfigError):
    """Source and destination are one database: any run would write into what it reads (exit 2)."""


@dataclass(frozen=True)
class ServerFacts:
    """What one session learns about the server and database it is connected to."""

    pid: int
    database_oid: int
    database: str
    started: datetime
    system_identifier: str | None  # None when pg_control_system() is not ours to call


def server_facts(conn: psycopg.Connection[Any]) -> ServerFacts:
    row = conn.execute(
        """SELECT pg_backend_pid(), d.oid, d.datname, pg_postmaster_start_time()
           FROM pg_database d WHERE d.datname = current_database()"""
    ).fetchone()
    assert row is not None
    return ServerFacts(int(row[0]), int(row[1]), str(row[2]), row[3], _system_identifier(conn))


def _system_identifier(conn: psycopg.Connection[Any]) -> str | None:
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.Error:
        # Some managed services revoke it; identity then rests on the other facts.
        return None
    return str(row[0]) if row and row[0] is not None else None


@dataclass(frozen=True)
class Verdict:
    same_server: bool
    same_database: bool
    how: str  # how it was decided, for the message


def compare(
    source_facts: ServerFacts, token: str, destination: psycopg.Connection[Any]
) -> Verdict:
    """Whether ``destination`` is connected to the server (and database) of the session ``source_facts``.

    The source session must still be open and carry ``token`` as its application_name.
    """
    dst = server_facts(destination)
    row = destination.execute(
        "SELECT datid FROM pg_stat_activity WHERE pid = %s AND application_name = %s",
        (source_facts.pid, token),
    ).fetchone()
    if row is not None:
        same_db = row[0] is not None and int(row[0]) == dst.database_oid
        return Verdict(True, same_db, "the destination server lists the source's own session")
    known = source_facts.system_identifier is not None and dst.system_identifier is not None
    same_server = source_facts.started == dst.started and (
        source_facts.system_identifier == dst.system_identifier if known else True
    )
    if same_server:
        return Verdict(
            True,
            source_facts.database_oid == dst.database_oid,
            "both servers report the same system identifier and start time",
        )
    return Verdict(False, False, "")


def verify_distinct(
    source: ConfigFile[ConnectionConfig], destination: ConfigFile[ConnectionConfig]
) -> ServerFacts:
    """Refuse (``SameDatabaseError``, exit 2) when both configs reach one database; else the source's facts."""
    token = f"{APP}-{uuid.uuid4().hex[:12]}"
    with connect(source.value, "source", token, autocommit=True) as src:
        facts = server_facts(src)
        with connect(destination.value, "destination", APP, autocommit=True) as dst:
            verdict = compare(facts, token, dst)
    if verdict.same_database:
        raise SameDatabaseError(
            f"{source.where('host')} and {destination.where('host')}: source {describe(source.value)} and "
            f"destination {describe(destination.value)} are the same database ('{facts.database}' on one "
            f"server: {verdict.how}); a run would write into the tables it reads and empty them. "
            f"Point the destination at another database (another database on the same server is fine)"
        )
    if verdict.same_server:
        log.info(
            "source and destination are different databases on the same server (%s and %s)",
            facts.database, destination.value.database,
        )
    return facts


def source_key(facts: ServerFacts) -> str | None:
    """The replication's name in the destination's state, from what the source is; None if unknown."""
    if facts.system_identifier is None:
        return None
    return f"{facts.system_identifier}/{facts.database}"


def identify(job: Job) -> Job:
    """The job checked (source is not destination) and named by the source's identity.

    Checkpoints recorded under the old name (``host:port/database`` as spelt in the config)
    are carried over to the new one, so an upgrade never silently starts a replication over.
    """
    facts = verify_distinct(job.source, job.destination)
    key = source_key(facts)
    if key is None:
        log.info(
            "the source's system identifier is not readable (pg_control_system()); progress is recorded "
            "under %s, as spelt in the config", job.legacy_job_id,
        )
        return job
    named = dataclasses.replace(job, source_key=key)
    _adopt_legacy_progress(named)
    return named


def _adopt_legacy_progress(job: Job) -> None:
    old, new = job.legacy_job_id, job.job_id
    with connect(job.destination.value, "destination", APP, autocommit=True) as dst:
        if dst.execute("SELECT to_regclass('_replicator.meta')").fetchone() == (None,):
            return
        moved = state.rename_job(dst, old, new)
    if moved:
        log.info("progress recorded under %s is now kept under the source's identity %s", old, new)
