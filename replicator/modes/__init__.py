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
    """The mode's ``run``, behind the checks every mode needs before its first write anywhere."""
    module = importlib.import_module(MODES[mode])

    def run(job: Job) -> int:
        from replicator.identity import identify

        # Refuses a destination that is the source (exit 2) and names the job by the source's identity.
        return module.run(identify(job))  # type: ignore[no-any-return]

    return run
