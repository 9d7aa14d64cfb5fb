"""``replicator status``: what the destination's ``_replicator`` state says, and the slots' lag."""

from __future__ import annotations

from typing import Any

import psycopg

from replicator import state
from replicator.config import ConfigFile, ConnectionConfig
from replicator.connect import connect


def render_status(destination: ConfigFile[ConnectionConfig], source: ConfigFile[ConnectionConfig] | None) -> str:
    with connect(destination.value, "destination", "replicator/status", autocommit=True) as dst:
        if dst.execute("SELECT to_regclass('_replicator.meta')").fetchone() == (None,):
            return "no replication state in this destination yet (schema _replicator is absent)"
        lines = _snapshot(dst) + _slots(dst, source) + _delta(dst)
    return "\n".join(lines) if lines else "the _replicator schema exists but holds no progress yet"


def _snapshot(dst: psycopg.Connection[Any]) -> list[str]:
    rows = dst.execute(
        """SELECT t.job, t.schema_name || '.' || t.table_name, t.status, t.rows_copied,
                  count(c.done_at), count(c.chunk_no), t.finished_at
           FROM _replicator.snapshot_tables t
           LEFT JOIN _replicator.snapshot_chunks c USING (job, schema_name, table_name)
           GROUP BY 1, 2, 3, 4, 7 ORDER BY 1, 3 DESC, 2"""
    ).fetchall()
    if not rows:
        return []
    out = ["snapshot:"]
    for job, table, status, copied, done, total, finished in rows:
        when = f", finished {finished:%Y-%m-%d %H:%M:%S}" if finished else ""
        out.append(f"  {job}  {table:<40} {status:<8} {done}/{total} chunks, {copied:,} rows{when}")
    return out


def _slots(dst: psycopg.Connection[Any], source: ConfigFile[ConnectionConfig] | None) -> list[str]:
    rows = dst.execute(
        "SELECT job, slot_name, lsn::text, now() - updated_at FROM _replicator.slot_checkpoints ORDER BY 1, 2"
    ).fetchall()
    if not rows:
        return []
    live: dict[str, tuple[Any, ...]] = {}
    if source is not None:
        with connect(source.value, "source", "replicator/status", autocommit=True) as src:
            for r in src.execute(
                """SELECT slot_name, active, confirmed_flush_lsn::text,
                          pg_size_pretty(pg_current_wal_lsn() - restart_lsn), wal_status
                   FROM pg_replication_slots WHERE slot_type = 'logical'"""
            ).fetchall():
                live[r[0]] = r[1:]
    out = ["realtime:"]
    for job, slot, lsn, age in rows:
        line = f"  {job}  slot {slot:<24} checkpoint {lsn} ({_age(age)} ago)"
        if slot in live:
            active, confirmed, retained, wal_status = live[slot]
            line += (f"; at the source: {'streaming' if active else 'idle'}, confirmed {confirmed}, "
                     f"retaining {retained} of WAL ({wal_status})")
        elif source is not None:
            line += "; at the source: NO SUCH SLOT"
        out.append(line)
    return out


def _delta(dst: psycopg.Connection[Any]) -> list[str]:
    rows = dst.execute(
        """SELECT job, schema_name || '.' || table_name, kind, watermark, now() - updated_at
           FROM _replicator.delta_watermarks ORDER BY 1, 2"""
    ).fetchall()
    if not rows:
        return []
    return ["delta-snapshot:"] + [
        f"  {job}  {table:<40} {kind}: next pass reads {state.describe_watermark(kind, mark)} ({_age(age)} ago)"
        for job, table, kind, mark, age in rows
    ]


def _age(delta: Any) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
