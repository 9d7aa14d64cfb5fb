"""Watch the WAL our slots hold back on the source (``log-monitoring`` in the connection config).

A slot keeps every WAL segment from its ``restart_lsn`` on. If the pipeline stalls, that grows
until the source's disk fills, which takes the source database down with it. So: warn at
``alert-threshold-percent`` of ``max-wal-size-gb``, and stop (SourceError) at the maximum, with
a message saying what to do, before the server is in danger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.config.connection import LogMonitoring
from replicator.errors import SourceError

log = logging.getLogger(__name__)

GB = 1024**3

# On a standby (a replica we decode from, PostgreSQL 16+) there is no current WAL insert position.
_QUERY = """
SELECT s.slot_name,
       pg_catalog.pg_wal_lsn_diff(
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END,
           s.restart_lsn)::int8
FROM pg_catalog.pg_replication_slots s
WHERE s.slot_name = ANY (%s)
ORDER BY s.slot_name
"""


@dataclass(frozen=True)
class Retention:
    slot: str
    retained_bytes: int | None  # None: the slot reserves no WAL yet (no restart_lsn)


class WalWatch:
    """Check retained WAL of ``slots`` at most every ``interval_s`` (``check_if_due``) or now (``check``)."""

    def __init__(
        self,
        monitoring: LogMonitoring | None,
        slots: Sequence[str],
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.monitoring = monitoring
        self.slots = list(slots)
        self.interval_s = interval_s
        self.clock = clock
        self._last_check: float | None = None
        self._alerting: set[str] = set()

    def check_if_due(self, conn: psycopg.Connection[Any]) -> list[Retention] | None:
        now = self.clock()
        if self._last_check is not None and now - self._last_check < self.interval_s:
            return None
        self._last_check = now
        return self.check(conn)

    def check(self, conn: psycopg.Connection[Any]) -> list[Retention]:
        """Measure; log a warning at the threshold; raise SourceError at the maximum."""
        found = [Retention(s, b) for s, b in conn.execute(_QUERY, (self.slots,)).fetchall()]
        if self.monitoring is None:
            return found
        limit = int(self.monitoring.max_wal_size_gb * GB)
        alert = limit * self.monitoring.alert_threshold_percent // 100
        for r in found:
            size = r.retained_bytes or 0
            if size >= limit:
                raise SourceError(
                    f"replication slot {r.slot!r} holds {_gb(size)} of WAL on the source, over "
                    f"log-monitoring.max-wal-size-gb ({self.monitoring.max_wal_size_gb:g} GB): stopping "
                    "before "
                    "the source's disk fills. Find why the pipeline falls behind (destination slow or "
                    "down?), then start again to catch up; if the changes are no longer wanted, drop the "
                    "slot and run the `full` mode again"
                )
            if size >= alert:
                if r.slot not in self._alerting:
                    self._alerting.add(r.slot)
                    log.warning(
                        "replication slot %s holds %s of WAL on the source: %d%% of the %g GB maximum "
                        "(log-monitoring.alert-threshold-percent is %d%%); the pipeline is falling behind",
                        r.slot,
                        _gb(size),
                        size * 100 // limit,
                        self.monitoring.max_wal_size_gb,
                        self.monitoring.alert_threshold_percent,
                    )
            elif r.slot in self._alerting:
                self._alerting.discard(r.slot)
                log.info("replication slot %s is back below the WAL alert threshold (%s)", r.slot, _gb(size))
        return found


def _gb(size: int) -> str:
    return f"{size / GB:.2f} GB"
