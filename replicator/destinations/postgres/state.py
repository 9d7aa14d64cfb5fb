"""The state store: replication state held in the destination, schema ``_replicator``.

This is the only code that reads or writes ``_replicator``. Every checkpoint is written on the
session's connection, in the transaction that wrote the rows it covers, so a crash at any
instant leaves state and data agreeing: what is marked done is there, once.

Versions. ``_replicator.meta`` holds the schema's version; ``MIGRATIONS[n - 1]`` brings a
version ``n - 1`` schema to version ``n``. ``ensure()`` applies the missing steps in order,
under an advisory lock, so adding state (the schema-change log, the switchover mark) is one
new step at the end of the list plus the methods that use it; a destination written by an
older replicator is upgraded on its next run. Never edit a step that has shipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from replicator.destinations.base import (
    ChunkPlan,
    ChunkState,
    PendingRefresh,
    SchemaChangeRecord,
    SlotProgress,
    SnapshotProgress,
    StreamTable,
    SwitchoverMark,
    TableName,
    TableState,
    Watermark,
    WatermarkProgress,
)
from replicator.errors import DestinationError, ReplicatorError
from replicator.lsn import Lsn

SCHEMA = "_replicator"

MIGRATIONS: list[list[str]] = [
    # 1: snapshot progress, slot checkpoints, delta watermarks.
    [
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
    ],
    # 2: what ``replicator status`` needs for a slot's apply lag in seconds (replicator.lag):
    # recorded every few seconds by the running pipeline, apart from the checkpoint (whose
    # transaction stays the apply path's own).
    [
        """CREATE TABLE IF NOT EXISTS _replicator.slot_lag (
            job text NOT NULL,
            slot_name text NOT NULL,
            applied_through timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job, slot_name))""",
    ],
    # 3: the xmin of the snapshot each chunk was copied in: a resume under a new snapshot reads
    # again what was written in a finished chunk's range since then (snapshot/runner.py).
    [
        "ALTER TABLE _replicator.snapshot_chunks ADD COLUMN IF NOT EXISTS snapshot_xmin bigint",
    ],
    # 4: the switchover mark (replicator switchover promoted this destination).
    [
        """CREATE TABLE IF NOT EXISTS _replicator.switchovers (
            job text PRIMARY KEY,
            switched_at timestamptz NOT NULL DEFAULT now(),
            marker_lsn pg_lsn,
            slots text[] NOT NULL DEFAULT '{}',
            by_user text NOT NULL DEFAULT current_user)""",
        # What `switchover --read-only-source` found before it first made the source read-only:
        # a run killed or refused after that step must not take its own "on" for the original.
        """CREATE TABLE IF NOT EXISTS _replicator.switchover_source (
            job text PRIMARY KEY,
            read_only_before text,
            recorded_at timestamptz NOT NULL DEFAULT now())""",
        # Foreign keys a reload dropped to empty and load its tables, until they are made again:
        # recorded in the transaction that drops them, so a run killed in between still restores
        # them on a table replicator did not create.
        """CREATE TABLE IF NOT EXISTS _replicator.dropped_foreign_keys (
            job text NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            name text NOT NULL,
            PRIMARY KEY (job, schema_name, table_name, name))""",
    ],
    # 5: schema changes applied while streaming (issue 13), and refreshes not yet merged.
    [
        """CREATE TABLE IF NOT EXISTS _replicator.schema_changes (
            job text NOT NULL,
            slot_name text NOT NULL,
            lsn pg_lsn NOT NULL,
            seq integer NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            command text NOT NULL,
            change text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job, slot_name, lsn, seq))""",
        """CREATE TABLE IF NOT EXISTS _replicator.pending_refreshes (
            job text NOT NULL,
            slot_name text NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            source_relid bigint NOT NULL,
            whole boolean NOT NULL,
            reason text NOT NULL,
            since_lsn pg_lsn NOT NULL,
            PRIMARY KEY (job, slot_name, schema_name, table_name, source_relid))""",
        # Which destination table each source table (by oid) feeds, as of the slot's checkpoint: a
        # table renamed at the source after it keeps its old name until the stream gets there.
        """CREATE TABLE IF NOT EXISTS _replicator.stream_tables (
            job text NOT NULL,
            slot_name text NOT NULL,
            source_relid bigint NOT NULL,
            schema_name text NOT NULL,
            table_name text NOT NULL,
            key_columns text[] NOT NULL,
            key_from text,
            PRIMARY KEY (job, slot_name, source_relid))""",
    ],
]
VERSION = len(MIGRATIONS)
_JOB_TABLES = (
    "snapshot_tables",
    "snapshot_chunks",
    "slot_checkpoints",
    "delta_watermarks",
    "slot_lag",
    "switchovers",
    "switchover_source",
    "dropped_foreign_keys",
    "schema_changes",
    "pending_refreshes",
    "stream_tables",
)


class HasConnection(Protocol):
    @property
    def conn(self) -> psycopg.Connection[Any]: ...


class PgStateStore:
    """The ``StateStore`` of a PostgreSQL destination, on its session's connection."""

    def __init__(self, session: HasConnection):
        self._session = session

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        return self._session.conn

    def ensure(self) -> None:
        conn = self._conn
        with conn.transaction():
            # Two runs starting at once would race on CREATE ... IF NOT EXISTS in the catalogs.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('_replicator.schema'))")
            conn.execute("CREATE SCHEMA IF NOT EXISTS _replicator")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _replicator.meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            row = conn.execute("SELECT value FROM _replicator.meta WHERE key = 'version'").fetchone()
            have = int(row[0]) if row else 0
            if have > VERSION:
                raise DestinationError(
                    f"the destination's replication state (schema {SCHEMA}) is version {have}, newer than "
                    f"this replicator knows ({VERSION}): upgrade replicator"
                )
            if have == VERSION:
                return
            for version in range(have + 1, VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    conn.execute(statement)
            conn.execute(
                """INSERT INTO _replicator.meta VALUES ('version', %s)
                   ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""",
                (str(VERSION),),
            )

    def present(self) -> bool:
        return self._conn.execute("SELECT to_regclass('_replicator.meta')").fetchone() != (None,)

    def lock_job(self, job: str, mode: str) -> None:
        got = self._conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('_replicator.job'), hashtext(%s))", (job,)
        ).fetchone()
        if not got or not got[0]:
            raise ReplicatorError(
                f"another replicator run for source {job} is active against this destination; "
                f"stop it before starting {mode}"
            )

    # -- snapshot ----------------------------------------------------------------------------

    def load_snapshot(self, job: str, only: TableName | None = None) -> dict[TableName, TableState]:
        where = sql.SQL("job = %s") + (
            sql.SQL(" AND schema_name = %s AND table_name = %s") if only else sql.SQL("")
        )
        params = (job, *only) if only else (job,)
        tables = self._conn.execute(
            sql.SQL(
                """SELECT schema_name, table_name, status, created_by_us, key_columns, key_built
                   FROM _replicator.snapshot_tables WHERE {}"""
            ).format(where),
            params,
        ).fetchall()
        chunks: dict[TableName, list[ChunkState]] = {}
        for row in self._conn.execute(
            sql.SQL(
                """SELECT schema_name, table_name, chunk_no, source_schema, source_table, kind,
                          lower_bound, upper_bound, run_id, rows, done_at IS NOT NULL, snapshot_xmin
                   FROM _replicator.snapshot_chunks WHERE {} ORDER BY chunk_no"""
            ).format(where),
            params,
        ).fetchall():
            plan = ChunkPlan(row[2], row[3], row[4], row[5], row[6], row[7])
            chunks.setdefault((row[0], row[1]), []).append(
                ChunkState(plan, row[8], row[9], row[10], row[11])
            )
        return {
            (s, n): TableState(s, n, status, created, tuple(keys), built, tuple(chunks.get((s, n), ())))
            for s, n, status, created, keys, built in tables
        }

    def record_table_plan(
        self,
        job: str,
        table: TableName,
        created_by_us: bool,
        key_columns: Iterable[str],
        chunks: list[ChunkPlan],
    ) -> None:
        self._conn.execute(
            """INSERT INTO _replicator.snapshot_tables
                   (job, schema_name, table_name, created_by_us, key_columns, chunk_count)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            (job, *table, created_by_us, list(key_columns), len(chunks)),
        )
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO _replicator.snapshot_chunks
                       (job, schema_name, table_name, chunk_no, source_schema, source_table, kind,
                        lower_bound, upper_bound)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (job, *table, c.chunk_no, c.source_schema, c.source_table, c.kind, c.lower, c.upper)
                    for c in chunks
                ],
            )

    def mark_chunk_done(
        self,
        job: str,
        table: TableName,
        chunk_no: int,
        run_id: str,
        rows: int,
        snapshot_xmin: int | None = None,
    ) -> None:
        cur = self._conn.execute(
            """UPDATE _replicator.snapshot_chunks SET run_id = %s, rows = %s, done_at = now(),
                      snapshot_xmin = %s
               WHERE job = %s AND schema_name = %s AND table_name = %s AND chunk_no = %s
                 AND done_at IS NULL""",
            (run_id, rows, snapshot_xmin, job, *table, chunk_no),
        )
        if cur.rowcount != 1:
            # Someone else finished (or reset) this chunk: committing our rows would duplicate them.
            raise ReplicatorError(
                f"snapshot state of {'.'.join(table)} chunk {chunk_no} changed under this run"
            )
        self._conn.execute(
            """UPDATE _replicator.snapshot_tables SET rows_copied = rows_copied + %s
               WHERE job = %s AND schema_name = %s AND table_name = %s""",
            (rows, job, *table),
        )

    def mark_key_built(self, job: str, table: TableName) -> None:
        self._conn.execute(
            """UPDATE _replicator.snapshot_tables SET key_built = true
               WHERE job = %s AND schema_name = %s AND table_name = %s""",
            (job, *table),
        )

    def mark_table_done(self, job: str, table: TableName) -> None:
        self._conn.execute(
            """UPDATE _replicator.snapshot_tables SET status = 'done', finished_at = now()
               WHERE job = %s AND schema_name = %s AND table_name = %s""",
            (job, *table),
        )

    def forget_snapshot(self, job: str, tables: Iterable[TableName]) -> None:
        """Drop snapshot progress for these tables (``--fresh``)."""
        for table in tables:
            for name in ("snapshot_chunks", "snapshot_tables"):
                self._conn.execute(
                    sql.SQL("DELETE FROM {} WHERE job = %s AND schema_name = %s AND table_name = %s").format(
                        sql.Identifier(SCHEMA, name)
                    ),
                    (job, *table),
                )

    # -- realtime ----------------------------------------------------------------------------

    def slot_checkpoint(self, job: str, slot: str) -> Lsn | None:
        row = self._conn.execute(
            "SELECT lsn::text FROM _replicator.slot_checkpoints WHERE job = %s AND slot_name = %s",
            (job, slot),
        ).fetchone()
        return Lsn.parse(row[0]) if row else None

    def save_slot_checkpoint(self, job: str, slot: str, lsn: Lsn) -> None:
        self._conn.execute(self.slot_checkpoint_statement(job, slot, lsn))

    @staticmethod
    def slot_checkpoint_statement(job: str, slot: str, lsn: Lsn) -> sql.Composed:
        """``save_slot_checkpoint`` as one statement with its values in it, for a caller that
        sends it in one round trip with others (realtime's commit)."""
        return sql.SQL(
            """INSERT INTO _replicator.slot_checkpoints (job, slot_name, lsn) VALUES ({}, {}, {})
               ON CONFLICT (job, slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now()"""
        ).format(sql.Literal(job), sql.Literal(slot), sql.Literal(str(lsn)))

    # -- schema changes (realtime) -----------------------------------------------------------

    def log_schema_change(
        self, job: str, slot: str, lsn: Lsn, seq: int, table: TableName, command: str, change: str
    ) -> None:
        """Call in the transaction that applied the change (with the checkpoint that passes ``lsn``)."""
        self._conn.execute(
            """INSERT INTO _replicator.schema_changes
                   (job, slot_name, lsn, seq, schema_name, table_name, command, change)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
            (job, slot, str(lsn), seq, *table, command, change),
        )

    def schema_change_applied(self, job: str, slot: str, lsn: Lsn) -> bool:
        """Whether the schema change at ``lsn`` is already applied (a message is never applied twice)."""
        row = self._conn.execute(
            """SELECT EXISTS (SELECT 1 FROM _replicator.schema_changes
                              WHERE job = %s AND slot_name = %s AND lsn = %s)""",
            (job, slot, str(lsn)),
        ).fetchone()
        return bool(row and row[0])

    def add_pending_refresh(self, job: str, slot: str, refresh: PendingRefresh) -> None:
        """Call in the transaction that applied the change needing it."""
        self._conn.execute(
            """INSERT INTO _replicator.pending_refreshes
                   (job, slot_name, schema_name, table_name, source_relid, whole, reason, since_lsn)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (job, slot_name, schema_name, table_name, source_relid)
               DO UPDATE SET whole = _replicator.pending_refreshes.whole OR EXCLUDED.whole,
                             reason = EXCLUDED.reason""",
            (job, slot, *refresh.table, refresh.relid, refresh.whole, refresh.reason, str(refresh.since)),
        )

    def pending_refreshes(self, job: str, slot: str) -> list[PendingRefresh]:
        rows = self._conn.execute(
            """SELECT schema_name, table_name, source_relid, whole, reason, since_lsn::text
               FROM _replicator.pending_refreshes WHERE job = %s AND slot_name = %s ORDER BY since_lsn""",
            (job, slot),
        ).fetchall()
        return [
            PendingRefresh((s, t), int(relid), whole, reason, Lsn.parse(lsn))
            for s, t, relid, whole, reason, lsn in rows
        ]

    def finish_refresh(self, job: str, slot: str, table: TableName, relid: int) -> None:
        """Call in the transaction that merged the refreshed rows."""
        self._conn.execute(
            """DELETE FROM _replicator.pending_refreshes
               WHERE job = %s AND slot_name = %s AND schema_name = %s AND table_name = %s
                 AND source_relid = %s""",
            (job, slot, *table, relid),
        )

    def move_pending_refreshes(self, job: str, slot: str, table: TableName, to: TableName | None) -> None:
        """The table was renamed (``to``) or no longer receives changes (None)."""
        if to is None:
            self._conn.execute(
                """DELETE FROM _replicator.pending_refreshes
                   WHERE job = %s AND slot_name = %s AND schema_name = %s AND table_name = %s""",
                (job, slot, *table),
            )
            return
        self._conn.execute(
            """UPDATE _replicator.pending_refreshes SET schema_name = %s, table_name = %s
               WHERE job = %s AND slot_name = %s AND schema_name = %s AND table_name = %s""",
            (*to, job, slot, *table),
        )

    def stream_tables(self, job: str) -> dict[int, StreamTable]:
        """Source table oid -> where its changes go, as of each slot's checkpoint (reading only:
        empty when the state is absent or older)."""
        if self._conn.execute("SELECT to_regclass('_replicator.stream_tables')").fetchone() == (None,):
            return {}
        rows = self._conn.execute(
            """SELECT source_relid, slot_name, schema_name, table_name, key_columns, key_from
               FROM _replicator.stream_tables WHERE job = %s""",
            (job,),
        ).fetchall()
        return {
            int(relid): StreamTable(slot, (schema, name), tuple(key), key_from)
            for relid, slot, schema, name, key, key_from in rows
        }

    def save_stream_tables(
        self, job: str, slot: str, tables: dict[int, StreamTable], replace: bool = False
    ) -> None:
        """Record which destination table each source table feeds (``replace``: these are all of the
        slot's). Call in the transaction of the change that made it so."""
        if replace:
            self._conn.execute(
                "DELETE FROM _replicator.stream_tables WHERE job = %s AND slot_name = %s", (job, slot)
            )
        with self._conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO _replicator.stream_tables
                       (job, slot_name, source_relid, schema_name, table_name, key_columns, key_from)
                   VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (job, slot_name, source_relid)
                   DO UPDATE SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name,
                                 key_columns = EXCLUDED.key_columns, key_from = EXCLUDED.key_from""",
                [(job, slot, relid, *t.table, list(t.key), t.key_from) for relid, t in tables.items()],
            )

    def forget_stream_tables(self, job: str, slot: str, relids: list[int]) -> None:
        self._conn.execute(
            """DELETE FROM _replicator.stream_tables
               WHERE job = %s AND slot_name = %s AND source_relid = ANY(%s)""",
            (job, slot, relids),
        )

    def save_slot_lag(self, job: str, slot: str, applied_through: datetime) -> None:
        self._conn.execute(
            """INSERT INTO _replicator.slot_lag (job, slot_name, applied_through) VALUES (%s, %s, %s)
               ON CONFLICT (job, slot_name)
               DO UPDATE SET applied_through = EXCLUDED.applied_through, recorded_at = now()""",
            (job, slot, applied_through),
        )

    # -- delta-snapshot ----------------------------------------------------------------------

    def load_watermarks(self, job: str) -> dict[TableName, Watermark]:
        rows = self._conn.execute(
            "SELECT schema_name, table_name, kind, watermark FROM _replicator.delta_watermarks WHERE job = "
            "%s",
            (job,),
        ).fetchall()
        return {(s, n): _watermark(kind, value) for s, n, kind, value in rows}

    def save_watermark(self, job: str, table: TableName, mark: Watermark) -> None:
        self._conn.execute(
            """INSERT INTO _replicator.delta_watermarks (job, schema_name, table_name, kind, watermark)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (job, schema_name, table_name)
               DO UPDATE SET kind = EXCLUDED.kind, watermark = EXCLUDED.watermark, updated_at = now()""",
            (job, *table, mark.kind, json.dumps(mark.value, sort_keys=True)),
        )

    def forget_watermarks(self, job: str, tables: Iterable[TableName]) -> None:
        """Drop delta watermarks for these tables (``--fresh``): their next pass is a full snapshot."""
        for table in tables:
            self._conn.execute(
                "DELETE FROM _replicator.delta_watermarks WHERE job = %s AND schema_name = %s AND "
                "table_name = %s",
                (job, *table),
            )

    # -- the job's name ------------------------------------------------------------------------

    def rename_job(self, old: str, new: str) -> int:
        """Move every checkpoint of job ``old`` to ``new`` (one transaction); rows moved.

        Nothing moves when ``new`` already has progress of its own: that is the newer record.
        """
        if old == new:
            return 0
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('_replicator.schema'))")
            # A state of an older version may lack the later tables (ensure() adds them).
            tables = [t for t in _JOB_TABLES if self._has_table(t)]
            for table in tables:
                query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE job = %s)").format(
                    sql.Identifier(SCHEMA, table)
                )
                row = conn.execute(query, (new,)).fetchone()
                if row and row[0]:
                    return 0
            moved = 0
            for table in tables:
                query = sql.SQL("UPDATE {} SET job = %s WHERE job = %s").format(sql.Identifier(SCHEMA, table))
                moved += conn.execute(query, (new, old)).rowcount
        return moved

    def _has_table(self, name: str) -> bool:
        row = self._conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{name}",)).fetchone()
        return bool(row and row[0] is not None)

    def remember_dropped_foreign_key(self, job: str, table: TableName, name: str) -> None:
        self._conn.execute(
            """INSERT INTO _replicator.dropped_foreign_keys (job, schema_name, table_name, name)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (job, table[0], table[1], name),
        )

    def dropped_foreign_keys(self, job: str) -> set[tuple[TableName, str]]:
        if not self._has_table("dropped_foreign_keys"):
            return set()
        rows = self._conn.execute(
            "SELECT schema_name, table_name, name FROM _replicator.dropped_foreign_keys WHERE job = %s",
            (job,),
        ).fetchall()
        return {((schema, table), name) for schema, table, name in rows}

    def forget_dropped_foreign_keys(self, job: str, table: TableName, names: Iterable[str]) -> None:
        self._conn.execute(
            """DELETE FROM _replicator.dropped_foreign_keys
               WHERE job = %s AND schema_name = %s AND table_name = %s AND name = ANY(%s)""",
            (job, table[0], table[1], list(names)),
        )

    # -- switchover --------------------------------------------------------------------------

    def record_switchover(self, job: str, marker_lsn: Lsn | None, slots: Iterable[str]) -> None:
        self._conn.execute(
            """INSERT INTO _replicator.switchovers (job, marker_lsn, slots) VALUES (%s, %s, %s)
               ON CONFLICT (job) DO UPDATE SET switched_at = now(), marker_lsn = EXCLUDED.marker_lsn,
                   slots = EXCLUDED.slots, by_user = current_user""",
            (job, str(marker_lsn) if marker_lsn is not None else None, list(slots)),
        )

    def switchover(self, job: str) -> SwitchoverMark | None:
        if not self._has_table("switchovers"):
            return None
        row = self._conn.execute(
            "SELECT switched_at, marker_lsn::text, slots FROM _replicator.switchovers WHERE job = %s", (job,)
        ).fetchone()
        if row is None:
            return None
        return SwitchoverMark(job, row[0], Lsn.parse(row[1]) if row[1] else None, tuple(row[2]))

    def forget_switchover(self, job: str) -> None:
        for table in ("switchovers", "switchover_source"):
            if self._has_table(table):
                self._conn.execute(
                    sql.SQL("DELETE FROM {} WHERE job = %s").format(sql.Identifier(SCHEMA, table)), (job,)
                )

    def source_read_only_before(self, job: str, current: str | None) -> str | None:
        if current == "on":
            row = self._conn.execute(
                "SELECT read_only_before FROM _replicator.switchover_source WHERE job = %s", (job,)
            ).fetchone()
            if row is not None:
                return str(row[0]) if row[0] is not None else None
        self._conn.execute(
            """INSERT INTO _replicator.switchover_source (job, read_only_before) VALUES (%s, %s)
               ON CONFLICT (job) DO UPDATE SET read_only_before = EXCLUDED.read_only_before,
                   recorded_at = now()""",
            (job, current),
        )
        return current

    # -- replicator status -------------------------------------------------------------------

    def snapshot_progress(self) -> list[SnapshotProgress]:
        rows = self._conn.execute(
            """SELECT t.job, t.schema_name || '.' || t.table_name, t.status, t.rows_copied,
                      count(c.done_at), count(c.chunk_no), t.finished_at
               FROM _replicator.snapshot_tables t
               LEFT JOIN _replicator.snapshot_chunks c USING (job, schema_name, table_name)
               GROUP BY 1, 2, 3, 4, 7 ORDER BY 1, 3 DESC, 2"""
        ).fetchall()
        return [SnapshotProgress(*row) for row in rows]

    def slot_progress(self) -> list[SlotProgress]:
        # A destination last written by an older replicator has no slot_lag yet (status never upgrades).
        lag = self._conn.execute("SELECT to_regclass('_replicator.slot_lag') IS NOT NULL").fetchone()
        through = "l.applied_through" if lag and lag[0] else "NULL::timestamptz"
        joined = "LEFT JOIN _replicator.slot_lag l USING (job, slot_name)" if lag and lag[0] else ""
        rows = self._conn.execute(
            f"SELECT job, slot_name, c.lsn::text, now() - c.updated_at, {through} "
            f"FROM _replicator.slot_checkpoints c {joined} ORDER BY 1, 2"
        ).fetchall()
        return [SlotProgress(job, slot, Lsn.parse(lsn), age, t) for job, slot, lsn, age, t in rows]

    def schema_change_log(self, limit: int = 50) -> list[SchemaChangeRecord]:
        """The latest schema changes applied (oldest first)."""
        # A destination last written by an older replicator has no log yet (status never upgrades).
        if self._conn.execute("SELECT to_regclass('_replicator.schema_changes')").fetchone() == (None,):
            return []
        rows = self._conn.execute(
            """SELECT job, slot_name, lsn::text, schema_name || '.' || table_name, command, change, applied_at
               FROM (SELECT * FROM _replicator.schema_changes ORDER BY applied_at DESC, lsn DESC, seq DESC
                     LIMIT %s) s
               ORDER BY applied_at, lsn, seq""",
            (limit,),
        ).fetchall()
        return [
            SchemaChangeRecord(job, slot, Lsn.parse(lsn), table, command, change, at)
            for job, slot, lsn, table, command, change, at in rows
        ]

    def watermark_progress(self) -> list[WatermarkProgress]:
        rows = self._conn.execute(
            """SELECT job, schema_name || '.' || table_name, kind, watermark, now() - updated_at
               FROM _replicator.delta_watermarks ORDER BY 1, 2"""
        ).fetchall()
        return [
            WatermarkProgress(job, table, _watermark(kind, value), age)
            for job, table, kind, value, age in rows
        ]


def _watermark(kind: str, value: str | None) -> Watermark:
    return Watermark(kind, json.loads(value) if value else {})
