"""The README's first command runs `replicator demo`: keep it working."""

from __future__ import annotations

import pytest

from replicator.cli import main


def test_demo_copies_the_sample_data_and_checks_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "2000"]) == 0
    out = capsys.readouterr().out
    assert "snapshot complete: 6 table(s) copied" in out
    assert "demo: destination matches source" in out
    assert "order_items            4,000             4,000" in out
