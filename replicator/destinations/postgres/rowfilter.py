"""Filter ``conditions`` evaluated at the destination, for tables whose condition cannot be a
publication row filter (``source/rowfilter.py`` says which and why).

Every row a batch wrote (inserted, updated, moved) is checked against the condition once the
batch is applied, in the same destination transaction, on the row as the destination now holds
it (so values an UPDATE left unchanged, TOASTed ones included, are what they are at the source),
and removed when it does not match: a row inserted outside the condition never shows, and an
UPDATE that moves a row out of it deletes it, as a native row filter does. A condition that is NULL
counts as not matching (as in a WHERE clause). With soft deletes, a row moved out stays flagged as
deleted with the values it had while it matched (``remember`` keeps them before the batch is
applied), as a deleted row does; values that never matched are never kept, not even flagged (a
filter keeping one tenant's rows must not copy the others' as deleted ones).

An UPDATE that moves a row *into* the condition is applied like any other: a whole row is
written where there was none. Only when such an UPDATE left a TOASTed value unchanged does the
destination lack it (the source did not send it, and the row was never copied): the rows those
updates could not find are read from the source (``SourceRows``), as they are now, and only if
they match there. A later change of the same row in the stream is applied over it as usual, so
the row converges on the source's.

Tables without a key (REPLICA IDENTITY FULL) apply their changes one by one: an UPDATE there is
a delete of the old row and an insert of the new one if it matches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from replicator.decoding import fold
from replicator.decoding.changes import UNCHANGED_TOAST, Op, Values
from replicator.destinations.base import SourceRows, Target
from replicator.destinations.postgres import copytext
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import Stages, names_sql


def matches(condition: str) -> sql.Composable:
    return sql.SQL("coalesce(({}), false)").format(sql.SQL(condition))


def remember(
    conn: psycopg.Connection[Any],
    stages: Stages,
    target: Target,
    batch: fold.TableBatch,
    deletes: DeletePolicy,
) -> sql.Identifier | None:
    """With soft deletes, before ``batch`` is applied: the destination's rows it is about to write,
    as they are now, for ``enforce`` to flag the ones it moves out of the condition."""
    if not deletes.soft:
        return None
    stage = _written_keys(stages, target, batch)
    if stage is None:
        return None
    columns = [n for n, c in target.table.columns.items() if not c.generated]
    saved = stages.take(target.table, columns, "rowfilter-before")
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} WHERE ({}) IN (SELECT {} FROM {})").format(
            saved, names_sql(columns), names_sql(columns), ident(target.table), names_sql(target.key),
            names_sql(target.key), stage,
        )
    )
    return saved


def enforce(
    conn: psycopg.Connection[Any],
    stages: Stages,
    target: Target,
    batch: fold.TableBatch,
    deletes: DeletePolicy,
    before: sql.Identifier | None = None,
) -> None:
    """Remove the rows ``batch`` wrote that do not match ``target.condition``; with soft deletes,
    put back flagged those that matched before it (``before``, from ``remember``)."""
    assert target.condition is not None
    stage = _written_keys(stages, target, batch)
    if stage is None:
        return
    key = names_sql(target.key)
    where = sql.SQL("({}) IN (SELECT {} FROM {}) AND NOT {}").format(
        key, key, stage, matches(target.condition)
    )
    if not deletes.soft:
        conn.execute(deletes.delete_where(target.table, where))
        return
    conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(ident(target.table), where))
    if before is not None:
        columns = [n for n, c in target.table.columns.items() if not c.generated]
        conn.execute(deletes.restore_deleted(target.table, before, columns, list(target.key)))


def _written_keys(stages: Stages, target: Target, batch: fold.TableBatch) -> sql.Identifier | None:
    """A stage holding the keys of the rows ``batch`` writes (None: it writes none)."""
    keys = [k for k, op in batch.ops.items() if isinstance(op, fold.Upsert)]
    if not keys:
        return None
    return stages.fill(target.table, target.key, copytext.copy_text(keys, len(target.key)), "rowfilter")


def fill_missing(
    conn: psycopg.Connection[Any],
    stages: Stages,
    target: Target,
    partial: list[fold.Upsert],
    key_positions: Sequence[int],
    columns: Sequence[str],
    source_rows: SourceRows | None,
) -> int:
    """Partial updates (unchanged TOAST values) of rows the destination does not hold: read from
    the source those that match there, and write them. Returns the rows written. With a
    publication row filter too: an UPDATE of the replica identity that moves a row into it arrives
    as an INSERT whose unchanged TOASTed values the source did not send."""
    assert target.source_condition is not None
    if not partial or source_rows is None:
        return 0
    keys = [tuple(op.values[i] for i in key_positions) for op in partial]
    key = names_sql(target.key)
    text = copytext.copy_text(keys, len(target.key))
    stage = stages.fill(target.table, target.key, text, "rowfilter-missing")
    as_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in target.key)
    missing = conn.execute(
        sql.SQL("SELECT {} FROM {} AS s WHERE ({}) NOT IN (SELECT {} FROM {})").format(
            as_text, stage, key, key, ident(target.table)
        )
    ).fetchall()
    if not missing:
        return 0
    absent = [tuple(r) for r in missing]
    rows = source_rows(target.table.key, columns, target.key, absent, target.source_condition)
    if not rows:
        return 0
    with conn.cursor().copy(
        sql.SQL("COPY {} ({}) FROM STDIN").format(ident(target.table), names_sql(columns))
    ) as copy:
        for row in rows:
            copy.write_row(row)
    return len(rows)


def apply_keyless(
    conn: psycopg.Connection[Any],
    target: Target,
    batch: fold.TableBatch,
    columns: list[tuple[int, str]],
    typed: Callable[[str, Any], sql.Composable],
    deletes: DeletePolicy,
) -> None:
    """Changes of a table without a key, one by one, keeping only rows that match the condition."""
    assert target.condition is not None
    table = ident(target.table)


    def insert(values: Values) -> None:
        present = [(i, n) for i, n in columns if values[i] is not UNCHANGED_TOAST]
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT * FROM (VALUES ({vals})) AS v ({cols}) WHERE {cond}"
            ).format(
                t=table,
                cols=names_sql(n for _, n in present),
                vals=sql.SQL(", ").join(typed(n, values[i]) for i, n in present),
                cond=matches(target.condition or "true"),
            )
        )

    for ch in batch.in_order:
        if ch.op is Op.INSERT:
            assert ch.new is not None
            insert(ch.new)
            continue
        assert ch.old is not None
        old = ch.old
        same = sql.SQL(" AND ").join(
            sql.SQL("{}::text IS NOT DISTINCT FROM {}::text").format(sql.Identifier(n), typed(n, old[i]))
            for i, n in columns
            if old[i] is not UNCHANGED_TOAST
        )
        one_row = sql.SQL("ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)").format(table, same)
        conn.execute(deletes.delete_where(target.table, one_row))
        if ch.op is Op.UPDATE:
            assert ch.new is not None
            # Unchanged TOAST values: the old row (REPLICA IDENTITY FULL logs it whole) has them.
            insert(fold.fill_unchanged(ch.new, old))
