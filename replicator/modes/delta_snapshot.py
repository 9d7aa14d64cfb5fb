"""``replicator run delta-snapshot``: replication without replication slots, by scanning for changes.

The first pass of a table is a full snapshot; later passes move only the rows changed since
(by ``update-key`` or by ``xmin``) and, with ``replicate-deletes``, remove deleted ones.
Passes repeat every ``interval-s`` until SIGTERM/SIGINT; ``--once`` runs one pass.
"""

from __future__ import annotations

import logging

from replicator.delta.loop import run_passes
from replicator.delta.passes import PassSummary
from replicator.job import Job
from replicator.retry import first_line

log = logging.getLogger(__name__)


def run(job: Job) -> int:
    if job.destination.value.schema_changes.dropped_tables == "drop":
        # A pass sees a table that is gone, not that it was dropped (a filter edit, a rename to
        # a name outside the filter, a lost grant look the same): it never drops what it copied.
        log.warning(
            "%s: schema-changes: dropped-tables: drop applies to realtime streaming only; delta-snapshot "
            "keeps a destination table whose source table is gone (drop it yourself if it is not wanted)",
            job.destination.where("schema-changes", "dropped-tables"),
        )
    return run_passes(job, lambda summary: print(format_summary(summary), flush=True))


def format_summary(s: PassSummary) -> str:
    snapshotted = [r for r in s.results if r.snapshotted]
    head = f"delta-snapshot pass {s.number} complete in {s.seconds:.2f} s: {len(s.results)} table(s)"
    if snapshotted:
        head += f", {len(snapshotted)} snapshotted ({s.snapshot_rows:,} rows)"
    head += f"; {s.upserted:,} row(s) upserted, {s.deleted:,} deleted"
    if s.failed:
        head += f"; {len(s.failed)} table(s) FAILED: {', '.join(r.table for r in s.failed)}"
    lines = [head]
    for r in s.results:
        if r.error is not None:
            lines.append(f"  {r.table} ({r.kind}): FAILED: {first_line(r.error)}")
            continue
        parts = []
        if r.snapshotted:
            parts.append("snapshot")
        if not (r.snapshotted and not r.upserted and not r.deleted):
            parts.append(
                f"{r.upserted:,} upserted{' (read every row)' if r.full_read else ''}, {r.deleted:,} deleted"
            )
        lines.append(f"  {r.table} ({r.kind}): {'; '.join(parts)}")
    return "\n".join(lines)
