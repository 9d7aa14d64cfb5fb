"""``replicator run full``: a snapshot, then realtime from the snapshot's exact point.

For each slot that does not exist yet, the slot is created on a replication connection with
EXPORT_SNAPSHOT; the snapshot of that slot's tables runs inside the exported snapshot, and
streaming starts at the slot's consistent point: no gap, no overlap.

Started again after a crash, the slot exists and its exported snapshot is gone: the snapshot
resumes under a new snapshot (remaining chunks merge by key) and the stream replays from the
slot's position, upserting, so the destination converges on the source.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from replicator.connect import connect
from replicator.destinations import open_destination
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.modes.snapshot import format_summary
from replicator.realtime.runner import prepare, stream, summary
from replicator.realtime.setup import SlotPlan
from replicator.signals import stop_on_signals
from replicator.snapshot.runner import run_snapshot
from replicator.source.slots import SnapshotSlot, get_slot

log = logging.getLogger(__name__)


def run(job: Job) -> int:
    with stop_on_signals() as stop:
        return run_until(job, stop)


def run_until(job: Job, stop: threading.Event) -> int:
    """The full mode until ``stop`` is set (or, with ``job.once``, until caught up)."""
    def snapshot(plans: list[SlotPlan]) -> None:
        for plan in plans:
            tables = plan.table_keys
            with connect(job.source.value, "source", "replicator/full", autocommit=True) as conn:
                exists = get_slot(conn, plan.slot) is not None
            if exists:
                log.info("slot %s exists: resuming (or skipping) its tables' snapshot", plan.slot)
                print(format_summary(run_snapshot(job, only=tables, stop=stop)))
                continue
            with SnapshotSlot.create(job.source.value, plan.slot, plan.plugin) as created:
                # A new slot means a new starting point: earlier snapshot progress does not match it,
                # nor does a checkpoint of a slot of that name that was lost (positions.py). The
                # stream starts where the snapshot ends; recorded first, so a crash during the
                # snapshot finds the new slot at its checkpoint.
                _record_start(job, plan.slot, created.consistent_point)
                fresh = dataclasses.replace(job, fresh=True)
                print(format_summary(
                    run_snapshot(fresh, imported_snapshot=created.snapshot_name, only=tables, stop=stop)
                ))

    prepared = prepare(job, create_slots=False, before_destination=snapshot)
    stats = stream(job, prepared, stop)
    print(summary(stats))
    return 0


def _record_start(job: Job, slot: str, consistent_point: Lsn) -> None:
    with open_destination(job.destination.value).open_session("replicator/full") as dst:
        dst.state.ensure()
        with dst.transaction():
            dst.state.save_slot_checkpoint(job.job_id, slot, consistent_point)
