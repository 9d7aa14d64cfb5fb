"""The runner's process-wide settings while streaming are put back afterwards (runs can share a process)."""

from __future__ import annotations

import gc

import pytest

from replicator.realtime.runner import _collector_for_streaming


def test_collector_settings_come_back_after_streaming_even_on_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _collector_for_streaming():
        assert gc.get_threshold()[0] > before[0] and gc.get_freeze_count() > 0
        raise RuntimeError("the stream failed")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
