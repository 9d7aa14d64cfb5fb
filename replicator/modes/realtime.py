"""``replicator run realtime``: stream changes from the slots until stopped (or, with --once, caught up)."""

from __future__ import annotations

from replicator.job import Job
from replicator.realtime.runner import prepare, stream, summary
from replicator.signals import stop_on_signals


def run(job: Job) -> int:
    # Handlers first: a signal while preparing (publications, slots) stops cleanly once it is done.
    with stop_on_signals() as stop:
        prepared = prepare(job)
        stats = stream(job, prepared, stop)
    print(summary(stats))
    return 0
