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
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from replicator.config import ConfigFile, ConnectionConfig
from replicator.connect import connect, describe
from replicator.destinations import open_destination
from replicator.errors import ConfigError
from replicator.job import Job
from replicator.serverfacts import ServerFacts, Verdict, compare, server_facts

if TYPE_CHECKING:
    from replicator.destinations.base import DestinationSession

__all__ = [
    "SameDatabaseError",
    "ServerFacts",
    "Verdict",
    "compare",
    "identify",
    "server_facts",
    "verify_distinct",
]

log = logging.getLogger(__name__)

APP = "replicator/identity"


class SameDatabaseError(ConfigError):
    """Source and destination are one database: any run would write into what it reads (exit 2)."""


def verify_distinct(
    source: ConfigFile[ConnectionConfig],
    destination: ConfigFile[ConnectionConfig],
    session: Callable[[], DestinationSession] | None = None,
) -> ServerFacts:
    """Refuse (``SameDatabaseError``, exit 2) when both configs reach one database; else the source's
    facts. ``session``: gives the caller's session of ``destination`` (else one is opened here); it
    is asked for once the source is reached, so an unreachable source is the error reported."""
    token = f"{APP}-{uuid.uuid4().hex[:12]}"
    with connect(source.value, "source", token, autocommit=True) as src:
        facts = server_facts(src)
        with _session(destination, session) as dst:
            verdict = dst.compare_server(facts, token)
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


def identify(job: Job, session: Callable[[], DestinationSession] | None = None) -> Job:
    """The job checked (source is not destination) and named by the source's identity.

    Checkpoints recorded under the old name (``host:port/database`` as spelt in the config)
    are carried over to the new one, so an upgrade never silently starts a replication over.
    ``session``: gives the caller's destination session (else one is opened for each step).
    """
    facts = verify_distinct(job.source, job.destination, session)
    key = source_key(facts)
    if key is None:
        log.info(
            "the source's system identifier is not readable (pg_control_system()); progress is recorded "
            "under %s, as spelt in the config", job.legacy_job_id,
        )
        return job
    named = dataclasses.replace(job, source_key=key)
    _adopt_legacy_progress(named, session)
    return named


def _session(
    destination: ConfigFile[ConnectionConfig], session: Callable[[], DestinationSession] | None
) -> AbstractContextManager[DestinationSession]:
    """The caller's session (its owner closes it), or a new session of ``destination``, closed after."""
    if session is not None:
        return nullcontext(session())
    return open_destination(destination.value).open_session(APP)


def _adopt_legacy_progress(job: Job, session: Callable[[], DestinationSession] | None) -> None:
    old, new = job.legacy_job_id, job.job_id
    with _session(job.destination, session) as dst:
        if not dst.state.present():
            return
        moved = dst.state.rename_job(old, new)
    if moved:
        log.info("progress recorded under %s is now kept under the source's identity %s", old, new)
