"""A table described from the source catalog the way pgoutput describes it in a Relation message.

wal2json does not send table oids, typmods, replica identity or key flags; the wal2json decoder
asks this (once per table shape) to fill them in.
"""

from __future__ import annotations

from typing import Any

import psycopg

from replicator.decoding.changes import Column, Relation, ReplicaIdentity
from replicator.decoding.wal2json import TableInfo

# Key flags as pgoutput sets them: every column under REPLICA IDENTITY FULL, else the columns of
# the identity index (the primary key for DEFAULT, the chosen index for USING INDEX).
_QUERY = """
SELECT c.oid, c.relreplident, a.attname, a.atttypid, a.atttypmod, a.attgenerated <> '' AS generated,
       c.relreplident = 'f' OR coalesce(a.attnum = ANY (i.indkey::int2[]), false) AS is_key
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
     AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
WHERE n.nspname = %s AND c.relname = %s
ORDER BY a.attnum
"""


class CatalogDescriber:
    """``describe(schema, table)`` for the wal2json decoder, on its own (autocommit) connection."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def __call__(self, schema: str, table: str) -> TableInfo | None:
        return describe_table(self.conn, schema, table)


def describe_table(conn: psycopg.Connection[Any], schema: str, table: str) -> TableInfo | None:
    rows = conn.execute(_QUERY, (schema, table)).fetchall()
    if not rows:
        return None
    columns = []
    generated = set()
    for _oid, _ident, name, type_oid, typmod, is_generated, is_key in rows:
        if is_generated:
            generated.add(name)  # not published by pgoutput (PostgreSQL 15)
        else:
            columns.append(Column(name, type_oid, typmod, bool(is_key)))
    oid, ident = rows[0][0], rows[0][1]
    return TableInfo(
        Relation(oid, schema, table, ReplicaIdentity(ident), tuple(columns)), frozenset(generated)
    )
