"""Small units in one round trip: rows as array parameters, statements sent as one libpq pipeline.

A realtime destination commit of a few source transactions used to cost a round trip per
statement: BEGIN, per table a COPY into a stage (two) and a merge, a savepoint around rows
COPYed straight in, the checkpoint and COMMIT; about 15 for a pgbench transaction. Under load
each one waits for the destination backend and then for this process to be scheduled, and that
wait, not the work, made most of our lag above PostgreSQL's own subscriber (issue 11, measured
at 1000 tps). So a table's part of a unit that is small and plain is written with statements
that carry their rows as text arrays (``unnest``), queued (``Writer._pending``) and sent with
the checkpoint and COMMIT as one pipeline: one round trip, no stage, plans prepared by psycopg
after a few uses. Anything else keeps COPY -> stage -> merge (``stage.py``) and sends what is
queued first, so statements still run in the unit's order.

The statements mean what the staged ones mean:
- Values travel as text and are cast to the column's type *without* its typmod; the assignment
  to the column then applies the typmod as COPY's input does (a value too long for a
  varchar(n) fails instead of being cut, as an explicit cast would do).
- Deleted keys go as one array (``= ANY``), as ``Writer._delete`` does for a one-column key.
- Upserted rows (new and existing alike) go through one statement: a data-modifying CTE inserts
  those whose key has no row, the main UPDATE sets those whose key has one. Both see the
  snapshot from before the statement, so each row is written once, by one of them; no unique
  index is needed (``stage.merge`` does the same in two statements and a round trip between).
- A keyless table's inserts (its only kind of change here) are one INSERT ... SELECT.
What stays staged: truncations, key moves and rows with unchanged TOAST values, filtered tables
(conditions), nullable keys, composite-key deletes, batches replayed in order, and more than
``MAX_ROWS`` rows of a table in a unit (COPY is cheaper there, and the arrays would grow large).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import psycopg
from psycopg import sql

from replicator.decoding import fold
from replicator.decoding.changes import Op
from replicator.destinations.base import DestTable, TableName, Target
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.stage import match, names_sql, update_from

MAX_ROWS = 1000  # rows of one table in one unit written this way at most

Statement = tuple[sql.Composed | sql.SQL | str, Sequence[Any] | None]

# A type by its schema and internal name (pg_catalog.bpchar, pg_catalog."bit", pg_catalog._bpchar for
# char(n)[]): such a name carries no typmod. format_type's SQL spellings would not do: "character"
# and "bit" without a length mean a length of 1, and a cast to them cuts values to one character.
# A domain (or an array of one) is walked down to its base type: a cast to a domain over varchar(3)
# applies the length as an explicit cast does, cutting the value; the assignment to the column then
# checks the length, and the domain's constraints, as COPY's input would.
_PLAIN_TYPES = """
WITH RECURSIVE col AS (
    SELECT a.attname, t.oid AS typ, false AS arr
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typlen = -1
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
      AND (e.oid IS NULL OR e.typtype <> 'd')
  UNION ALL
    SELECT a.attname, e.oid, true
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_type e ON e.oid = t.typelem AND t.typlen = -1 AND e.typtype = 'd'
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
), down(attname, typ, arr) AS (
    SELECT attname, typ, arr FROM col
  UNION ALL
    SELECT d.attname, t.typbasetype, d.arr FROM down d JOIN pg_type t ON t.oid = d.typ WHERE t.typtype = 'd'
)
SELECT d.attname, format('%%I.%%I', n.nspname, t.typname)
FROM down d JOIN pg_type b ON b.oid = d.typ AND b.typtype <> 'd'
JOIN pg_type t ON t.oid = CASE WHEN d.arr THEN b.typarray ELSE b.oid END
JOIN pg_namespace n ON n.oid = t.typnamespace"""


@dataclass(frozen=True)
class PlainTypes:
    """A table's column types without typmods, looked up once per shape of the table."""

    shape: tuple[tuple[str, str], ...]  # (column, type_sql) of the table described
    types: dict[str, str]


def _shape(table: DestTable) -> tuple[tuple[str, str], ...]:
    return tuple((c.name, c.type_sql) for c in table.columns.values())


def known(table: DestTable, cache: dict[TableName, PlainTypes]) -> bool:
    """Whether ``plain_types`` answers without a statement."""
    found = cache.get(table.key)
    return found is not None and found.shape == _shape(table)


def plain_types(
    conn: psycopg.Connection[Any], table: DestTable, cache: dict[TableName, PlainTypes]
) -> dict[str, str]:
    """The types of ``table``'s columns without typmods (cached in ``cache`` while its shape holds)."""
    shape = _shape(table)
    found = cache.get(table.key)
    if found is None or found.shape != shape:
        name = ident(table).as_string(conn)
        rows = conn.execute(_PLAIN_TYPES, (name, name)).fetchall()
        found = cache[table.key] = PlainTypes(shape, {str(r[0]): str(r[1]) for r in rows})
    return found.types


def eligible(target: Target, batch: fold.TableBatch) -> bool:
    """Whether this table's part of a unit can be written with ``statements`` (see the docstring)."""
    if batch.truncated or target.condition is not None or target.source_condition is not None:
        return False
    if batch.keyless:
        return len(batch.in_order) <= MAX_ROWS and all(ch.op is Op.INSERT for ch in batch.in_order)
    if target.key_nullable or (target.in_order_fallback and batch.keep_order):
        return False
    p = batch.prepared
    if p is None or p.moves or p.partial:  # None: not prepared by the reader (copytext.prepare_all)
        return False
    if p.deletes:
        type_sql = target.table.columns[target.key[0]].type_sql
        if len(target.key) != 1 or p.deleted_keys is None or type_sql.endswith("]"):
            return False
    return len(p.deletes) + len(p.fresh) + len(p.existing) <= MAX_ROWS


class Texts:
    """Statement texts by what they depend on: composed once, then the same string each time, so
    psycopg prepares them after a few uses (the server parses and plans them no more)."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self._texts: dict[tuple[Any, ...], str] = {}

    def get(self, key: tuple[Any, ...], build: Callable[[], sql.Composed]) -> str:
        found = self._texts.get(key)
        if found is None:
            if len(self._texts) > 1000:  # tables reshaped many times: start over
                self._texts.clear()
            found = self._texts[key] = build().as_string(self.conn)
        return found


def statements(
    target: Target,
    batch: fold.TableBatch,
    columns: Sequence[tuple[int, str]],
    types: dict[str, str],
    deletes: DeletePolicy,
    texts: Texts,
) -> list[Statement]:
    """The statements that write an ``eligible`` batch; ``columns``: (position in the stream's
    values, destination column) of the columns the destination stores."""
    table = target.table
    # What a statement's text depends on besides its kind: the table as described, the columns
    # written, the key, and the delete policy.
    depends = (table.key, _shape(table), tuple(columns), target.key, deletes.soft)
    if batch.keyless:
        rows = [ch.new for ch in batch.in_order if ch.new is not None]  # inserts: all have one
        query = texts.get(("insert", *depends), lambda: _insert_rows(table, columns, types))
        return [(query, _arrays(columns, rows))]
    p = batch.prepared
    assert p is not None
    out: list[Statement] = []
    if p.deletes:
        query = texts.get(("delete", *depends), lambda: _delete_keys(target, deletes, types))
        out.append((query, (p.deleted_keys,)))
    ops = [*p.fresh, *p.existing]
    if ops:
        query = texts.get(("upsert", *depends), lambda: _upsert_rows(target, columns, types, deletes))
        out.append((query, _arrays(columns, [op.values for op in ops])))
    return out


def _delete_keys(target: Target, deletes: DeletePolicy, types: dict[str, str]) -> sql.Composed:
    key = target.key[0]
    # the plain type: a cast to varchar(3)[] (or a domain of it) would cut a longer key into another
    where = sql.SQL("{} = ANY({}::{}[])").format(sql.Identifier(key), sql.Placeholder(), sql.SQL(types[key]))
    return deletes.delete_where(target.table, where)


def _rows_sql(
    columns: Sequence[tuple[int, str]], types: dict[str, str]
) -> sql.Composed:
    """``SELECT`` of the rows passed as one text array per column, each cast to its column's type."""
    names = [n for _, n in columns]
    return sql.SQL("SELECT {} FROM unnest({}) AS s({})").format(
        sql.SQL(", ").join(
            sql.SQL("s.{0}::{1} AS {0}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names
        ),
        sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Placeholder()) for _ in names),
        names_sql(names),
    )


def _arrays(columns: Sequence[tuple[int, str]], rows: Sequence[Sequence[Any]]) -> list[str]:
    """One ``text[]`` literal per column. Built here rather than passed as lists: psycopg formats
    a list element by element in Python (about 2 ms for a 140-transaction pgbench commit, before
    anything is sent); this is a few joins and one scan for characters that need escaping."""
    return [text_array([row[i] for row in rows]) for i, _ in columns]


def text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of text values, ``None`` as NULL: every element double-quoted
    (so commas, braces, spaces and the word NULL stay values), backslashes and double quotes
    escaped only when some value holds one."""
    if None in values:
        present = [v for v in values if v is not None]
        body = ",".join("NULL" if v is None else '"' + v + '"' for v in values)
    else:
        present = cast(list[str], values)
        body = '"' + '","'.join(present) + '"' if present else ""
    joined = "".join(present)
    if '"' in joined or "\\" in joined:
        body = ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
        )
    return "{" + body + "}"


def _insert_rows(table: DestTable, columns: Sequence[tuple[int, str]], types: dict[str, str]) -> sql.Composed:
    names = names_sql([n for _, n in columns])
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM ({}) AS r").format(
        ident(table), names, names, _rows_sql(columns, types)
    )


def _upsert_rows(
    target: Target,
    columns: Sequence[tuple[int, str]],
    types: dict[str, str],
    deletes: DeletePolicy,
) -> sql.Composed:
    table = target.table
    names = [n for _, n in columns]
    cols = names_sql(names)
    insert = sql.SQL(
        "INSERT INTO {} ({}) SELECT {} FROM _rows AS s WHERE NOT EXISTS (SELECT FROM {} AS d WHERE {})"
    ).format(ident(table), cols, cols, ident(table), match(target.key, False))
    update = update_from(table, sql.Identifier("_rows"), names, target.key, False, deletes)
    with_rows = sql.SQL("WITH _rows AS ({})").format(_rows_sql(columns, types))
    if update is None:  # only key columns: nothing to set on a row that is there
        return sql.SQL("{} {}").format(with_rows, insert)
    # The UPDATE does not see the CTE's inserts (one snapshot): each row is written once.
    return sql.SQL("{}, _new AS ({}) {}").format(with_rows, insert, update)
