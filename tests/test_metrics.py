"""Prometheus metrics scraped over HTTP from real runs; a busy port refused at start."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicator.destinations.base import Watermark
from replicator.localpg import free_port
from replicator.metrics import watermark_number
from tests.conftest import Database
from tests.support import run_cli, spawn_cli, write

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def eventually(port: int, check: Callable[[Samples], bool], what: str, timeout: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout
    last: Samples = {}
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
        except OSError:
            last = {}
        if last and check(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last scrape: {sorted(last.items())[:80]}")


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _drop_slot(db: Database, slot: str) -> None:
    with db.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s "
                     "AND active", (slot,))  # fmt: skip
        for _ in range(50):
            if conn.execute("SELECT NOT active FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone() in (None, (True,)):  # fmt: skip
                break
            time.sleep(0.1)
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )


def test_a_full_run_is_scraped_while_it_snapshots_and_streams(
    source_db: Database, dest_db: Database, tmp_path: Path, running: list[subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    slot = f"slot_{source_db.name}"
    source_db.execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, v text); "
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5000) g"
    )
    source = source_db.write_config(
        tmp_path / "source.yaml", **{"replication-slots": {slot: ["pgoutput"]}, "publication": f"{slot}_pub",
                                     "retry-wait-duration-ms": 200},
    )  # fmt: skip
    dest = dest_db.write_config(tmp_path / "destination.yaml")
    port = free_port()
    extractor = write(tmp_path / "extractor.yaml", f"""
snapshot:
  min-job-size-rows: 1000
realtime:
  fetch-duration-per-extractor-slot-s: 0.2
  heartbeat:
    enable: false
metrics:
  port: {port}
""")
    proc = spawn_cli("run", "full", "--no-progress", "--source", source, "--destination", dest,
                     "--extractor", extractor)  # fmt: skip
    running.append(proc)
    table, slot_label = {"table": "public.items"}, {"slot": slot}
    try:
        # The snapshot's figures stay in the run's registry while it streams.
        first = eventually(
            port, lambda s: value(s, "replicator_snapshot_table_done", **table) == 1
            and value(s, "replicator_slot_apply_lag_seconds", **slot_label) is not None,
            "the snapshot to finish and the slot to stream",
        )  # fmt: skip
        assert value(first, "replicator_snapshot_rows_total", **table) == 5000
        assert (value(first, "replicator_snapshot_bytes_total", **table) or 0) > 5000
        chunks = value(first, "replicator_snapshot_chunks", **table)
        assert chunks is not None and chunks >= 2
        assert value(first, "replicator_snapshot_chunks_done", **table) == chunks
        for name in (
            "replicator_slot_apply_lag_bytes", "replicator_slot_retained_wal_bytes",
            "replicator_slot_changes_total", "replicator_slot_transactions_total",
            "replicator_slot_destination_commits_total", "replicator_slot_reconnects_total",
        ):  # fmt: skip
            assert value(first, name, **slot_label) is not None, name
        assert value(first, "process_resident_memory_bytes") is not None

        # Changes move the counters.
        before = eventually(port, lambda s: value(s, "replicator_slot_apply_lag_seconds", **slot_label) == 0,
                            "the stream to be caught up")  # fmt: skip
        with source_db.connect() as conn:
            for i in range(10):
                conn.execute("INSERT INTO items SELECT g, 'new' FROM generate_series(%s::int, %s::int) g",
                             (10_000 + 3 * i, 10_002 + 3 * i))  # fmt: skip
        after = eventually(
            port, lambda s: (value(s, "replicator_slot_changes_total", **slot_label) or 0)
            >= (value(before, "replicator_slot_changes_total", **slot_label) or 0) + 30
            and value(s, "replicator_slot_apply_lag_seconds", **slot_label) == 0,
            "30 changes applied",
        )  # fmt: skip
        assert dest_db.fetchone("SELECT count(*) FROM items") == 5030
        for name in ("replicator_slot_transactions_total", "replicator_slot_destination_commits_total",
                     "replicator_slot_last_commit_timestamp_seconds",
                     "replicator_slot_applied_through_timestamp_seconds"):  # fmt: skip
            assert (value(after, name, **slot_label) or 0) > (value(before, name, **slot_label) or 0), name
        assert (value(after, "replicator_slot_transactions_total", **slot_label) or 0) >= (
            value(before, "replicator_slot_transactions_total", **slot_label) or 0) + 10

        # A destination that cannot apply: the lag grows, a second per second, in time and bytes.
        with dest_db.connect() as blocker:
            blocker.execute("BEGIN")
            blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            source_db.execute("INSERT INTO items VALUES (20000, 'blocked')")
            committed_at = time.time()
            stuck = eventually(port, lambda s: (value(s, "replicator_slot_apply_lag_seconds", **slot_label)
                                                or 0) >= 1.0, "the lag to grow")  # fmt: skip
            time.sleep(1.5)
            later = scrape(port)
            lag_then = value(stuck, "replicator_slot_apply_lag_seconds", **slot_label) or 0
            lag_now = value(later, "replicator_slot_apply_lag_seconds", **slot_label) or 0
            assert lag_now >= lag_then + 1.2
            assert lag_now <= time.time() - committed_at + 1.0  # at most since the blocked commit (+ slack)
            assert (value(later, "replicator_slot_apply_lag_bytes", **slot_label) or 0) > 0
            blocker.execute("ROLLBACK")
        eventually(port, lambda s: value(s, "replicator_slot_apply_lag_seconds", **slot_label) == 0,
                   "the lag to fall back to 0")  # fmt: skip

        # A lost replication connection: the stream resumes, and says so.
        source_db.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        eventually(port, lambda s: (value(s, "replicator_slot_reconnects_total", **slot_label) or 0) >= 1,
                   "a reconnect to be counted")  # fmt: skip
        source_db.execute("INSERT INTO items VALUES (20001, 'after the reconnect')")
        eventually(port, lambda s: value(s, "replicator_slot_apply_lag_seconds", **slot_label) == 0
                   and dest_db.fetchone("SELECT count(*) FROM items") == 5032, "the stream to catch up again")

        code, err = stop(proc)
        assert code == 0, err
        assert f"serving Prometheus metrics at http://127.0.0.1:{port}/metrics" in err

        # status computes the lag with the same definition, from what the run recorded.
        capsys.readouterr()
        assert run_cli("status", "--destination", dest, "--source", source) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if f"slot {slot}" in x)
        assert re.search(r"apply lag [\d.,]+ s, ", line), line
        source_db.execute("INSERT INTO items VALUES (20002, 'nobody streams this')")
        time.sleep(2.0)
        assert run_cli("status", "--destination", dest, "--source", source) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if f"slot {slot}" in x)
        found = re.search(r"apply lag ([\d.,]+) s, ", line)
        assert found and float(found.group(1).replace(",", "")) >= 2.0, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _drop_slot(source_db, slot)


def test_delta_passes_are_scraped_with_their_durations_rows_and_watermarks(
    source_db: Database, dest_db: Database, tmp_path: Path, running: list[subprocess.Popen[str]]
) -> None:
    source_db.execute(
        "CREATE TABLE accounts (id integer PRIMARY KEY, balance integer); "
        "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 300) g"
    )
    source = source_db.write_config(tmp_path / "source.yaml")
    dest = dest_db.write_config(tmp_path / "destination.yaml")
    port = free_port()
    extractor = write(tmp_path / "extractor.yaml", "delta-snapshot:\n  interval-s: 0.3\n")
    proc = spawn_cli("run", "delta-snapshot", "--no-progress", "--source", source, "--destination", dest,
                     "--extractor", extractor, "--metrics-port", str(port))  # fmt: skip
    running.append(proc)
    table = {"table": "public.accounts"}
    first = eventually(port, lambda s: (value(s, "replicator_delta_pass_duration_seconds_count") or 0) >= 2,
                       "two passes")  # fmt: skip
    assert value(first, "replicator_snapshot_rows_total", **table) == 300  # the first pass's snapshot
    xmin = value(first, "replicator_delta_watermark", table="public.accounts", kind="xmin")
    assert xmin is not None and xmin > 0
    source_db.execute("UPDATE accounts SET balance = 1 WHERE id <= 40")
    source_db.execute("DELETE FROM accounts WHERE id > 290")
    later = eventually(
        port, lambda s: (value(s, "replicator_delta_rows_upserted_total", **table) or 0) >= 40
        and (value(s, "replicator_delta_rows_deleted_total", **table) or 0) >= 10,
        "the changes and deletes to be counted",
    )  # fmt: skip
    assert (value(later, "replicator_delta_watermark", table="public.accounts", kind="xmin") or 0) > xmin
    assert (value(later, "replicator_delta_last_pass_timestamp_seconds") or 0) > (
        value(first, "replicator_delta_last_pass_timestamp_seconds") or 0)
    assert (value(later, "replicator_delta_watermark_timestamp_seconds", **table) or 0) > time.time() - 60
    assert value(later, "replicator_delta_pass_failures_total") == 0
    assert value(later, "replicator_slot_changes_total", slot="x") is None  # no realtime figures here
    code, err = stop(proc)
    assert code == 0, err


def _listening() -> tuple[socket.socket, int]:
    busy = socket.create_server(("127.0.0.1", 0))
    return busy, busy.getsockname()[1]


def test_a_busy_port_is_refused_at_start_before_anything_is_written(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute("CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t VALUES (1)")
    source = source_db.write_config(tmp_path / "source.yaml")
    dest = dest_db.write_config(tmp_path / "destination.yaml")
    busy, port = _listening()
    with busy:
        assert run_cli("run", "snapshot", "--source", source, "--destination", dest,
                       "--metrics-port", str(port)) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert f"--metrics-port {port}: cannot serve metrics on 127.0.0.1:{port}: Address already in use" in (
            err
        )
        extractor = write(tmp_path / "x.yaml", f"snapshot:\n  threads: 2\nmetrics:\n  port: {port}\n")
        args = ("run", "snapshot", "--source", source, "--destination", dest, "--extractor", extractor)
        assert run_cli(*args) == 2
        err = capsys.readouterr().err
        assert f"{extractor}:4: metrics.port: cannot serve metrics on 127.0.0.1:{port}" in err
    assert dest_db.fetchone("SELECT count(*) FROM pg_namespace WHERE nspname = '_replicator'") == 0
    assert dest_db.fetchone("SELECT to_regclass('public.t')") is None


def test_metrics_settings_that_cannot_work_are_config_errors(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = source_db.write_config(tmp_path / "source.yaml")
    dest = dest_db.write_config(tmp_path / "destination.yaml")
    base = ["run", "snapshot", "--source", str(source), "--destination", str(dest)]
    extractor = write(tmp_path / "extractor.yaml", "metrics:\n  port: 70000\n")
    assert run_cli(*base, "--extractor", extractor) == 2
    assert f"{extractor}:2: metrics.port: " in capsys.readouterr().err
    assert run_cli(*base, "--metrics-host", "127.0.0.1") == 2
    assert "--metrics-host: needs a port too" in capsys.readouterr().err
    assert run_cli(*base, "--metrics-port", "0", "--metrics-host", "no-such-host.invalid") == 2
    assert "cannot serve metrics on no-such-host.invalid:0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(*base, "--metrics-port", "65536")
    assert "a port is a number from 0 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        (Watermark("xmin", {"xmin": "1234"}), 1234.0),
        (Watermark("update-key", {"columns": ["n"], "since": ["42.5"]}), 42.5),
        (Watermark("update-key", {"columns": ["t"], "since": ["2024-05-01 12:00:00+00"]}), 1714564800.0),
        (Watermark("update-key", {"columns": ["t"], "since": ["2024-05-01 12:00:00"]}), None),  # zone unknown
        (Watermark("update-key", {"columns": ["a", "b"], "since": ["1", "2"]}), None),
        (Watermark("update-key", {"columns": ["s"], "since": ["abc"]}), None),
        (Watermark("update-key", {"columns": ["s"], "since": None}), None),
    ],
)
def test_a_watermark_is_a_number_only_where_it_is_one(mark: Watermark, expected: Any) -> None:
    assert watermark_number(mark) == expected
