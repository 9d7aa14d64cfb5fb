"""The runner's process-wide settings while streaming are put back afterwards (runs can share a process)."""

from __future__ import annotations

import gc
import signal
import time

import pytest

from replicator.realtime.runner import _collector_for_streaming
from tests.realtime.conftest import Env
from tests.support import spawn_cli


def test_collector_settings_come_back_after_streaming_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _collector_for_streaming():
        assert gc.get_threshold()[0] > before[0] and gc.get_freeze_count() > 0
        raise RuntimeError("the stream failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_sighup_stops_a_realtime_run_cleanly(pg_env: Env) -> None:
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
    child = spawn_cli(*pg_env.args("realtime"))
    try:
        deadline = time.monotonic() + 90
        while not pg_env.source.fetchone(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (pg_env.slot,)
        ):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        child.send_signal(signal.SIGHUP)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert "received SIGHUP" in err and "realtime stopped:" in out
