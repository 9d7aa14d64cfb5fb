"""A table's live keys streamed in key order, and deleting a set of keys: the destination's half of
the key walk of delta passes (``replicator/keywalk.py``, ``delta/walk.py``)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from replicator import keybuckets
from replicator.destinations.base import DestTable, Fill
from replicator.destinations.postgres.ddl import ident
from replicator.destinations.postgres.deletes import DeletePolicy
from replicator.destinations.postgres.load import copy_in_sql
from replicator.destinations.postgres.stage import KEY_PROBES, match
from replicator.keybuckets import Buckets, Selection, Summary, summaries
from replicator.keyorder import KeyOrder
from replicator.relay import PgCopyIn, PgCopyOut

GONE = sql.Identifier("_replicator_gone_keys")

# Fewer keys than this share of the table: probe the key index for each (see stage.py, KEY_PROBES);
# more: let the planner hash them and scan the table once.
PROBE_SHARE = 0.05


def text_key_encoding(conn: psycopg.Connection[Any]) -> str | None:
    """The encoding text arrives in, when it is the server's own (its bytes then order as
    ``COLLATE "C"`` orders them); None when the session converts it."""
    server = conn.info.parameter_status("server_encoding")
    return server if server and conn.info.parameter_status("client_encoding") == server else None


def live_keys(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    order: KeyOrder,
    only: Selection | None = None,
) -> PgCopyOut:
    """``COPY (SELECT key FROM table WHERE live ORDER BY key) TO STDOUT (FORMAT binary)``, not started;
    with ``only``, just the keys in these buckets (``keybuckets``: a single integer key)."""
    live = deletes.live(table, "d")
    keys = sql.SQL(", ").join(sql.Identifier("d", k) for k in order.names)
    if only is not None:
        (name,) = order.names
        key = sql.Identifier("d", name)
        preds = [*live, only.in_bucket(key)]
        inner = sql.SQL("SELECT {} FROM {} d WHERE {}").format(
            keys, ident(table), sql.SQL(" AND ").join(preds)
        )
        query = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(only.keys(inner, key, name))
        return PgCopyOut(conn, query.as_string(None).encode(), "destination")
    query = sql.SQL("COPY (SELECT {} FROM {} d{} ORDER BY {}) TO STDOUT (FORMAT binary)").format(
        keys,
        ident(table),
        sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(live)) if live else sql.SQL(""),
        order.order_by(alias="d"),
    )
    return PgCopyOut(conn, query.as_string(None).encode(), "destination")


def key_buckets(
    conn: psycopg.Connection[Any], deletes: DeletePolicy, table: DestTable, order: KeyOrder, shift: int
) -> dict[int, Summary]:
    """The summary of each bucket of the live keys (``keybuckets``), by one sequential scan; at
    most ``MAX_GROUPS + 1`` buckets (more: the caller walks every key instead)."""
    (name,) = order.names
    live = deletes.live(table, "d")
    query = sql.SQL("SELECT {} FROM {} d{} GROUP BY 1 LIMIT {}").format(
        Buckets(shift).select_list(sql.Identifier("d", name)),
        ident(table),
        sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(live)) if live else sql.SQL(""),
        sql.Literal(keybuckets.MAX_GROUPS + 1),
    )
    with conn.transaction():
        for setting in keybuckets.SEQUENTIAL_HASHED:  # most pages are not all-visible after a pass
            conn.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
        return summaries(conn.execute(query).fetchall(), "destination")


def delete_keys(
    conn: psycopg.Connection[Any],
    deletes: DeletePolicy,
    table: DestTable,
    key: tuple[str, ...],
    count: int,
    table_rows: int,
    fill: Fill,
) -> int:
    """Delete (or soft-delete) the rows of ``table`` whose key is one of the ``count`` keys that
    ``fill`` writes as binary COPY (columns ``key``). Call in a transaction; the rows removed."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(table.columns[k].type_sql)) for k in key
    )
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(GONE, cols))
    fill(PgCopyIn(conn, copy_in_sql(GONE, key, True)))
    if count < PROBE_SHARE * max(table_rows, 1):
        conn.execute(KEY_PROBES)
    return conn.execute(deletes.delete_using(table, GONE, match(key, False))).rowcount
