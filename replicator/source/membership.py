"""Is every streamed table still in its publication? Checked while streaming.

pgoutput streams what the publication names at the time of each change: a table someone drops
from it (``ALTER PUBLICATION ... DROP TABLE``, or ``SET TABLE`` without it) just stops sending
changes, and nothing says so. The realtime loop asks ``MembershipWatch.check_if_due`` every
heartbeat interval, and ``check`` at every (re)connection; a table that left stops the run with
its name and the fix.

Tables are followed by OID, so a renamed table is still itself. A table that no longer exists
was dropped (``DROP TABLE``): a schema change, not this error; it is handed to ``on_dropped``
(logged once here; schema-change handling can take it from there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """A streamed table and the publication that must carry it."""

    oid: int
    schema: str
    name: str
    publication: str

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


class LeftPublication(SourceError):
    """A streamed table is no longer in its publication: its changes stopped arriving."""

    transient = False


# Every relation a publication publishes, by OID (FOR ALL TABLES, TABLES IN SCHEMA and
# publish_via_partition_root included: the view resolves them), and our tables that still exist.
_QUERY = """
SELECT pt.pubname, c.oid
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
WHERE pt.pubname = ANY(%(pubs)s)
"""
_EXISTING = "SELECT oid FROM pg_catalog.pg_class WHERE oid = ANY(%(oids)s)"


class MembershipWatch:
    def __init__(
        self,
        members: Sequence[Member],
        interval_s: float,
        on_dropped: Callable[[list[Member]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.members = list(members)
        self.interval_s = interval_s
        self.clock = clock
        self.on_dropped = on_dropped or _log_dropped
        self._last: float | None = None
        self._dropped: set[int] = set()

    def check_if_due(self, conn: psycopg.Connection[Any]) -> None:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self.check(conn)

    def check(self, conn: psycopg.Connection[Any]) -> None:
        """Raise ``LeftPublication`` if a streamed table left its publication."""
        self._last = self.clock()
        if not self.members:
            return
        pubs = sorted({m.publication for m in self.members})
        published = {(pub, oid) for pub, oid in conn.execute(_QUERY, {"pubs": pubs}).fetchall()}
        gone = [m for m in self.members if (m.publication, m.oid) not in published]
        if not gone:
            return
        exists = {r[0] for r in conn.execute(_EXISTING, {"oids": [m.oid for m in gone]}).fetchall()}
        dropped = [m for m in gone if m.oid not in exists and m.oid not in self._dropped]
        if dropped:
            self._dropped.update(m.oid for m in dropped)
            self.on_dropped(dropped)
        left = [m for m in gone if m.oid in exists]
        if left:
            raise LeftPublication(_message(left))


def _message(left: list[Member]) -> str:
    names = ", ".join(f"{m.display} (publication {m.publication})" for m in left)
    fixes = " ".join(
        sql.SQL("ALTER PUBLICATION {} ADD TABLE {};")
        .format(sql.Identifier(m.publication), sql.Identifier(m.schema, m.name))
        .as_string(None)
        for m in left
    )
    return (
        f"no longer in the publication: {names}. Someone removed it (ALTER PUBLICATION), so its changes "
        f"stopped arriving. Either put it back ({fixes}) and copy it again, since changes made while it was "
        f"out were never streamed (`replicator run snapshot --fresh` with a filter naming only it, then "
        f"realtime again), or leave it out of the filter config to stop replicating it"
    )


def _log_dropped(dropped: list[Member]) -> None:
    for m in dropped:
        log.warning(
            "%s was dropped at the source (DROP TABLE): a schema change, left to schema-change handling; "
            "its destination table is kept as it is",
            m.display,
        )
