"""The one place destination connections are opened and their session settings are set.

Every destination session is an autocommit connection (transactions are explicit) with:

- ``search_path`` left as the server has it: every statement we send names its schema;
- the settings the caller asks for (e.g. identical text forms for digests, see ``keyorder``);
- for ``writer`` sessions, ``synchronous_commit = off``: a writer's rows and their checkpoint
  commit in one transaction, so a destination crash loses both or neither, and the next run
  resumes from the checkpoint that survived. (The source is told only what is committed; see
  issue 9 item 12 for making that "only what is durable".)
- for ``writer`` sessions whose user may, ``session_replication_role = replica``: the
  destination's triggers and foreign keys do not fire on replicated rows (``replica.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from replicator import conditions
from replicator.catalog import Catalog, Column
from replicator.config.connection import ConnectionConfig
from replicator.connect import connect
from replicator.destinations.base import (
    ColumnChanges,
    DestTable,
    Fill,
    ForeignKeyAt,
    NewColumnType,
    RowHashes,
    SessionRole,
    SourceRows,
    TableName,
    Target,
)
from replicator.destinations.postgres import columns, compat, ddl, digest, keys, load, objects, replica
from replicator.destinations.postgres.apply import Writer
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import Stages
from replicator.destinations.postgres.state import PgStateStore
from replicator.errors import DestinationError
from replicator.filters import SelectedTable
from replicator.keybuckets import Selection, Summary
from replicator.keyorder import Bound, Digest, KeyOrder
from replicator.otherobjects import names as other_object_names
from replicator.relay import PgCopyOut, RelayResult
from replicator.serverfacts import ServerFacts, Verdict, compare
from replicator.tableobjects import ConstraintDef, SequenceValue, TableObjects, sequence_values

WRITER_SETTINGS = {"synchronous_commit": "off"}


def open_connection(
    cfg: ConnectionConfig,
    application_name: str,
    role: SessionRole = "control",
    settings: Mapping[str, str] | None = None,
) -> psycopg.Connection[Any]:
    conn = connect(cfg, "destination", application_name, autocommit=True)
    try:
        apply_settings(conn, {**(settings or {}), **(WRITER_SETTINGS if role == "writer" else {})})
        if role == "writer":
            replica.set_replica(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def apply_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str]) -> None:
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


class PostgresSession:
    """A ``DestinationSession`` on one PostgreSQL connection (autocommit; transactions explicit)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        deletes: DeletePolicy,
        reconnect: Callable[[], psycopg.Connection[Any]] | None = None,
        keep_dropped_columns: bool = False,
    ):
        self.conn = conn
        self.deletes = deletes
        self.keep_dropped_columns = keep_dropped_columns
        self.stages = Stages(conn)
        self._reconnect = reconnect
        self._state = PgStateStore(self)

    @property
    def state(self) -> PgStateStore:
        return self._state

    @property
    def usable(self) -> bool:
        return not (self.conn.closed or self.conn.broken)

    def ping(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def reopen(self) -> None:
        if self._reconnect is None:
            raise DestinationError("this destination session cannot reconnect")
        self.close()
        self.conn = self._reconnect()
        self.stages.reset(self.conn)

    def close(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass

    def compare_server(self, source: ServerFacts, token: str) -> Verdict:
        return compare(source, token, self.conn)

    def cancel(self) -> None:
        if not self.conn.closed:
            try:
                self.conn.cancel()
            except psycopg.Error:
                pass

    def __enter__(self) -> PostgresSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # Nested inside an open transaction it is a savepoint: only the outermost one commits
        # (and empties the stages); any rollback may have taken stages with it.
        outermost = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            with self.conn.transaction():
                yield
        except BaseException:
            self.stages.rolled_back()
            raise
        if outermost:
            self.stages.committed()

    # -- tables ----------------------------------------------------------------------------

    def check_can_take(self, tables: Iterable[SelectedTable]) -> None:
        compat.check_destination_tables(self.conn, tables)

    def describe(self, table: TableName) -> DestTable | None:
        return ddl.describe_table(self.conn, *table)

    def create_table(
        self, catalog: Catalog, st: SelectedTable, objects: TableObjects | None = None
    ) -> list[str]:
        return ddl.create_table(self.conn, catalog, st, objects)

    def ensure_types(self, catalog: Catalog, columns: tuple[Column, ...]) -> None:
        ddl.ensure_types(self.conn, catalog, columns)

    def has_rows(self, table: DestTable) -> bool:
        return ddl.has_rows(self.conn, table)

    def empty(self, table: DestTable) -> None:
        ddl.truncate(self.conn, table)

    def build_key(self, st: SelectedTable, name: str | None = None) -> None:
        ddl.build_key(self.conn, st, name)

    def build_objects(self, st: SelectedTable, table_objects: TableObjects) -> list[str]:
        with self.transaction():
            return objects.build_objects(self.conn, (st.table.schema, st.table.name), table_objects)

    def drop_objects(self, table: TableName, table_objects: TableObjects) -> None:
        objects.drop_objects(self.conn, table, table_objects)

    def add_foreign_keys(self, table: TableName, fks: Iterable[ConstraintDef]) -> list[str]:
        return objects.add_foreign_keys(self.conn, table, fks)

    def validate_constraints(self, table: TableName, names: Iterable[str] | None = None) -> list[str]:
        return objects.validate(self.conn, table, names)

    def not_valid_constraints(self, table: TableName) -> list[str]:
        return objects.not_valid(self.conn, table)

    def foreign_keys_touching(self, tables: Iterable[TableName]) -> list[ForeignKeyAt]:
        return objects.foreign_keys_touching(self.conn, tables)

    def drop_foreign_key(self, fk: ForeignKeyAt) -> None:
        objects.drop_foreign_key(self.conn, fk)

    def empty_together(self, tables: list[DestTable]) -> None:
        if tables:
            ddl.truncate_all(self.conn, tables)

    def enforces_uniqueness_besides(self, table: TableName, key: tuple[str, ...]) -> bool:
        return objects.enforces_uniqueness_besides(self.conn, table, key)

    def sequence_values(self, names: Iterable[TableName]) -> list[SequenceValue]:
        return sequence_values(self.conn, names)

    def set_sequences(self, values: Iterable[SequenceValue], exact: bool = False) -> list[TableName]:
        return objects.set_sequences(self.conn, list(values), exact)

    def identity_as_source(self, table: TableName, table_objects: TableObjects) -> list[str]:
        return objects.identity_as_source(self.conn, table, table_objects)

    def replica_role(self) -> bool:
        return replica.may_set(self.conn)

    def triggers_on(self, tables: Iterable[TableName]) -> list[str]:
        return replica.triggers_on(self.conn, tables)

    def replica_role_fix(self) -> str:
        return replica.fix(self.conn)

    def has_unique_key(self, table: TableName, columns: tuple[str, ...]) -> bool:
        return ddl.has_unique_key(self.conn, table, columns)

    def add_unique_key(self, table: TableName, columns: tuple[str, ...]) -> None:
        with self.conn.transaction():
            ddl.add_unique_key(self.conn, table, columns)

    def ready_for_changes(self, table: DestTable) -> DestTable:
        if not self.deletes.lacks_column(table):
            return table
        with self.conn.transaction():
            self.deletes.add_column(self.conn, table)
        found = self.describe(table.key)
        assert found is not None
        return found

    def copy_columns(self, st: SelectedTable, table: DestTable) -> tuple[str, ...]:
        return ddl.copy_columns(st, table)

    def alter_columns(self, table: DestTable, catalog: Catalog, changes: ColumnChanges) -> DestTable:
        self.stages.forget(table.key)  # shaped like the old table
        return columns.alter_columns(self.conn, table, catalog, changes, self.keep_dropped_columns)

    # -- rows ------------------------------------------------------------------------------

    def load(
        self,
        table: DestTable,
        columns: tuple[str, ...],
        binary: bool,
        fill: Fill,
        merge_key: tuple[str, ...] = (),
        expect_new: bool | None = None,
    ) -> RelayResult:
        return load.load(
            self.conn, self.stages, self.deletes, table, columns, binary, fill, merge_key, expect_new
        )

    def key_range_digest(
        self, table: DestTable, order: KeyOrder, lower: Bound | None, upper: Bound | None
    ) -> Digest:
        return load.key_range_digest(self.conn, self.deletes, table, order, lower, upper)

    def delete_absent(
        self,
        table: DestTable,
        order: KeyOrder,
        lower: Bound | None,
        upper: Bound | None,
        binary: bool,
        fill: Fill,
    ) -> int:
        with self.transaction():  # each range commits on its own: deleting is idempotent
            return load.delete_absent(self.conn, self.deletes, table, order, lower, upper, binary, fill)

    def text_key_encoding(self) -> str | None:
        return keys.text_key_encoding(self.conn)

    def live_keys(
        self, table: DestTable, order: KeyOrder, only: Selection | None = None
    ) -> PgCopyOut:
        return keys.live_keys(self.conn, self.deletes, table, order, only)

    def key_buckets(self, table: DestTable, order: KeyOrder, shift: int) -> dict[int, Summary]:
        return keys.key_buckets(self.conn, self.deletes, table, order, shift)

    def delete_keys(
        self, table: DestTable, key: tuple[str, ...], count: int, table_rows: int, fill: Fill
    ) -> int:
        return keys.delete_keys(self.conn, self.deletes, table, key, count, table_rows, fill)

    def applier(
        self,
        job: str,
        slot: str,
        targets: Mapping[TableName, Target],
        column_type: NewColumnType,
        source_rows: SourceRows | None = None,
    ) -> Writer:
        return Writer(self, job, slot, dict(targets), column_type, source_rows=source_rows)

    # -- verify (read only) ----------------------------------------------------------------

    def row_digest(
        self, table: DestTable, columns: tuple[Column, ...], order: KeyOrder, lower: Bound | None,
        upper: Bound | None,
    ) -> Digest:
        return digest.row_digest(self.conn, self.deletes, table, columns, order, lower, upper)

    def row_hashes(
        self, table: DestTable, columns: tuple[Column, ...], order: KeyOrder, lower: Bound | None,
        upper: Bound | None,
    ) -> RowHashes:
        return digest.row_hashes(self.conn, self.deletes, table, columns, order, lower, upper)

    def bucket_digests(self, table: DestTable, columns: tuple[Column, ...]) -> dict[int, Digest]:
        return digest.bucket_digests(self.conn, self.deletes, table, columns)

    def bucket_rows(
        self, table: DestTable, columns: tuple[Column, ...], buckets: Iterable[int]
    ) -> dict[int, tuple[int, str]]:
        return digest.bucket_rows(self.conn, self.deletes, table, columns, buckets)

    def index_and_constraint_names(self, table: TableName) -> tuple[set[str], dict[str, bool]]:
        return objects.existing_objects(self.conn, table)

    def object_names(self, kind: str, tables: Iterable[TableName] = ()) -> set[str]:
        return other_object_names(self.conn, kind, tables)

    def verify_condition(
        self, table: TableName, condition: str, where: str, columns: Sequence[tuple[str, str]] = ()
    ) -> bool:
        display = f"{'.'.join(table)} at the destination"
        if ddl.describe_table(self.conn, *table) is not None:
            conditions.verify(self.conn, sql.Identifier(*table), condition, where, display)
            return True
        # Not created yet: a row of the source's column types, named like the table, stands in.
        types = [t for _, t in columns]
        known = self.conn.execute(
            "SELECT bool_and(to_regtype(t) IS NOT NULL) FROM unnest(%s::text[]) t", (types,)
        ).fetchone()
        if not columns or known is None or not known[0]:
            return False
        stand_in = sql.SQL("(SELECT {}) AS {}").format(
            sql.SQL(", ").join(
                sql.SQL("NULL::{} AS {}").format(sql.SQL(t), sql.Identifier(n)) for n, t in columns
            ),
            sql.Identifier(table[1]),
        )
        conditions.verify(self.conn, stand_in, condition, where, display)
        return True
