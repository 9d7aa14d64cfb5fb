"""Session settings every connection that decodes changes uses, so values print the same everywhere.

Output functions run in the decoding session (walsender or SQL backend) and follow its settings;
a server configured with another DateStyle or ``bytea_output = escape`` would otherwise hand us
text the destination may read differently. These are the settings PostgreSQL's own subscriber
asks for, plus ``bytea_output`` (wal2json assumes hex) and UTF-8.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

OUTPUT_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}


def apply_output_settings(conn: psycopg.Connection[Any]) -> None:
    """SET the output settings on ``conn`` (works on replication connections too: simple protocol)."""
    for name, value in OUTPUT_SETTINGS.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
