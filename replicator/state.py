"""Replication state held in the destination, schema ``_replicator``.

Every checkpoint is written in the same destination transaction as the rows it covers, so a
crash at any instant leaves state and data agreeing: what is marked done is there, once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import ReplicatorError

SCHEMA = "_replicator"
VERSION = 1

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS _replicator",
    """CREATE TABLE IF NOT EXISTS _replicator.meta (
        key text PRIMARY KEY,
        value text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _replicator.snapshot_tables (
        job text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        status text NOT NULL DEFAULT 'loading' CHECK (status IN ('loading', 'done')),
        created_by_us boolean NOT NULL,
        key_columns text[] NOT NULL DEFAULT '{}',
        key_built boolean NOT NULL DEFAULT false,
        chunk_count integer NOT NULL,
        rows_copied bigint NOT NULL DEFAULT 0,
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        PRIMARY KEY (job, schema_name, table_name))""",
    """CREATE TABLE IF NOT EXISTS _replicator.snapshot_chunks (
        job text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        chunk_no integer NOT NULL,
        source_schema text NOT NULL,
        source_table text NOT NULL,
        kind text NOT NULL CHECK (kind IN ('all', 'ctid', 'key')),
        lower_bound text,
        upper_bound text,
        run_id text,
        rows bigint,
        done_at timestamptz,
        PRIMARY KEY (job, schema_name, table_name, chunk_no))""",
    """CREATE TABLE IF NOT EXISTS _replicator.slot_checkpoints (
        job text NOT NULL,
        slot_name text NOT NULL,
        lsn pg_lsn NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (job, slot_name))""",
    """CREATE TABLE IF NOT EXISTS _replicator.delta_watermarks (
        job text NOT NULL,
        schema_name text NOT NULL,
        table_name text NOT NULL,
        kind text NOT NULL,
        watermark text,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (job, schema_name, table_name))""",
]


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the state tables if missing (idempotent, safe against concurrent runs)."""
    with conn.transaction():
        # Two runs starting at once would race on CREATE ... IF NOT EXISTS in the catalogs.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('_replicator.schema'))")
        for ddl in _DDL:
            conn.execute(ddl)
        conn.execute(
            "INSERT INTO _replicator.meta VALUES ('version', %s) ON CONFLICT (key) DO NOTHING", (str(VERSION),)
        )


def lock_job(conn: psycopg.Connection[Any], job: str, mode: str) -> None:
    """Hold a session lock for this job so two runs never write the same state at once."""
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext('_replicator.job'), hashtext(%s))", (job,)).fetchone()
    if not got or not got[0]:
        raise ReplicatorError(
            f"another replicator run for source {job} is active against this destination; "
            f"stop it before starting {mode}"
        )


@dataclass(frozen=True)
class ChunkPlan:
    chunk_no: int
    source_schema: str
    source_table: str
    kind: str  # 'all' | 'ctid' | 'key'
    lower: str | None
    upper: str | None


@dataclass(frozen=True)
class ChunkState:
    plan: ChunkPlan
    run_id: str | None
    rows: int | None
    done: bool


@dataclass(frozen=True)
class TableState:
    schema: str
    name: str
    status: str
    created_by_us: bool
    key_columns: tuple[str, ...]
    key_built: bool
    chunks: tuple[ChunkState, ...]

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def pending(self) -> list[ChunkPlan]:
        return [c.plan for c in self.chunks if not c.done]

    def done_in_other_runs(self, run_id: str) -> bool:
        return any(c.done and c.run_id != run_id for c in self.chunks)


def load_snapshot_state(
    conn: psycopg.Connection[Any], job: str, only: tuple[str, str] | None = None
) -> dict[tuple[str, str], TableState]:
    """Snapshot progress of every table of ``job`` (or of the ``only`` table)."""
    where = sql.SQL("job = %s") + (sql.SQL(" AND schema_name = %s AND table_name = %s") if only else sql.SQL(""))
    params = (job, *only) if only else (job,)
    tables = conn.execute(
        sql.SQL(
            """SELECT schema_name, table_name, status, created_by_us, key_columns, key_built
               FROM _replicator.snapshot_tables WHERE {}"""
        ).format(where),
        params,
    ).fetchall()
    chunks: dict[tuple[str, str], list[ChunkState]] = {}
    for row in conn.execute(
        sql.SQL(
            """SELECT schema_name, table_name, chunk_no, source_schema, source_table, kind,
                      lower_bound, upper_bound, run_id, rows, done_at IS NOT NULL
               FROM _replicator.snapshot_chunks WHERE {} ORDER BY chunk_no"""
        ).format(where),
        params,
    ).fetchall():
        plan = ChunkPlan(row[2], row[3], row[4], row[5], row[6], row[7])
        chunks.setdefault((row[0], row[1]), []).append(ChunkState(plan, row[8], row[9], row[10]))
    return {
        (s, n): TableState(s, n, status, created, tuple(keys), built, tuple(chunks.get((s, n), ())))
        for s, n, status, created, keys, built in tables
    }


def record_table_plan(
    conn: psycopg.Connection[Any],
    job: str,
    schema: str,
    name: str,
    created_by_us: bool,
    key_columns: Iterable[str],
    chunks: list[ChunkPlan],
) -> None:
    """Record a table's chunk plan; call in the transaction that created or emptied the table."""
    conn.execute(
        """INSERT INTO _replicator.snapshot_tables
               (job, schema_name, table_name, created_by_us, key_columns, chunk_count)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        (job, schema, name, created_by_us, list(key_columns), len(chunks)),
    )
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO _replicator.snapshot_chunks
                   (job, schema_name, table_name, chunk_no, source_schema, source_table, kind,
                    lower_bound, upper_bound)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            [
                (job, schema, name, c.chunk_no, c.source_schema, c.source_table, c.kind, c.lower, c.upper)
                for c in chunks
            ],
        )


def mark_chunk_done(
    conn: psycopg.Connection[Any], job: str, schema: str, name: str, chunk_no: int, run_id: str, rows: int
) -> None:
    """Checkpoint one chunk; call in the transaction that loaded its rows."""
    cur = conn.execute(
        """UPDATE _replicator.snapshot_chunks SET run_id = %s, rows = %s, done_at = now()
           WHERE job = %s AND schema_name = %s AND table_name = %s AND chunk_no = %s AND done_at IS NULL""",
        (run_id, rows, job, schema, name, chunk_no),
    )
    if cur.rowcount != 1:
        # Someone else finished (or reset) this chunk: committing our rows would duplicate them.
        raise ReplicatorError(f"snapshot state of {schema}.{name} chunk {chunk_no} changed under this run")
    conn.execute(
        """UPDATE _replicator.snapshot_tables SET rows_copied = rows_copied + %s
           WHERE job = %s AND schema_name = %s AND table_name = %s""",
        (rows, job, schema, name),
    )


def mark_key_built(conn: psycopg.Connection[Any], job: str, schema: str, name: str) -> None:
    conn.execute(
        """UPDATE _replicator.snapshot_tables SET key_built = true
           WHERE job = %s AND schema_name = %s AND table_name = %s""",
        (job, schema, name),
    )


def mark_table_done(conn: psycopg.Connection[Any], job: str, schema: str, name: str) -> None:
    conn.execute(
        """UPDATE _replicator.snapshot_tables SET status = 'done', finished_at = now()
           WHERE job = %s AND schema_name = %s AND table_name = %s""",
        (job, schema, name),
    )


def forget_snapshot(conn: psycopg.Connection[Any], job: str, tables: Iterable[tuple[str, str]]) -> None:
    """Drop snapshot progress for these tables (``--fresh``)."""
    for schema, name in tables:
        for table in ("snapshot_chunks", "snapshot_tables"):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE job = %s AND schema_name = %s AND table_name = %s").format(
                    sql.Identifier(SCHEMA, table)
                ),
                (job, schema, name),
            )


@dataclass(frozen=True)
class Watermark:
    """Where the next delta pass of a table starts reading; ``value`` is kind-specific (JSON)."""

    kind: str  # 'xmin' | 'update-key'
    value: dict[str, Any]


def load_watermarks(conn: psycopg.Connection[Any], job: str) -> dict[tuple[str, str], Watermark]:
    rows = conn.execute(
        "SELECT schema_name, table_name, kind, watermark FROM _replicator.delta_watermarks WHERE job = %s",
        (job,),
    ).fetchall()
    return {(s, n): Watermark(kind, json.loads(value) if value else {}) for s, n, kind, value in rows}


def save_watermark(conn: psycopg.Connection[Any], job: str, schema: str, name: str, mark: Watermark) -> None:
    """Store a table's watermark; call in the transaction that applied the rows it covers."""
    conn.execute(
        """INSERT INTO _replicator.delta_watermarks (job, schema_name, table_name, kind, watermark)
           VALUES (%s, %s, %s, %s, %s)
           ON CONFLICT (job, schema_name, table_name)
           DO UPDATE SET kind = EXCLUDED.kind, watermark = EXCLUDED.watermark, updated_at = now()""",
        (job, schema, name, mark.kind, json.dumps(mark.value, sort_keys=True)),
    )


def describe_watermark(kind: str, text: str | None) -> str:
    """A stored watermark in a few words (``replicator status``)."""
    value = json.loads(text) if text else {}
    if kind == "xmin":
        return f"rows written by transaction {value.get('xmin')} and later"
    since = value.get("since")
    columns = value.get("columns", [])
    waiting = len(value.get("readings", []))
    bounds = (
        " or ".join(f"{c} >= {b}" if b is not None else f"{c} not null" for c, b in zip(columns, since, strict=False))
        if since is not None
        else "every row"
    )
    return bounds + (f" ({waiting} reading(s) wait for open transactions)" if waiting else "")


def forget_watermarks(conn: psycopg.Connection[Any], job: str, tables: Iterable[tuple[str, str]]) -> None:
    """Drop delta watermarks for these tables (``--fresh``): their next pass is a full snapshot."""
    for schema, name in tables:
        conn.execute(
            "DELETE FROM _replicator.delta_watermarks WHERE job = %s AND schema_name = %s AND table_name = %s",
            (job, schema, name),
        )


_JOB_TABLES = ("snapshot_tables", "snapshot_chunks", "slot_checkpoints", "delta_watermarks")


def rename_job(conn: psycopg.Connection[Any], old: str, new: str) -> int:
    """Move every checkpoint of job ``old`` to ``new`` (one transaction); rows moved.

    Nothing moves when ``new`` already has progress of its own: that is the newer record.
    """
    if old == new:
        return 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('_replicator.schema'))")
        for table in _JOB_TABLES:
            query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE job = %s)").format(sql.Identifier(SCHEMA, table))
            row = conn.execute(query, (new,)).fetchone()
            if row and row[0]:
                return 0
        moved = 0
        for table in _JOB_TABLES:
            query = sql.SQL("UPDATE {} SET job = %s WHERE job = %s").format(sql.Identifier(SCHEMA, table))
            moved += conn.execute(query, (new, old)).rowcount
    return moved
