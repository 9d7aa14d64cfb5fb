"""Objects beyond tables that replicator does not migrate: views, functions, triggers, policies,
grants. ``verify`` lists them with counts, and how many the destination already has under the
same name, so a user knows what is left to move by hand.

The same queries run on both servers. Views and functions are the database's own (schemas of
extensions and the system left out); triggers, policies and grants those of the replicated
tables (elsewhere they do not concern the copy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from replicator.tableobjects import regclass_names

TableName = tuple[str, str]

_USER_SCHEMA = """n.nspname NOT IN ('pg_catalog', 'information_schema', '_replicator', 'pg_toast')
  AND n.nspname NOT LIKE 'pg\\_%%'"""

_NOT_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')"""

_TABLES = """c.oid IN (SELECT to_regclass(x) FROM unnest(%(tables)s::text[]) x)"""

KINDS: dict[str, str] = {
    "views": f"""
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'v' AND {_USER_SCHEMA} AND {_NOT_EXTENSION.format(oid="c.oid")}""",
    "materialized views": f"""
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'm' AND {_USER_SCHEMA} AND {_NOT_EXTENSION.format(oid="c.oid")}""",
    "functions": f"""
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_SCHEMA} AND {_NOT_EXTENSION.format(oid="p.oid")}""",
    "triggers": f"""
        SELECT n.nspname || '.' || c.relname || ': ' || t.tgname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_TABLES}""",
    "policies": f"""
        SELECT n.nspname || '.' || c.relname || ': ' || p.polname
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_TABLES}""",
    "grants": f"""
        SELECT n.nspname || '.' || c.relname || ': ' || a.privilege_type || ' to '
               || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
        WHERE a.grantee <> c.relowner AND {_TABLES}""",
}


def names(conn: psycopg.Connection[Any], kind: str, tables: Iterable[TableName]) -> set[str]:
    """The names of ``kind`` objects (``KINDS``) in ``conn``'s database."""
    rows = conn.execute(KINDS[kind], {"tables": regclass_names(tables)}).fetchall()
    return {r[0] for r in rows}
