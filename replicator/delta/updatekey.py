"""update-key mode: find changed rows by a column the application bumps on every write.

A pass reads the rows whose update key is ``>=`` the stored bound (an index on the column
makes that a range scan instead of a full scan). The hard part is which bound is safe.

The problem. Values commit out of order: a transaction sets ``updated_at = now()`` = 10:00
but commits at 10:05, after a pass that saw rows up to 10:04. "The largest value seen" is
therefore not a safe bound, and no bound on a user column can be exact without knowing how
its values are assigned. The xmin snapshot does not help on its own either: a transaction
gets its ID at its first write, but ``now()`` is fixed when it *began*, possibly long before.

What the user guarantees. Every insert and update sets the update key (a ``DEFAULT`` plus a
``BEFORE UPDATE`` trigger, or the application), to a value assigned in increasing order of
time by the *source server*: ``now()``/``transaction_timestamp()`` (assigned when the
transaction begins), ``statement_timestamp()``, ``clock_timestamp()``, or ``nextval()`` of a
sequence with ``CACHE 1``. Not: application clocks (skew), sequences with a larger cache
(each session hands out its own block), values copied from elsewhere. Rows whose update key
is NULL are copied by the first pass only.

What we guarantee, given that: no committed change is missed, however long the transaction
that made it stayed open. How:

1. Before the pass's snapshot, each update-key table's current maxima are read, together with
   the source clock just after the statement's snapshot: a *reading* (at, maxima). Every
   value assigned after ``at`` is larger than ``maxima`` (assigned before it).
2. Then the *horizon*: the start of the oldest transaction open in the source database
   (``pg_stat_activity.xact_start``; the clock if none is open). Every transaction that can
   still commit after the pass's snapshot started at or after the horizon, so assigned its
   values after it.
3. The new bound is the maxima of the latest reading (kept from earlier passes, or this one)
   taken before the horizon: every value still to commit is at least that. Readings newer
   than the horizon are kept for later passes; with no transaction open, this pass's own
   reading is used, so the bound trails the data by a single pass's snapshot.

A long transaction thus holds the bound back (later passes re-read what was committed since
it began, which is harmless: rows are upserted by key) and its rows arrive once it commits.
Limits: seeing other roles' ``xact_start`` needs ``pg_read_all_stats`` (or ``pg_monitor``,
which includes it); without it their open transactions are invisible to step 2 and a warning
says so.
While a prepared (two-phase) transaction exists the bound does not advance (its start time
is unknown). The clocks compared are all the source server's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Column
from replicator.filters import SelectedTable
from replicator.snapshot.plan import relation_sql
from replicator.typemap import without_typmod

log = logging.getLogger(__name__)

TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
    }
)
MAX_READINGS = 50  # readings waiting for long transactions; dropping the oldest is only more conservative


def usable_type(col: Column) -> bool:
    return without_typmod(col.type_sql) in TYPES


# The latest value a clock-assigned update key can hold when read, per type, from the source's
# clock: beyond it a value was not assigned by the clock (an explicit 2030), and following it
# would make every later pass skip the changes made until then. `timestamp` and `date` hold local
# times of whatever TimeZone the writing session had (UTC-12 to UTC+14).
FUTURE_TOLERANCE = "5 minutes"
_LATEST = {
    "timestamp with time zone": "clock_timestamp() + interval '{tol}'",
    "timestamp without time zone": "(clock_timestamp() AT TIME ZONE 'UTC') + interval '14 hours' + interval '{tol}'",
    "date": "(clock_timestamp() AT TIME ZONE 'UTC')::date + 1",
}
# What such a column's bound is held at instead: no later than any session's clock now, so every
# change made from now on is at or past it (the rows in the future are read again each pass).
_NOW = {
    "timestamp with time zone": "clock_timestamp()",
    "timestamp without time zone": "(clock_timestamp() AT TIME ZONE 'UTC') - interval '12 hours'",
    "date": "(clock_timestamp() AT TIME ZONE 'UTC')::date - 1",
}


@dataclass(frozen=True)
class Reading:
    """The update key's maxima (text, None when no value) and a source time no earlier than their snapshot."""

    at: datetime
    maxima: tuple[str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "max": list(self.maxima)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Reading:
        return cls(datetime.fromisoformat(value["at"]), tuple(value["max"]))


@dataclass(frozen=True)
class Horizon:
    """No transaction that may still commit started before ``oldest_start`` (None: unknown)."""

    oldest_start: datetime | None
    hidden_sessions: int = 0
    prepared: int = 0


def read_maxima(conn: psycopg.Connection[Any], st: SelectedTable) -> Reading:
    """Step 1. ``conn`` is in autocommit mode: the statement's own snapshot is the one that counts.

    A date or timestamp maximum past the source's clock (plus a tolerance) is not taken: the
    reading holds that column at "now" instead, with a warning (see ``_LATEST``).
    """
    columns: list[sql.Composable] = []
    for name in st.update_key:
        col = st.table.column(name)
        assert col is not None
        kind = without_typmod(col.type_sql)
        ident = sql.Identifier(name)
        if kind in _LATEST:
            latest = sql.SQL(_LATEST[kind].format(tol=FUTURE_TOLERANCE))
            columns.append(sql.SQL("CASE WHEN max({c}) > {latest} THEN ({now})::{t}::text ELSE max({c})::text END, "
                                   "CASE WHEN max({c}) > {latest} THEN max({c})::text END").format(
                c=ident, latest=latest, now=sql.SQL(_NOW[kind]), t=sql.SQL(col.type_sql)))
        else:
            columns.append(sql.SQL("max({})::text, NULL").format(ident))
    # clock_timestamp() runs during execution, after the statement took its snapshot.
    query = sql.SQL("SELECT clock_timestamp(), {} FROM {}").format(
        sql.SQL(", ").join(columns), relation_sql(st)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    values = row[1:]
    maxima = tuple(values[0::2])
    for name, future in zip(st.update_key, values[1::2], strict=True):
        if future is not None:
            log.warning(
                "%s: update-key %s holds values in the future (up to %s; the source's clock says %s): the "
                "watermark does not follow them, or every change made until then would be skipped; those rows "
                "are read again by every pass until their %s is corrected",
                st.display, name, future, row[0], name,
            )
    return Reading(row[0], maxima)


_ACTIVITY = """
SELECT min(xact_start) FILTER (WHERE state IS NOT NULL),
       count(*) FILTER (WHERE state IS NULL AND usesysid IS NOT NULL),
       (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type IS DISTINCT FROM 'autovacuum worker' AND backend_type IS DISTINCT FROM 'walsender'
"""


def read_horizon(conn: psycopg.Connection[Any]) -> Horizon:
    """Step 2, after every reading of the pass and before its snapshot (``conn`` in autocommit)."""
    # The clock first, in its own statement: a transaction missing from the activity list
    # below began after the list was taken, so after this instant.
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    now: datetime = row[0]
    found = conn.execute(_ACTIVITY).fetchone()
    assert found is not None
    oldest, hidden, prepared = found[0], int(found[1]), int(found[2])
    start = now if oldest is None else min(now, oldest)
    return Horizon(None if prepared else start, hidden, prepared)


def next_value(
    columns: tuple[str, ...], previous: dict[str, Any] | None, reading: Reading, horizon: Horizon
) -> dict[str, Any]:
    """Step 3: the watermark to store after a pass that read in the snapshot following ``horizon``.

    ``since`` holds the per-column lower bounds for the next pass (a column's None: any
    value; ``since`` None: every row); ``readings`` the readings not yet usable.
    """
    same = previous is not None and tuple(previous.get("columns", ())) == columns
    bound = previous.get("since") if same and previous else None
    waiting = [Reading.from_json(r) for r in previous.get("readings", [])] if same and previous else []
    waiting.append(reading)
    if horizon.oldest_start is not None:
        # Strictly before: a transaction that began in the same microsecond is not after it.
        usable = [r for r in waiting if r.at < horizon.oldest_start]
        if usable:
            bound = list(usable[-1].maxima)
            waiting = [r for r in waiting if r.at >= horizon.oldest_start]
    return {
        "columns": list(columns),
        "since": bound,
        "readings": [r.to_json() for r in waiting[-MAX_READINGS:]],
    }


def bound(value: dict[str, Any], columns: tuple[str, ...]) -> list[str | None] | None:
    """The stored lower bounds if they are for these columns, else None (read every row)."""
    if tuple(value.get("columns", ())) != columns:
        return None
    since = value.get("since")
    return list(since) if since is not None else None


def predicate(st: SelectedTable, since: list[str | None]) -> sql.Composable:
    """Rows where some update-key column is at or past its bound (or non-NULL, if it has none)."""
    parts = []
    for name, lower in zip(st.update_key, since, strict=True):
        col = st.table.column(name)
        assert col is not None
        ident = sql.Identifier(name)
        if lower is None:
            parts.append(sql.SQL("{} IS NOT NULL").format(ident))
        else:
            parts.append(sql.SQL("{} >= {}::{}").format(ident, sql.Literal(lower), sql.SQL(col.type_sql)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(parts))
