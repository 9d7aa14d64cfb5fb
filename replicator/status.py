"""``replicator status``: what the destination's replication state says, and the slots' lag."""

from __future__ import annotations

from datetime import timedelta

from replicator.config import ConfigFile, ConnectionConfig
from replicator.connect import connect
from replicator.delta.changes import describe_watermark
from replicator.destinations import open_destination
from replicator.destinations.base import StateStore
from replicator.lag import SourceSlot, apply_lag, read_source_slots
from replicator.lag import size as _size

APP = "replicator/status"


def render_status(
    destination: ConfigFile[ConnectionConfig], source: ConfigFile[ConnectionConfig] | None
) -> str:
    with open_destination(destination.value).open_session(APP) as dst:
        if not dst.state.present():
            return "no replication state in this destination yet (schema _replicator is absent)"
        state = dst.state
        lines = _snapshot(state) + _slots(state, source) + _schema_changes(state) + _delta(state)
    return "\n".join(lines) if lines else "the _replicator schema exists but holds no progress yet"


def _snapshot(state: StateStore) -> list[str]:
    rows = state.snapshot_progress()
    if not rows:
        return []
    out = ["snapshot:"]
    for r in rows:
        when = f", finished {r.finished_at:%Y-%m-%d %H:%M:%S}" if r.finished_at else ""
        out.append(
            f"  {r.job}  {r.table:<40} {r.status:<8} {r.chunks_done}/{r.chunks} chunks, {r.rows:,} rows{when}"
        )
    return out


def _slots(state: StateStore, source: ConfigFile[ConnectionConfig] | None) -> list[str]:
    rows = state.slot_progress()
    if not rows:
        return []
    live: dict[str, SourceSlot] = {}
    if source is not None:
        with connect(source.value, "source", APP, autocommit=True) as src:
            live = read_source_slots(src)
    out = ["realtime:"]
    for r in rows:
        line = f"  {r.job}  slot {r.slot:<24} checkpoint {r.lsn} ({_age(r.age)} ago)"
        at = live.get(r.slot)
        if at is not None:
            # The same definition as the running pipeline's metrics (replicator.lag).
            lag = apply_lag(
                source_lsn=at.source_lsn, applied_lsn=r.lsn, applied_through=r.applied_through, now=at.now
            )
            retained = "unknown" if at.retained_bytes is None else _size(at.retained_bytes)
            line += (f"; apply lag {lag.describe()}; at the source: {'streaming' if at.active else 'idle'}, "
                     f"confirmed {at.confirmed}, retaining {retained} of WAL ({at.wal_status})")  # fmt: skip
        elif source is not None:
            line += "; at the source: NO SUCH SLOT"
        out.append(line)
    return out


def _schema_changes(state: StateStore, limit: int = 50) -> list[str]:
    """The schema changes applied while streaming, with where each is in the source's WAL."""
    rows = state.schema_change_log(limit)
    if not rows:
        return []
    out = [f"schema changes applied (the last {limit}):" if len(rows) == limit else "schema changes applied:"]
    for r in rows:
        out.append(
            f"  {r.job}  slot {r.slot:<24} at {r.lsn}  {r.command:<14} {r.change} "
            f"({r.applied_at:%Y-%m-%d %H:%M:%S})"
        )
    return out


def _delta(state: StateStore) -> list[str]:
    rows = state.watermark_progress()
    if not rows:
        return []
    return ["delta-snapshot:"] + [
        f"  {r.job}  {r.table:<40} {r.mark.kind}: next pass reads {describe_watermark(r.mark)} "
        f"({_age(r.age)} ago)"
        for r in rows
    ]


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
