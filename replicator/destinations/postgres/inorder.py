"""Applying a keyed table's changes one by one, in source order: the fallback for folded batches
that collide on a unique or exclusion constraint the source never violated.

Folding keeps one operation per key, and the set-wise statements apply them all at once. When
two rows trade a unique value across the transactions of one batch (``a`` -> ``tmp``, ``b`` ->
``a``, ``tmp`` -> ``b``), their final values are consistent, but a statement that writes one row
before the other meets a value the other row still holds: a violation the source never had.
Every state the source went through satisfied its constraints, change by change, so replaying
the changes in that order never meets one. This is what PostgreSQL's own apply always does;
here it is done only for the batch that needs it (``apply.Writer`` rolls the set-wise attempt
back to a savepoint first).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from replicator.decoding import fold
from replicator.decoding.changes import UNCHANGED_TOAST, Change, Op
from replicator.destinations.base import Target
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import names_sql


def replay(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    target: Target,
    batch: fold.TableBatch,
    columns: list[tuple[int, str]],
) -> None:
    """Apply ``batch.in_order`` change by change. ``columns``: (position in the stream's values,
    name) of the columns the destination stores."""
    for change in batch.in_order:
        if change.op is Op.DELETE:
            assert change.old is not None
            conn.execute(deletes.delete_where(target.table, _at_key(target, batch, change.old)))
        elif change.op is Op.INSERT:
            assert change.new is not None
            _upsert(conn, deletes, target, change.new, columns)
        else:
            _update(conn, deletes, target, batch, change, columns)


def _update(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    target: Target,
    batch: fold.TableBatch,
    change: Change,
    columns: list[tuple[int, str]],
) -> None:
    new = change.new
    assert new is not None
    old_key = batch.key_of(change.old) if change.old is not None else batch.key_of(new)
    if UNCHANGED_TOAST in old_key:
        old_key = batch.key_of(new)
    sets = [
        sql.SQL("{} = {}").format(sql.Identifier(name), _typed(target, name, new[i]))
        for i, name in columns
        if new[i] is not UNCHANGED_TOAST
    ] + deletes.revive(target.table)
    where = _key_match(target, old_key)
    done = conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE {}").format(ident(target.table), sql.SQL(", ").join(sets), where)
    ).rowcount
    if not done and UNCHANGED_TOAST not in new:
        _upsert(conn, deletes, target, new, columns)  # not there (a stream replayed over a later copy)


def _upsert(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    target: Target,
    new: tuple[Any, ...],
    columns: list[tuple[int, str]],
) -> None:
    names = [name for _, name in columns]
    sets = [
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in names if n not in target.key
    ] + deletes.revive(target.table)
    action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(sets)) if sets else sql.SQL("DO NOTHING")
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
            ident(target.table),
            names_sql(names),
            sql.SQL(", ").join(_typed(target, name, new[i]) for i, name in columns),
            names_sql(target.key),
            action,
        )
    )


def _at_key(target: Target, batch: fold.TableBatch, row: tuple[Any, ...]) -> sql.Composable:
    return _key_match(target, batch.key_of(row))


def _key_match(target: Target, key: tuple[Any, ...]) -> sql.Composable:
    # "=" (not IS NOT DISTINCT FROM, which no index serves); a NULL key value as IS NULL.
    return sql.SQL(" AND ").join(
        sql.SQL("{} IS NULL").format(sql.Identifier(k))
        if v is None
        else sql.SQL("{} = {}").format(sql.Identifier(k), _typed(target, k, v))
        for k, v in zip(target.key, key, strict=True)
    )


def _typed(target: Target, name: str, value: Any) -> sql.Composable:
    return sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(target.table.columns[name].type_sql))
