"""How far a PostgreSQL destination's commits are durable (issue 9 item 12).

Realtime commits with ``synchronous_commit = off`` (session.py): a commit returns before its WAL
is flushed, so a destination crash can take the last commits with it. The source may only be
told what survives that, so every realtime commit asks, in the same round trip, where it is in
the destination's WAL (the insert position right after it: at or past its commit record) and
how far the WAL is flushed. A commit is durable once the flush position reaches its mark. This
is what PostgreSQL's own apply worker does (it keeps the local end of each remote commit and
confirms it once ``GetFlushRecPtr()`` passes it). The WAL writer flushes at least every
``wal_writer_delay`` (200 ms by default), so confirmations trail commits by about that much.
"""

from __future__ import annotations

from typing import Any

import psycopg

from replicator.destinations.base import CommitMark

# Both positions as plain integers (bytes since 0/0): compared, never shown.
POSITIONS = (
    "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8, "
    "(pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8"
)

# A transaction with a transaction id, committed synchronously: its commit flushes the WAL up to
# it, and so every commit before it.
_SYNC = "BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT; " + POSITIONS


def mark_of(cur: psycopg.Cursor[Any]) -> CommitMark:
    """The ``POSITIONS`` row of a statement list that ends with it."""
    while cur.nextset():
        pass
    row = cur.fetchone()
    assert row is not None
    return CommitMark(int(row[0]), int(row[1]))


def durability(conn: psycopg.Connection[Any]) -> CommitMark:
    return mark_of(conn.execute(POSITIONS))


def sync(conn: psycopg.Connection[Any]) -> int:
    """Flush the destination's WAL up to now (outside any transaction); the flush position."""
    return mark_of(conn.execute(_SYNC)).flushed
