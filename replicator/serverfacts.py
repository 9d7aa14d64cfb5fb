"""What a PostgreSQL session can tell about the server and database it is connected to, and
whether two sessions share a server (see ``identity``, which uses it to refuse a destination
that is the source; a PostgreSQL destination answers through ``DestinationSession.compare_server``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg


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
