"""The one apply-lag definition (replicator.lag), shared by the metrics and ``status``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from replicator.lag import ApplyLag, apply_lag, size
from replicator.lsn import Lsn

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_caught_up_is_zero_seconds_whatever_the_age_of_the_last_transaction() -> None:
    lag = apply_lag(source_lsn=Lsn(5000), applied_lsn=Lsn(4000), applied_through=NOW - timedelta(hours=3),
                    now=NOW, caught_up=True)  # fmt: skip
    assert lag == ApplyLag(0.0, 1000)


def test_with_a_backlog_it_is_the_time_since_the_destination_last_held_everything() -> None:
    lag = apply_lag(source_lsn=Lsn(5000), applied_lsn=Lsn(4000), applied_through=NOW - timedelta(seconds=42),
                    now=NOW, caught_up=False)  # fmt: skip
    assert lag == ApplyLag(42.0, 1000)


def test_from_outside_no_bytes_behind_means_caught_up_and_any_means_a_backlog() -> None:
    old = NOW - timedelta(minutes=5)
    assert apply_lag(source_lsn=Lsn(4000), applied_lsn=Lsn(4000), applied_through=old, now=NOW).seconds == 0
    assert apply_lag(source_lsn=Lsn(4001), applied_lsn=Lsn(4000), applied_through=old, now=NOW).seconds == 300


def test_a_running_pipeline_that_knows_of_a_backlog_is_not_fooled_by_an_older_source_position() -> None:
    # The source position is sampled every few seconds; the pipeline's own knowledge wins.
    lag = apply_lag(source_lsn=Lsn(4000), applied_lsn=Lsn(4000), applied_through=NOW - timedelta(seconds=3),
                    now=NOW, caught_up=False)  # fmt: skip
    assert lag == ApplyLag(3.0, 0)


def test_unknown_when_behind_and_nothing_dates_the_destination() -> None:
    lag = apply_lag(source_lsn=Lsn(4001), applied_lsn=Lsn(4000), applied_through=None, now=NOW)
    assert lag.seconds is None and lag.describe() == "unknown, 1 bytes"


def test_never_negative() -> None:
    lag = apply_lag(source_lsn=Lsn(10), applied_lsn=Lsn(4000), applied_through=NOW + timedelta(seconds=1),
                    now=NOW, caught_up=False)  # fmt: skip
    assert lag == ApplyLag(0.0, 0)


def test_sizes_read_as_people_read_them() -> None:
    assert [size(n) for n in (0, 1023, 1024, 5 * 1024**2 + 1, 3 * 1024**3)] == [
        "0 bytes", "1023 bytes", "1.0 kB", "5.0 MB", "3.0 GB",
    ]
