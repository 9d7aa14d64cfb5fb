"""Tables without a key: their changes in the order they were made, runs of inserts as one COPY.

Nothing can be folded without a key (two equal rows are two rows), so a keyless table's changes
are applied in order (``apply.py``). Most such tables are insert-only (logs, histories:
pgbench's ``pgbench_history``), where one INSERT statement per row cost ~250 us of our CPU and
round trip per row, 70% of a pgbench catch-up. A run of consecutive inserts is one COPY instead;
an UPDATE or DELETE (REPLICA IDENTITY FULL) ends the run, so the order of changes is kept.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any, cast

import psycopg
from psycopg import sql

from replicator.decoding.changes import Change, Op, Value, Values
from replicator.destinations.base import DestTable
from replicator.destinations.postgres import copytext
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.stage import names_sql

_INSERT = Op.INSERT


def runs(changes: Sequence[Change]) -> Iterator[list[Change] | Change]:
    """The changes in order: consecutive inserts as one list, any other change on its own."""
    run: list[Change] = []
    for ch in changes:
        if ch.op is _INSERT:
            run.append(ch)
            continue
        if run:
            yield run
            run = []
        yield ch
    if run:
        yield run


def copy_inserts(
    conn: psycopg.Connection[Any], table: DestTable, columns: Sequence[tuple[int, str]], width: int,
    inserts: Sequence[Change],
) -> None:
    """COPY the new rows of ``inserts`` into ``table``: ``columns`` are (position in the stream's
    values, destination column) of the columns it stores; ``width`` the stream's column count."""
    positions = [i for i, _ in columns]
    news = cast(list[Values], [ch.new for ch in inserts])  # an insert always has a new row
    rows: Sequence[Sequence[Value]]
    if positions == list(range(width)):
        rows = news
    elif len(positions) == 1:
        (i,) = positions
        rows = [(row[i],) for row in news]
    else:
        rows = list(map(operator.itemgetter(*positions), news))
    text = copytext.copy_text(rows, len(positions))
    with conn.cursor().copy(
        sql.SQL("COPY {} ({}) FROM STDIN").format(ident(table), names_sql([n for _, n in columns]))
    ) as copy:
        copy.write(text)
