"""The face of a destination: what the modes call, and the values they exchange with it.

A mode opens a ``DestinationSession`` from a ``Destination`` (``open_destination(config)``)
and works through it: tables (describe, create, empty, key), loads (a COPY stream relayed from
the source, appended or merged by key), key-range digests and deletes of absent keys (delta
passes; or the live keys in key order and deleting a set of keys, for the key walk), an
``Applier`` for folded realtime batches, and the ``StateStore`` where progress is
checkpointed. Everything a session does inside ``with session.transaction():`` commits
together, which is how a checkpoint commits atomically with the rows it covers.

PostgreSQL (``destinations/postgres``) is the one implementation today. A second one would
satisfy these protocols; nothing in the modes names the PostgreSQL one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from replicator.catalog import Catalog, Column
from replicator.decoding.ddlplan import SchemaChange
from replicator.decoding.fold import Folded
from replicator.filters import SelectedTable
from replicator.keybuckets import Selection, Summary
from replicator.keyorder import Bound, Digest, KeyOrder
from replicator.lsn import Lsn
from replicator.relay import CopySink, CopySource, RelayResult
from replicator.serverfacts import ServerFacts, Verdict
from replicator.tableobjects import ConstraintDef, SequenceValue, TableObjects

TableName = tuple[str, str]
"""(schema, table) of a destination table: the source table's own names."""

SessionRole = Literal["control", "writer"]
"""``control``: DDL, state, the job lock. ``writer``: loads and applies rows whose checkpoint
commits with them, so its commits need not wait for the disk (see postgres/session.py)."""


@dataclass(frozen=True)
class DestColumn:
    name: str
    type_sql: str  # as the destination's catalog spells it
    generated: bool
    not_null: bool = False


@dataclass(frozen=True)
class DestTable:
    """A table as the destination holds it."""

    schema: str
    name: str
    columns: dict[str, DestColumn]

    @property
    def key(self) -> TableName:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


OUR_COLUMN_PREFIX = "__replicator_"
"""Columns a destination adds to tables for itself (e.g. the soft-delete flag) start with this."""


@dataclass(frozen=True)
class ColumnChanges:
    """How a destination table's columns follow the source's (delta passes), applied in this order."""

    renamed: tuple[tuple[str, str], ...] = ()  # (old name, new name): the same source column
    dropped: tuple[str, ...] = ()  # gone at the source (dropped, or kept with NULLs: destination config)
    added: tuple[Column, ...] = ()  # new at the source (their values: the caller reads every row again)
    retyped: tuple[Column, ...] = ()  # another type at the source (likewise)
    orphaned: tuple[str, ...] = ()  # not at the source, origin unknown: kept, NOT NULL dropped
    replaced: tuple[Column, ...] = ()  # dropped and added again under the same name: made anew

    def __bool__(self) -> bool:
        return any((self.renamed, self.dropped, self.added, self.retyped, self.orphaned, self.replaced))

    def describe(self) -> str:
        parts = [f"renamed {o} to {n}" for o, n in self.renamed]
        parts += [f"dropped {c}" for c in self.dropped]
        parts += [f"added {c.name} {c.type_sql}" for c in self.added]
        parts += [f"{c.name} now {c.type_sql}" for c in self.retyped]
        parts += [f"{c} no longer at the source (kept, may be NULL)" for c in self.orphaned]
        parts += [f"{c.name} dropped and added again as {c.type_sql}" for c in self.replaced]
        return ", ".join(parts)


@dataclass
class Target:
    """A destination table that receives realtime changes, and how its rows are found."""

    table: DestTable
    key: tuple[str, ...]  # destination key columns ((): no key, changes applied one by one)
    key_nullable: bool = False
    # Rows can collide on a unique or exclusion index besides the key: a folded batch may then
    # hit a violation the source never had (values swapped between rows), and is applied again
    # change by change, in source order.
    in_order_fallback: bool = False
    # The filter's conditions, when the destination evaluates them (no publication row filter):
    # rows written that do not match are removed (destinations/postgres/rowfilter.py).
    condition: str | None = None
    # The filter's conditions however they are applied (a publication row filter included): rows
    # an UPDATE moved into them with a TOASTed value left unchanged are read from the source.
    source_condition: str | None = None


NewColumnType = Callable[[int, int], tuple[str, Catalog]]
"""(type oid, typmod) of a column the source gained -> (its type as SQL, a catalog holding the
user types it needs), looked up at the source; realtime adds such columns as their first
change arrives."""

SourceRows = Callable[
    [TableName, Sequence[str], Sequence[str], list[tuple[Any, ...]], str], list[tuple[Any, ...]]
]
"""(table, columns to read, key columns, keys, condition) -> the source's current rows among those
keys that match the filter condition, as text values in ``columns`` order: for rows a filtered
table's UPDATE moved into its condition while leaving a TOASTed value unchanged
(``destinations/postgres/rowfilter.py``)."""

Fill = Callable[[CopySink], RelayResult]
"""Feeds a sink, typically ``lambda sink: relay_copy(src, copy_out, sink)``."""


@dataclass(frozen=True)
class ForeignKeyAt:
    """A foreign key as the destination holds it."""

    table: TableName
    name: str
    references: TableName


RowHashes = list[tuple[tuple[str | None, ...], int]]
"""(key values in text form, hash of the row's compared columns), in key order."""


# -- replication state ---------------------------------------------------------------------


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
    # The xmin (64-bit) of the snapshot the chunk was copied in; None if unknown (older versions).
    snapshot_xmin: int | None = None


@dataclass(frozen=True)
class TableState:
    """A table's snapshot progress."""

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

    def done_before(self, run_id: str) -> list[ChunkState]:
        """Chunks finished by earlier runs (in other snapshots)."""
        return [c for c in self.chunks if c.done and c.run_id != run_id]

    def done_in_other_runs(self, run_id: str) -> bool:
        return any(c.done and c.run_id != run_id for c in self.chunks)


@dataclass(frozen=True)
class Watermark:
    """Where the next delta pass of a table starts reading; ``value`` is kind-specific (JSON)."""

    kind: str  # 'xmin' | 'update-key'
    value: dict[str, Any]


@dataclass(frozen=True)
class SnapshotProgress:
    """One table's snapshot progress, for ``replicator status``."""

    job: str
    table: str
    status: str
    rows: int
    chunks_done: int
    chunks: int
    finished_at: datetime | None


@dataclass(frozen=True)
class SlotProgress:
    """One slot's checkpoint, for ``replicator status``."""

    job: str
    slot: str
    lsn: Lsn
    age: timedelta
    applied_through: datetime | None = None  # see replicator.lag (None: never recorded)


@dataclass(frozen=True)
class SwitchoverMark:
    """``replicator switchover`` promoted this destination: replication into it is over."""

    job: str
    at: datetime
    marker_lsn: Lsn | None
    slots: tuple[str, ...]


@dataclass(frozen=True)
class WatermarkProgress:
    """One table's delta watermark, for ``replicator status``."""

    job: str
    table: str
    mark: Watermark
    age: timedelta


@dataclass(frozen=True)
class SchemaChangeRecord:
    """One schema change applied while streaming, for ``replicator status``."""

    job: str
    slot: str
    lsn: Lsn  # where the change is in the source's WAL
    table: str
    command: str  # the source's command tag (ALTER TABLE, CREATE TABLE ...)
    change: str  # what the destination did
    applied_at: datetime


@dataclass(frozen=True)
class PendingRefresh:
    """Rows to copy from the source into ``table`` (values the stream does not carry: a rewrite by
    a volatile default or a USING expression, a partition attached with rows, a table that entered
    replication holding rows); recorded with the change that needs it, removed with the merge."""

    table: TableName
    relid: int  # the source relation to read (the table, or the partition attached)
    whole: bool  # the whole table (rows not at the source go); False: upsert the relation's rows
    reason: str
    since: Lsn  # the change that asked for it


@dataclass(frozen=True)
class StreamTable:
    """Where a source table's changes go, as of a slot's checkpoint (schema changes followed)."""

    slot: str
    table: TableName
    key: tuple[str, ...]
    key_from: str | None  # 'primary-key' | 'row-identifier-key' | None (no key)


class StateStore(Protocol):
    """Replication state kept in the destination, written in the session's transaction.

    Every checkpoint is written in the same destination transaction as the rows it covers, so
    a crash at any instant leaves state and data agreeing: what is marked done is there, once.
    """

    def ensure(self) -> None:
        """Create (or upgrade) the state's schema; idempotent, safe against concurrent runs."""
        ...

    def present(self) -> bool:
        """Whether this destination holds replication state at all (reading only)."""
        ...

    def lock_job(self, job: str, mode: str) -> None:
        """Hold a session lock for ``job`` so two runs never write the same state at once."""
        ...

    # snapshot
    def load_snapshot(self, job: str, only: TableName | None = None) -> dict[TableName, TableState]: ...

    def record_table_plan(
        self,
        job: str,
        table: TableName,
        created_by_us: bool,
        key_columns: Iterable[str],
        chunks: list[ChunkPlan],
    ) -> None:
        """Call in the transaction that created or emptied the table."""
        ...

    def mark_chunk_done(
        self,
        job: str,
        table: TableName,
        chunk_no: int,
        run_id: str,
        rows: int,
        snapshot_xmin: int | None = None,
    ) -> None:
        """Call in the transaction that loaded the chunk's rows (``snapshot_xmin``: of the snapshot
        it was read in)."""
        ...

    def mark_key_built(self, job: str, table: TableName) -> None: ...

    def mark_table_done(self, job: str, table: TableName) -> None: ...

    def forget_snapshot(self, job: str, tables: Iterable[TableName]) -> None: ...

    def remember_dropped_foreign_key(self, job: str, table: TableName, name: str) -> None:
        """A reload dropped this foreign key (call in the transaction that drops it): the
        snapshot's ``finish`` makes it again, even on a table replicator did not create."""
        ...

    def dropped_foreign_keys(self, job: str) -> set[tuple[TableName, str]]: ...

    def forget_dropped_foreign_keys(self, job: str, table: TableName, names: Iterable[str]) -> None: ...

    # realtime
    def slot_checkpoint(self, job: str, slot: str) -> Lsn | None: ...

    def save_slot_checkpoint(self, job: str, slot: str, lsn: Lsn) -> None:
        """Call in the transaction that applied the changes up to ``lsn``."""
        ...

    def save_slot_lag(self, job: str, slot: str, applied_through: datetime) -> None:
        """Record when the slot's destination was last known to hold everything the source had
        committed (``replicator.lag``); informational, outside any checkpoint transaction."""
        ...

    # schema changes while streaming
    def log_schema_change(
        self, job: str, slot: str, lsn: Lsn, seq: int, table: TableName, command: str, change: str
    ) -> None:
        """Call in the transaction that applied the change."""
        ...

    def schema_change_applied(self, job: str, slot: str, lsn: Lsn) -> bool: ...

    def add_pending_refresh(self, job: str, slot: str, refresh: PendingRefresh) -> None: ...

    def pending_refreshes(self, job: str, slot: str) -> list[PendingRefresh]: ...

    def finish_refresh(self, job: str, slot: str, table: TableName, relid: int) -> None: ...

    def move_pending_refreshes(self, job: str, slot: str, table: TableName, to: TableName | None) -> None: ...

    def schema_change_log(self, limit: int = 50) -> list[SchemaChangeRecord]: ...

    def stream_tables(self, job: str) -> dict[int, StreamTable]: ...

    def save_stream_tables(
        self, job: str, slot: str, tables: dict[int, StreamTable], replace: bool = False
    ) -> None: ...

    def forget_stream_tables(self, job: str, slot: str, relids: list[int]) -> None: ...

    # delta-snapshot
    def load_watermarks(self, job: str) -> dict[TableName, Watermark]: ...

    def save_watermark(self, job: str, table: TableName, mark: Watermark) -> None:
        """Call in the transaction that applied the rows the watermark covers."""
        ...

    def forget_watermarks(self, job: str, tables: Iterable[TableName]) -> None: ...

    def rename_job(self, old: str, new: str) -> int:
        """Move every checkpoint of job ``old`` to ``new`` (unless ``new`` has progress of its
        own), in one transaction; the rows moved."""
        ...

    # switchover
    def record_switchover(self, job: str, marker_lsn: Lsn | None, slots: Iterable[str]) -> None:
        """Mark the destination promoted: a running stream of ``job`` stops, later runs refuse."""
        ...

    def switchover(self, job: str) -> SwitchoverMark | None:
        """The switchover recorded for ``job``, if any (reading only; None without state)."""
        ...

    def forget_switchover(self, job: str) -> None: ...

    def source_read_only_before(self, job: str, current: str | None) -> str | None:
        """The source database's own ``default_transaction_read_only`` before ``switchover
        --read-only-source`` first set it, given what it is now (None: not set): a rerun after a
        crash or a refusal finds "on" and must not take it for the original."""
        ...

    # replicator status
    def snapshot_progress(self) -> list[SnapshotProgress]: ...

    def slot_progress(self) -> list[SlotProgress]: ...

    def watermark_progress(self) -> list[WatermarkProgress]: ...


@dataclass(frozen=True, slots=True)
class CommitMark:
    """Where a commit (or the present moment) is in the destination's log, and how far that log
    is durable: a commit is durable once the destination's flush position reaches its ``at``.
    Positions are the destination's own (for PostgreSQL, WAL positions), compared only with each
    other."""

    at: int
    flushed: int


class Applier(Protocol):
    """Applies folded realtime batches inside one open destination transaction at a time, and
    commits them with the slot's checkpoint. Commits may be visible before they are durable
    (``CommitMark``): the source is told only what is durable."""

    applied_changes: int
    captured_schema: bool
    """Schema changes arrive captured (``apply_schema``): relations are not compared with the tables."""

    def prepare(self, folded: Folded) -> Folded:
        """Work that needs no database (formatting rows), done on the reading thread."""
        ...

    def apply(self, folded: Folded) -> None:
        """Apply one unit inside the open destination transaction (opening it if needed)."""
        ...

    def commit(self, lsn: Lsn) -> CommitMark:
        """Write the checkpoint ``lsn`` and commit everything applied; where that commit is, and
        how far the destination is durable."""
        ...

    def durability(self) -> CommitMark:
        """The destination's write position now (everything committed so far is at or before it)
        and its flush position (asks the server)."""
        ...

    def sync(self) -> int:
        """Make everything committed so far durable now (waits for the destination); returns
        the flush position."""
        ...

    def rollback(self) -> None:
        """Abandon the open destination transaction, if one is open."""
        ...

    def reset(self) -> None:
        """After its session reopened: forget what was learnt on the old connection."""
        ...

    def apply_schema(self, change: SchemaChange) -> None:
        """A schema change captured at the source, in the open transaction between the units
        around it; logged in the state store with it. Afterwards ``change.removed`` tables no
        longer receive changes and ``change.added`` ones do."""
        ...

    def stage_refresh(
        self, table: TableName, relid: int, columns: tuple[str, ...], not_null: tuple[str, ...], fill: Fill
    ) -> int:
        """Hold the rows ``fill`` writes (a text COPY of ``columns`` of source relation ``relid``, read
        under a snapshot) until ``merge_refresh``; ``not_null``: the columns NOT NULL at the source."""
        ...

    def merge_refresh(self, table: TableName, relid: int, whole: bool) -> None:
        """The stream is at the snapshot's position: the held rows become ``table``'s (``whole``:
        every row; else upserted), and the pending refresh is done, in the open transaction."""
        ...


class DestinationSession(Protocol):
    """One connection's worth of destination work; not thread-safe."""

    @property
    def state(self) -> StateStore: ...

    @property
    def usable(self) -> bool:
        """False once the connection is closed or broken (``reopen()`` makes a new one)."""
        ...

    def ping(self) -> bool:
        """Whether the connection still answers (asks the server)."""
        ...

    def reopen(self) -> None:
        """Replace a broken connection; what the old one held (stages, transaction) is gone."""
        ...

    def close(self) -> None: ...

    def compare_server(self, source: ServerFacts, token: str) -> Verdict:
        """Whether this destination is the server (and database) of the PostgreSQL source session
        ``source``, which is open and carries ``token`` as its application_name."""
        ...

    def cancel(self) -> None:
        """Cancel the statement in progress (from another thread)."""
        ...

    def __enter__(self) -> DestinationSession: ...

    def __exit__(self, *exc: object) -> None: ...

    def transaction(self) -> AbstractContextManager[None]:
        """Everything inside commits together, or not at all."""
        ...

    # tables
    def check_can_take(self, tables: Iterable[SelectedTable]) -> None:
        """Refuse (``DestinationError`` naming every problem and its fix) when the destination
        cannot take these tables: read-only, or an existing table lacking a column, holding a
        narrower type, or refusing our writes. Call before the first write of a run."""
        ...

    def describe(self, table: TableName) -> DestTable | None: ...

    def create_table(
        self, catalog: Catalog, st: SelectedTable, objects: TableObjects | None = None
    ) -> list[str]:
        """Like the source table: names, types (user types and collations created first), NOT
        NULLs, generated columns, and with ``objects`` its defaults, identity columns and the
        sequences they use; no key or index yet (``build_key``, ``build_objects`` after the
        load). Returns a note for each object left out."""
        ...

    def ensure_types(self, catalog: Catalog, columns: tuple[Column, ...]) -> None: ...

    def has_rows(self, table: DestTable) -> bool: ...

    def empty(self, table: DestTable) -> None: ...

    def build_key(self, st: SelectedTable, name: str | None = None) -> None:
        """The key realtime and merges find rows by (a primary key named ``name`` when given)."""
        ...

    def build_objects(self, st: SelectedTable, objects: TableObjects) -> list[str]:
        """Secondary indexes and CHECK, UNIQUE, EXCLUDE constraints, as the source names and
        defines them; those already there are kept. Notes for those left out."""
        ...

    def drop_objects(self, table: TableName, objects: TableObjects) -> None:
        """Drop the indexes and CHECK, UNIQUE, EXCLUDE constraints ``objects`` names (before a reload)."""
        ...

    def add_foreign_keys(self, table: TableName, fks: Iterable[ConstraintDef]) -> list[str]:
        """Add ``fks`` NOT VALID (``validate_constraints`` checks the rows). Notes for those left out."""
        ...

    def validate_constraints(self, table: TableName, names: Iterable[str] | None = None) -> list[str]:
        """Validate the table's NOT VALID constraints (or those named). Notes for those that fail."""
        ...

    def not_valid_constraints(self, table: TableName) -> list[str]: ...

    def foreign_keys_touching(self, tables: Iterable[TableName]) -> list[ForeignKeyAt]:
        """Foreign keys whose table or referenced table is one of ``tables``."""
        ...

    def drop_foreign_key(self, fk: ForeignKeyAt) -> None: ...

    def empty_together(self, tables: list[DestTable]) -> None:
        """Empty these tables in one statement (foreign keys among them do not stand in the way)."""
        ...

    def enforces_uniqueness_besides(self, table: TableName, key: tuple[str, ...]) -> bool:
        """Whether rows of ``table`` can collide on a unique or exclusion index besides ``key``'s."""
        ...

    def sequence_values(self, names: Iterable[TableName]) -> list[SequenceValue]: ...

    def set_sequences(self, values: Iterable[SequenceValue], exact: bool = False) -> list[TableName]:
        """Move sequences to ``values``: forward only, or ``exact``ly. Returns those moved."""
        ...

    def identity_as_source(self, table: TableName, objects: TableObjects) -> list[str]:
        """Identity columns GENERATED ALWAYS where the source has them so (they are BY DEFAULT
        while replicating). Returns the columns changed."""
        ...

    def replica_role(self) -> bool:
        """Whether this session's role may set ``session_replication_role = replica`` (writer
        sessions then do, so the destination's triggers and foreign keys do not fire on
        replicated rows)."""
        ...

    def triggers_on(self, tables: Iterable[TableName]) -> list[str]:
        """The enabled user triggers and foreign keys on these tables (what replica role silences)."""
        ...

    def replica_role_fix(self) -> str:
        """The grant that lets this session's user set ``session_replication_role``."""
        ...

    def has_unique_key(self, table: TableName, columns: tuple[str, ...]) -> bool: ...

    def add_unique_key(self, table: TableName, columns: tuple[str, ...]) -> None:
        """A unique index on ``columns`` (NOT NULL at the source): how realtime finds rows when the
        source's replica identity is another unique index than the table's key."""
        ...

    def ready_for_changes(self, table: DestTable) -> DestTable:
        """Make a table ready to receive changes and deletes (``deletes: soft`` adds its flag)."""
        ...

    def copy_columns(self, st: SelectedTable, table: DestTable) -> tuple[str, ...]:
        """The selected columns the destination receives (present there, not generated)."""
        ...

    def alter_columns(self, table: DestTable, catalog: Catalog, changes: ColumnChanges) -> DestTable:
        """Make ``table``'s columns follow the source's (a dropped column is dropped, or kept as
        the destination's config says); call in the transaction that then merges its rows.
        Returns the table as it is afterwards."""
        ...

    # rows
    def load(
        self,
        table: DestTable,
        columns: tuple[str, ...],
        binary: bool,
        fill: Fill,
        merge_key: tuple[str, ...] = (),
        expect_new: bool | None = None,
    ) -> RelayResult:
        """A COPY stream of ``columns`` (binary or text format) into ``table``: appended, or with
        ``merge_key`` merged by that key (a row already there takes the new values and, with
        soft deletes, is live again; the key needs a unique index). ``expect_new``: whether most
        rows are expected to be new, when the caller knows (None: a mix). Call in a transaction."""
        ...

    def key_range_digest(
        self, table: DestTable, order: KeyOrder, lower: Bound | None, upper: Bound | None
    ) -> Digest:
        """Count and digest of the live keys in ``(lower, upper]``, as the source computes them."""
        ...

    def delete_absent(
        self,
        table: DestTable,
        order: KeyOrder,
        lower: Bound | None,
        upper: Bound | None,
        binary: bool,
        fill: Fill,
    ) -> int:
        """Delete (or soft-delete) the rows in ``(lower, upper]`` whose key is not in the stream
        ``fill`` writes: one row of arrays, one array per key column. Returns the rows removed."""
        ...

    def text_key_encoding(self) -> str | None:
        """The encoding text keys arrive in from ``live_keys`` when it is the one they are stored
        in (their bytes then order as byte-wise comparison at the destination does); else None."""
        ...

    def live_keys(
        self, table: DestTable, order: KeyOrder, only: Selection | None = None
    ) -> CopySource:
        """The keys of the live rows of ``table`` in ``order``'s order, as a binary COPY stream of
        the key columns (not started). Read it to its end before the session does anything else.
        ``only`` (a single integer key): just the keys in these buckets (``keybuckets``)."""
        ...

    def key_buckets(self, table: DestTable, order: KeyOrder, shift: int) -> dict[int, Summary]:
        """The summary of each bucket of ``2^shift`` key values of the live rows, as
        ``keybuckets.Buckets`` computes it at the source (a single integer key only)."""
        ...

    def delete_keys(
        self, table: DestTable, key: tuple[str, ...], count: int, table_rows: int, fill: Fill
    ) -> int:
        """Delete (or soft-delete) the rows of ``table`` whose key is one of the ``count`` keys
        ``fill`` writes (binary COPY, columns ``key``; ``table_rows``: about how many rows the
        table has). Call in a transaction; returns the rows removed."""
        ...

    def applier(
        self,
        job: str,
        slot: str,
        targets: Mapping[TableName, Target],
        column_type: NewColumnType,
        source_rows: SourceRows | None = None,
    ) -> Applier: ...

    # verify (read only)
    def row_digest(
        self, table: DestTable, columns: tuple[Column, ...], order: KeyOrder, lower: Bound | None,
        upper: Bound | None,
    ) -> Digest:
        """Count and digest of the live rows in ``(lower, upper]``, over ``columns``, as the
        source computes it (``rowdigest``)."""
        ...

    def row_hashes(
        self, table: DestTable, columns: tuple[Column, ...], order: KeyOrder, lower: Bound | None,
        upper: Bound | None,
    ) -> RowHashes:
        """Each live row's key and hash in ``(lower, upper]``, in key order."""
        ...

    def bucket_digests(self, table: DestTable, columns: tuple[Column, ...]) -> dict[int, Digest]:
        """A keyless table as a multiset: count and digest per hash bucket."""
        ...

    def bucket_rows(
        self, table: DestTable, columns: tuple[Column, ...], buckets: Iterable[int]
    ) -> dict[int, tuple[int, str]]:
        """A keyless table's rows in ``buckets``: row hash -> (copies, the row as text)."""
        ...

    def index_and_constraint_names(self, table: TableName) -> tuple[set[str], dict[str, bool]]:
        """(the table's index names, its constraints: name -> validated)."""
        ...

    def object_names(self, kind: str, tables: Iterable[TableName] = ()) -> set[str]:
        """Names of the destination's objects of a kind, as ``otherobjects.KINDS`` lists them."""
        ...

    def verify_condition(
        self, table: TableName, condition: str, where: str, columns: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Refuse (ConfigError) a filter condition this destination cannot evaluate on ``table``
        (for tables whose condition is evaluated here while streaming). A table not created yet is
        stood in for by ``columns`` (name, source type); False: it could not be checked yet (a type
        the destination does not have until the table is created)."""
        ...


class Destination(Protocol):
    """A configured destination; opening sessions is all it does (no connection of its own)."""

    @property
    def description(self) -> str:
        """Where it is, for messages (no credentials)."""
        ...

    def open_session(
        self, application_name: str, role: SessionRole = "control", settings: Mapping[str, str] | None = None
    ) -> DestinationSession:
        """A new session; ``settings`` are session settings a mode needs (e.g. text forms)."""
        ...

