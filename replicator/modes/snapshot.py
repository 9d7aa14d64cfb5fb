"""``replicator run snapshot``: a parallel, resumable, point-in-time copy of the selected tables."""

from __future__ import annotations

from replicator.job import Job
from replicator.signals import stop_on_signals
from replicator.snapshot.runner import SnapshotSummary, run_snapshot


def run(job: Job) -> int:
    with stop_on_signals() as stop:
        summary = run_snapshot(job, stop=stop)
    print(format_summary(summary))
    return 0


def format_summary(s: SnapshotSummary) -> str:
    copied = s.tables - len(s.skipped)
    lines = [
        f"snapshot complete: {copied} table(s) copied"
        + (f", {len(s.skipped)} already done earlier" if s.skipped else "")
        + f"; {s.rows:,} rows, {s.bytes / 1e6:,.1f} MB in {s.seconds:.2f} s ({s.rows_per_s:,.0f} rows/s)"
    ]
    if s.keyless:
        lines.append(f"tables without a key (realtime and delta-snapshot need one): {', '.join(s.keyless)}")
    return "\n".join(lines)
