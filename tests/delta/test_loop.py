"""Passes at an interval: changes keep arriving, a signal stops cleanly, one run at a time."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import Database
from tests.delta.conftest import DeltaSetup
from tests.support import run_cli, spawn_cli


def _wait_for(predicate, what: str, child, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class _PassCounter:
    """Counts passes by watching the watermark's ``updated_at`` change (every pass stores one)."""

    def __init__(self, db: Database):
        self.db, self.seen, self.last = db, 0, None

    def __call__(self) -> int:
        if self.db.fetchone("SELECT to_regclass('_replicator.delta_watermarks')") is not None:
            stamp = self.db.fetchone("SELECT max(updated_at) FROM _replicator.delta_watermarks")
            if stamp is not None and stamp != self.last:
                self.seen, self.last = self.seen + 1, stamp
        return self.seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_runs_until_signalled_and_stops_cleanly(delta: DeltaSetup, capsys: pytest.CaptureFixture[str], sig: int) -> None:
    delta.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    delta.extractor = "delta-snapshot:\n  interval-s: 0.3\n"
    child = spawn_cli(*delta.args())
    try:
        passes = _PassCounter(delta.dest)
        _wait_for(lambda: passes() >= 2, "two passes", child)
        delta.source.execute("INSERT INTO t VALUES (2, 'while running'); UPDATE t SET v = 'b' WHERE id = 1")
        _wait_for(lambda: delta.dest.fetchone("SELECT count(*) FROM t WHERE v IN ('b', 'while running')") == 2,
                  "the change to arrive", child)
        # Another run for the same source and destination is refused while this one runs.
        assert run_cli(*delta.args("--once")) == 1
        assert "another replicator run for source" in capsys.readouterr().err
        child.send_signal(sig)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert f"{signal.Signals(sig).name}: stopping after the pass under way" in err
    assert "stopped after pass" in err
    assert "delta-snapshot pass 2 complete" in out
    delta.assert_same("t")
