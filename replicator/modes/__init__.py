"""The replication modes. Each module exposes ``run(job) -> exit code``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from replicator.job import Job

MODES: dict[str, str] = {
    "snapshot": "replicator.modes.snapshot",
    "realtime": "replicator.modes.realtime",
    "delta-snapshot": "replicator.modes.delta_snapshot",
    "full": "replicator.modes.full",
}


def runner(mode: str) -> Callable[[Job], int]:
    module = importlib.import_module(MODES[mode])
    run: Callable[[Job], int] = module.run
    return run
