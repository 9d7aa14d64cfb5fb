"""``--read-only-source``: stop the writers at the source before the cutover.

``ALTER DATABASE ... SET default_transaction_read_only = on`` (the database owner may) makes
every *new* session read-only; sessions opened before keep writing, so they are listed, and
ended with ``--terminate``. replicator's own sessions are left alone: the stream's heartbeat
asks for a read-write transaction each time it beats. The exact command that undoes the
setting (what it was before, or RESET) is printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

SETTING = "default_transaction_read_only"


@dataclass(frozen=True)
class Writer:
    pid: int
    user: str
    application: str
    client: str
    writing: bool  # in a transaction that has written already

    def __str__(self) -> str:
        what = "writing now" if self.writing else "connected before"
        app = f" ({self.application})" if self.application else ""
        return f"pid {self.pid} {self.user}@{self.client}{app}, {what}"


def make_read_only(conn: psycopg.Connection[Any], before: str | None) -> str:
    """Make the connected database read-only for new sessions; the command that undoes it (in a
    read-write transaction: a new session is read-only by then), back to ``before`` (None: unset)."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    db = quoted(conn, conn.info.dbname)
    undo = (
        f"ALTER DATABASE {db} RESET default_transaction_read_only;"
        if before is None
        else f"ALTER DATABASE {db} SET default_transaction_read_only = {sql.Literal(before).as_string(conn)};"
    )
    return f"BEGIN READ WRITE; {undo} COMMIT;"


def quoted(conn: psycopg.Connection[Any], name: str) -> str:
    """``name`` quoted only where SQL needs it (as the server's ``quote_ident`` does)."""
    row = conn.execute("SELECT quote_ident(%s)", (name,)).fetchone()
    return str(row[0]) if row else name


def previous_setting(conn: psycopg.Connection[Any]) -> str | None:
    """The database's own value of the setting (for every role), if it has one."""
    row = conn.execute(
        """SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
           WHERE d.datname = current_database() AND s.setrole = 0"""
    ).fetchone()
    for item in row[0] if row and row[0] else []:
        name, _, value = item.partition("=")
        if name == SETTING:
            return str(value)
    return None


def owner_fix(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    owner = row[0] if row else "the database owner"
    return (
        f"ALTER DATABASE needs the database's owner ({owner}): run switchover as {owner}, or run "
        f"`ALTER DATABASE {quoted(conn, conn.info.dbname)} SET default_transaction_read_only = on;` "
        "yourself and switch over without --read-only-source"
    )


def writers(conn: psycopg.Connection[Any]) -> list[Writer]:
    """Sessions of this database that may still write: opened before it became read-only (every
    client session but this one and replicator's own, which are needed and write nothing else)."""
    rows = conn.execute(
        """SELECT pid, coalesce(usename, ''), coalesce(application_name, ''),
                  coalesce(host(client_addr), 'local'), backend_xid IS NOT NULL
           FROM pg_stat_activity
           WHERE datname = current_database() AND backend_type = 'client backend'
             AND pid <> pg_backend_pid() AND coalesce(application_name, '') NOT LIKE %s
           ORDER BY pid""",
        ("replicator/%",),
    ).fetchall()
    return [Writer(*r) for r in rows]


def terminate(conn: psycopg.Connection[Any], sessions: list[Writer]) -> list[Writer]:
    """End these sessions; those that could not be ended."""
    for w in sessions:
        conn.execute("SELECT pg_terminate_backend(%s)", (w.pid,))
    deadline = time.monotonic() + 5
    while True:
        alive = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity").fetchall()}
        left = [w for w in sessions if w.pid in alive]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
