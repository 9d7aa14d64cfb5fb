"""Stage and merge by key: the one implementation, used by snapshot resumes, delta passes and realtime.

Rows to merge are COPYed into a *stage*, a session temp table shaped like the columns they
fill, and merged into their table with a few statements:

- When the caller knows where most rows are (realtime's fold does: a key first written in
  the batch is new) and the key is NOT NULL: an INSERT of the staged rows whose key has no
  row, and an UPDATE of those that have one. Whichever is expected to do most comes first;
  the other runs only if the first one's row count says some rows were not where they were
  expected (e.g. a stream replayed over a later snapshot). An INSERT of rows known to be new
  costs about half the CPU of ``ON CONFLICT`` speculative insertion, and an UPDATE of
  existing rows writes less WAL than ``ON CONFLICT DO UPDATE`` (which also locks each row).
- Otherwise (a mix nobody can predict: a delta pass's changed rows, the rest of a snapshot
  resumed under a new snapshot), and wherever NULLs are possible in the key: one
  ``INSERT ... ON CONFLICT DO UPDATE`` on the key's unique index (``NULLS NOT DISTINCT`` for
  a nullable key: only that index finds those rows). For a mix it probes each key once,
  where UPDATE-then-INSERT would probe twice (~25% slower on a 1% delta pass).

Joins of a stage to its table must probe the table's key index (``KEY_PROBES``, set once per
transaction). With hash or merge joins allowed, the planner scans the whole destination table
for each batch (a seq scan looks cheaper than 10,000 index probes on paper), which makes every
merge cost as much as the table is large. Stages are never ANALYZEd: with the join shape fixed
their statistics change nothing, and ANALYZE cost ~30 ms a merge.

Stages are kept for the session and empty themselves at commit (``ON COMMIT DELETE ROWS``: a
truncation in place), so one is TRUNCATEd only when used twice in a transaction: TRUNCATE
gives a table a new file and a new catalog row, ~4 ms each time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.destinations.base import DestTable, TableName
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy

# Key lookups, never whole-table scans (see the module docstring). LOCAL: ends with the transaction.
KEY_PROBES = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

_Signature = tuple[TableName, tuple[str, ...], str]


@dataclass
class Stages:
    """The session's stages, by (table, columns, role); ``role`` keeps stages used together in
    one transaction apart (e.g. inserted and updated rows)."""

    conn: psycopg.Connection[Any]
    _stages: dict[_Signature, sql.Identifier] = field(default_factory=dict)
    _filled: set[_Signature] = field(default_factory=set)  # filled in the open transaction
    _seq: int = 0

    def take(self, table: DestTable, columns: Sequence[str], role: str = "") -> sql.Identifier:
        """An empty stage for these columns of ``table`` (created if needed), to COPY into."""
        sig = (table.key, tuple(columns), role)
        stage = self._stages.get(sig)
        if stage is None:
            self._seq += 1
            stage = sql.Identifier(f"_replicator_stage_{self._seq}")
            self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA"
                ).format(stage, names_sql(columns), ident(table))
            )
            self._stages[sig] = stage
        elif sig in self._filled:
            self.conn.execute(sql.SQL("TRUNCATE {}").format(stage))
        self._filled.add(sig)
        return stage

    def fill(self, table: DestTable, columns: Sequence[str], text: str, role: str = "") -> sql.Identifier:
        """A stage holding ``text`` (rows in COPY's text format)."""
        stage = self.take(table, columns, role)
        with self.conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(stage, names_sql(columns))
        ) as copy:
            copy.write(text)
        return stage

    def committed(self) -> None:
        self._filled.clear()

    def rolled_back(self) -> None:
        # Stages created in the transaction went with it (the others are merely left unused).
        self._stages.clear()
        self._filled.clear()

    def reset(self, conn: psycopg.Connection[Any]) -> None:
        """A new connection: the old session's temp tables are gone."""
        self.conn = conn
        self._stages.clear()
        self._filled.clear()

    def forget(self, table: TableName) -> None:
        """``table`` changed shape: drop its stages (they were shaped like the old table)."""
        for sig in [s for s in self._stages if s[0] == table]:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self._stages.pop(sig)))
            self._filled.discard(sig)

    def identifiers(self) -> list[sql.Identifier]:
        return list(self._stages.values())


def names_sql(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def match(key: Sequence[str], key_nullable: bool, left: str = "d", right: str = "s") -> sql.Composed:
    """The key of ``left`` equals the key of ``right``."""
    op = sql.SQL(" IS NOT DISTINCT FROM ") if key_nullable else sql.SQL(" = ")
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{}{}{}.{}").format(
            sql.Identifier(left), sql.Identifier(k), op, sql.Identifier(right), sql.Identifier(k)
        )
        for k in key
    )


def update_from(
    table: DestTable,
    stage: sql.Composable,
    names: Sequence[str],
    key: Sequence[str],
    key_nullable: bool,
    deletes: DeletePolicy,
) -> sql.Composed | None:
    """UPDATE the rows of ``table`` that have a staged row with their key; None if nothing to set."""
    sets = [sql.SQL("{0} = s.{0}").format(sql.Identifier(n)) for n in names if n not in key]
    sets += deletes.revive(table)
    if not sets:
        return None
    return sql.SQL("UPDATE {} AS d SET {} FROM {} AS s WHERE {}").format(
        ident(table), sql.SQL(", ").join(sets), stage, match(key, key_nullable)
    )


def merge(
    conn: psycopg.Connection[Any],
    table: DestTable,
    stage: sql.Composable,
    names: Sequence[str],
    key: Sequence[str],
    rows: int,
    *,
    key_nullable: bool = False,
    deletes: DeletePolicy,
    expect_new: bool | None,
) -> None:
    """Merge the ``rows`` staged rows into ``table`` by ``key``: each takes its key's row, or a new one.

    ``expect_new``: True when most rows are expected to have no row yet (insert first, then
    update), False when most are expected to have one, None when nobody knows (a unique index
    on the key is then required). Run under ``KEY_PROBES``.
    """
    cols = names_sql(names)
    if key_nullable or expect_new is None:
        sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in key]
        sets += deletes.revive(table)
        action = (
            sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
        )
        conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
                ident(table), cols, cols, stage, names_sql(key), action
            )
        )
        return
    insert = sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM {} AS s WHERE NOT EXISTS (SELECT FROM {} AS d WHERE {})"
    ).format(ident(table), cols, cols, stage, ident(table), match(key, False))
    update = update_from(table, stage, names, key, False, deletes)
    first, then = (insert, update) if expect_new else (update, insert)
    done = conn.execute(first).rowcount if first is not None else 0
    if done < rows and then is not None:
        conn.execute(then)
