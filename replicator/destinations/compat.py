"""Can the destination take the selected tables? Checked for every table before any is touched.

A snapshot empties an existing destination table before loading it. If that table turned out to
lack a column, hold another type or refuse our writes, the run failed *after* emptying it (and,
with ``--fresh``, after emptying every other table too). So before the first write of a run:

- the destination database must accept writes (not a hot standby, not read-only by default);
- every existing destination table must have every selected column, with a type that holds
  every source value (the same type, or a known widening such as integer -> bigint,
  varchar(10) -> varchar(20) or text, timestamp(3) -> timestamp), no NOT NULL column the copy
  leaves empty, and INSERT, UPDATE, DELETE and TRUNCATE for our user.

Every problem of every table is reported at once, each with the statement that fixes it (or:
drop the table and replicator recreates it like the source).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from replicator.destinations import postgres as dest
from replicator.errors import DestinationError
from replicator.filters import SelectedTable

PRIVILEGES = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")

# Each type and the types that hold all of its values (without a type modifier).
_WIDER: dict[str, tuple[str, ...]] = {
    "smallint": ("integer", "bigint", "numeric"),
    "integer": ("bigint", "numeric"),
    "bigint": ("numeric",),
    "real": ("double precision",),
    "character varying": ("text",),
    "character": ("character varying", "text"),
    "text": ("character varying",),
}
_TYPMOD = re.compile(r"^(?P<base>[^(\[]+)(?:\((?P<mod>[^)]*)\))?(?P<rest>.*)$")


def _split(type_sql: str) -> tuple[str, tuple[int, ...] | None, str]:
    """``character varying(12)`` -> ("character varying", (12,), ""); ``timestamp(3) with time zone``
    -> ("timestamp with time zone", (3,), ""); a trailing ``[]`` is returned as the third part."""
    m = _TYPMOD.match(type_sql)
    if not m:
        return type_sql, None, ""
    base, mod, rest = m.group("base").strip(), m.group("mod"), m.group("rest")
    arrays = rest[rest.find("["):] if "[" in rest else ""
    suffix = rest[: rest.find("[")] if "[" in rest else rest
    base = (base + suffix).strip()
    numbers = tuple(int(x) for x in mod.split(",")) if mod and all(x.strip().isdigit() for x in mod.split(",")) else None
    return base, numbers, arrays


def type_holds(source: str, destination: str) -> bool:
    """Whether a destination column of type ``destination`` holds every value of ``source``."""
    if source == destination or destination == "text":
        return True
    s_base, s_mod, s_arr = _split(source)
    d_base, d_mod, d_arr = _split(destination)
    if s_arr != d_arr:
        return False
    if s_base == d_base:
        if d_mod is None:
            return True  # varchar -> varchar, numeric(10,2) -> numeric, timestamp(3) -> timestamp
        if s_mod is None:
            return False
        if s_base == "numeric":
            (sp, ss), (dp, ds) = (s_mod + (0,))[:2], (d_mod + (0,))[:2]
            return ds >= ss and dp - ds >= sp - ss
        return len(s_mod) == 1 and len(d_mod) == 1 and d_mod[0] >= s_mod[0]
    if d_base in _WIDER.get(s_base, ()):
        return d_mod is None or (s_mod is not None and len(d_mod) == 1 and d_mod[0] >= s_mod[0])
    return False


def destination_problems(conn: psycopg.Connection[Any], tables: Iterable[SelectedTable]) -> list[str]:
    """Everything that stops these tables from being replicated into ``conn``'s database, one line each."""
    problems = _read_only(conn)
    if problems:
        return problems
    for st in tables:
        found = dest.describe_table(conn, st.table.schema, st.table.name)
        if found is not None:
            problems.extend(_table_problems(conn, st, found))
    return problems


def check_destination_tables(conn: psycopg.Connection[Any], tables: Iterable[SelectedTable]) -> None:
    """Raise a DestinationError naming every problem; call before the first write of a run."""
    problems = destination_problems(conn, tables)
    if problems:
        raise DestinationError(
            "the destination cannot take the selected tables; nothing was changed:\n  " + "\n  ".join(problems)
        )


def _read_only(conn: psycopg.Connection[Any]) -> list[str]:
    row = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool, current_database()"
    ).fetchone()
    assert row is not None
    if row[0]:
        return ["the destination server is a hot standby (read-only): point the destination at its primary"]
    if row[1]:
        fix = f"ALTER DATABASE {_quoted(conn, row[2])} SET default_transaction_read_only = off"
        return [(
            f"the destination database {row[2]} is read-only (default_transaction_read_only = on); fix: {fix}; "
            f"(or point the destination at a writable database)"
        )]
    return []


def _table_problems(conn: psycopg.Connection[Any], st: SelectedTable, found: dest.DestTable) -> list[str]:
    name = st.display
    ident = _quoted(conn, found.schema, found.name)
    out: list[str] = []
    for c in st.columns:
        have = found.columns.get(c.name)
        col = _quoted(conn, c.name)
        if have is None:
            out.append(
                f"{name}: column {c.name} is missing at the destination; fix: ALTER TABLE {ident} ADD COLUMN "
                f"{col} {c.type_sql}; (or DROP TABLE {ident}; and replicator recreates it like the source)"
            )
        elif not have.generated and not type_holds(c.type_sql, have.type_sql):
            out.append(
                f"{name}: column {c.name} is {c.type_sql} at the source but {have.type_sql} at the destination, "
                f"which cannot hold every value; fix: ALTER TABLE {ident} ALTER COLUMN {col} TYPE {c.type_sql}; "
                f"(or DROP TABLE {ident}; and replicator recreates it like the source)"
            )
    copied = {c.name for c in st.columns}
    for col_name in _not_null_without_default(conn, found):
        if col_name not in copied:
            col = _quoted(conn, col_name)
            out.append(
                f"{name}: destination column {col_name} is NOT NULL without a default, and the source sends no "
                f"value for it; fix: ALTER TABLE {ident} ALTER COLUMN {col} DROP NOT NULL; (or give it a default)"
            )
    missing = _missing_privileges(conn, found)
    if missing:
        out.append(
            f"{name}: the destination user lacks {', '.join(missing)} on it; fix: GRANT {', '.join(missing)} ON "
            f"{ident} TO {_quoted(conn, conn.info.user)}; (as its owner)"
        )
    return out


def _quoted(conn: psycopg.Connection[Any], *names: str) -> str:
    """``schema.name`` quoted only where SQL needs it (the server knows its keywords)."""
    row = conn.execute(
        sql.SQL("SELECT {}").format(sql.SQL(" || '.' || ").join(sql.SQL("quote_ident(%s)") for _ in names)), names
    ).fetchone()
    assert row is not None
    return str(row[0])


def _not_null_without_default(conn: psycopg.Connection[Any], found: dest.DestTable) -> list[str]:
    rows = conn.execute(
        """SELECT a.attname FROM pg_attribute a
           WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
             AND a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
           ORDER BY a.attnum""",
        (found.ident.as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def _missing_privileges(conn: psycopg.Connection[Any], found: dest.DestTable) -> list[str]:
    ident = found.ident.as_string(conn)
    row = conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(sql.SQL("has_table_privilege(%s::regclass, {})").format(sql.Literal(p)) for p in PRIVILEGES)
        ),
        (ident,) * len(PRIVILEGES),
    ).fetchone()
    assert row is not None
    return [p for p, granted in zip(PRIVILEGES, row, strict=True) if not granted]

