"""WAL retention watch against a real server: warn at the threshold, stop at the maximum."""

from __future__ import annotations

import logging

import pytest

from replicator.config.connection import LogMonitoring
from replicator.errors import SourceError
from replicator.source.walwatch import GB, WalWatch
from tests.replication import Replication


def monitoring(max_bytes: float, percent: int) -> LogMonitoring:
    return LogMonitoring.model_validate(
        {"max-wal-size-gb": max_bytes / GB, "alert-threshold-percent": percent}
    )


def test_warns_at_threshold_and_stops_at_maximum(
    replication: Replication, caplog: pytest.LogCaptureFixture
) -> None:
    slot = replication.slot("pgoutput")
    replication.db.execute("CREATE TABLE filler AS SELECT i, md5(i::text) FROM generate_series(1, 20000) i")
    with replication.db.connect() as conn:
        [measured] = WalWatch(None, [slot, "not_a_slot"]).check(conn)
        held = measured.retained_bytes
        assert measured.slot == slot and held is not None and held > 1_000_000

        caplog.set_level(logging.INFO, logger="replicator.source.walwatch")
        quiet = WalWatch(monitoring(held * 4, 50), [slot])
        quiet.check(conn)
        ours = [r for r in caplog.records if r.name == "replicator.source.walwatch"]
        assert not ours

        watch = WalWatch(monitoring(held * 1.5, 50), [slot])  # held is 67% of the maximum
        watch.check(conn)
        watch.check(conn)
        warnings = [
            r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "replicator.source.walwatch"
        ]
        assert len(warnings) == 1  # once per crossing, not at every check
        assert f"replication slot {slot} holds" in warnings[0] and "of the" in warnings[0]

        with pytest.raises(SourceError, match=f"slot '{slot}' holds .* over log-monitoring.max-wal-size-gb"):
            WalWatch(monitoring(held * 0.9, 50), [slot]).check(conn)


def test_checks_only_when_due(replication: Replication) -> None:
    slot = replication.slot("pgoutput")
    now = [0.0]
    watch = WalWatch(None, [slot], interval_s=60, clock=lambda: now[0])
    with replication.db.connect() as conn:
        assert [r.slot for r in watch.check_if_due(conn) or []] == [slot]
        now[0] = 59
        assert watch.check_if_due(conn) is None
        now[0] = 61
        assert [r.slot for r in watch.check_if_due(conn) or []] == [slot]
