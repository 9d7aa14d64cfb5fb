"""``session_replication_role = replica`` for the sessions that write replicated rows.

PostgreSQL's own apply workers run this way: the destination's triggers (``ENABLE REPLICA``
and ``ENABLE ALWAYS`` ones aside) and its foreign keys' checks, which are triggers too, do not
fire on rows that are copies. So a foreign key cannot refuse a row because the row it points
at comes later in the same destination transaction (changes are applied per table, not in
source order), a cascade never deletes at the destination what the source deleted on its own,
and an audit trigger never records a copy as a write. UNIQUE, EXCLUDE and CHECK constraints are
not triggers and stay enforced.

Setting it needs superuser, ``SET`` on the parameter (``GRANT SET ON PARAMETER``, PostgreSQL
15+) or, on RDS and Aurora, ``rds_superuser``. A role without it may replicate only into tables
that have neither triggers nor foreign keys: ``triggers_on`` lists what would fire, and the run
refuses at start, naming the grant.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from replicator.tableobjects import regclass_names

TableName = tuple[str, str]


def may_set(conn: psycopg.Connection[Any]) -> bool:
    """Whether this session's user may set ``session_replication_role`` (asks, sets nothing)."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        return True
    if _has_role(conn, "rds_superuser"):
        row = conn.execute("SELECT pg_has_role(current_user, 'rds_superuser', 'MEMBER')").fetchone()
    if row and row[0]:
        return True
    if conn.info.server_version >= 150000:
        granted = conn.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')").fetchone()
        return bool(granted and granted[0])
    return False


def _has_role(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def set_replica(conn: psycopg.Connection[Any]) -> bool:
    """Set ``session_replication_role = replica`` on this session if its user may; whether it did."""
    if not may_set(conn):
        return False
    try:
        conn.execute("SELECT set_config('session_replication_role', 'replica', false)")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def fix(conn: psycopg.Connection[Any]) -> str:
    """The grant that lets this session's user set the role (as the administrator runs it)."""
    row = conn.execute("SELECT quote_ident(current_user)").fetchone()
    user = str(row[0]) if row else conn.info.user
    if _has_role(conn, "rds_superuser"):
        return f"GRANT rds_superuser TO {user};"
    if conn.info.server_version >= 150000:
        return f"GRANT SET ON PARAMETER session_replication_role TO {user};  -- as a superuser"
    return f"ALTER ROLE {user} SUPERUSER;  -- PostgreSQL before 15 lets only superusers set it"


def triggers_on(conn: psycopg.Connection[Any], tables: Iterable[TableName]) -> list[str]:
    """The enabled triggers on these tables that replica role would silence: user triggers
    (``ENABLE`` / origin-enabled) and foreign key checks and actions."""
    rows = conn.execute(
        """SELECT n.nspname || '.' || c.relname || ': '
                  || CASE WHEN t.tgisinternal AND t.tgconstraint <> 0
                          THEN 'foreign key ' || k.conname ELSE 'trigger ' || t.tgname END
           FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_constraint k ON k.oid = t.tgconstraint
           WHERE t.tgenabled = 'O'
             AND (NOT t.tgisinternal OR k.contype = 'f')
             AND c.oid IN (SELECT to_regclass(x) FROM unnest(%s::text[]) x)
           ORDER BY 1""",
        (regclass_names(tables),),
    ).fetchall()
    return sorted({r[0] for r in rows})
