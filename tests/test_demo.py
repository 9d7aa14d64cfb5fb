"""The README's first command runs `replicator demo`: keep it working."""

from __future__ import annotations

import pytest

from replicator.cli import main


def test_demo_snapshots_streams_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "2000", "--seconds", "3"]) == 0
    out = capsys.readouterr().out
    assert "snapshot complete: 6 table(s) copied" in out
    assert "now the shop gets busy" in out and "source transactions" in out
    assert "realtime stopped:" in out
    assert out.count("identical") == 6
    assert "demo: destination matches source, row for row" in out
