"""Publications (what pgoutput streams): create what is missing, validate what is reused.

A publication we reuse must publish INSERT, UPDATE, DELETE and TRUNCATE of every table we
replicate, every column we need, and no row filter (a filter would silently drop changes: a row
updated out of the filter would never be deleted at the destination). Problems are reported
together, each with the SQL that fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import SourceError

log = logging.getLogger(__name__)

_PUBLISH = "insert, update, delete, truncate"
# Tables without a replica identity (no key, REPLICA IDENTITY DEFAULT): a publication that
# publishes their updates or deletes makes those statements fail at the source, so they are
# published in a publication of their own that carries inserts and truncates only.
INSERT_ONLY = "insert, truncate"


def insert_only_publication(publication: str) -> str:
    """The name of the publication of ``publication``'s tables without a replica identity."""
    suffix = "_insert_only"
    return publication[: 63 - len(suffix)] + suffix


@dataclass(frozen=True)
class PublishedTable:
    """A table to replicate; ``columns`` None means every column."""

    schema: str
    table: str
    columns: tuple[str, ...] | None = None
    # A row filter (the filter's conditions, where that is safe: source/rowfilter.py), as written
    # and as the server prints it back.
    row_filter: str | None = None
    row_filter_printed: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


@dataclass(frozen=True)
class _TableFacts:
    relkind: str  # 'r' table, 'p' partitioned table
    replica_identity: str
    columns: tuple[str, ...]  # published-able columns (not generated, not dropped), by attnum
    identity_columns: tuple[str, ...]  # the replica identity index's columns (DEFAULT / INDEX)


def ensure_publication(
    conn: psycopg.Connection[Any],
    name: str,
    tables: Sequence[PublishedTable],
    publish: str = _PUBLISH,
    not_here: Sequence[PublishedTable] = (),
) -> bool:
    """Create publication ``name`` for ``tables`` if it does not exist, else validate it. Whether created.

    ``publish``: the operations it publishes (``INSERT_ONLY`` for tables without a replica identity).
    ``not_here``: tables an existing publication must not publish updates and deletes of.
    ``conn`` should be in autocommit mode. Raises SourceError naming every problem and its fix.
    """
    facts = _table_facts(conn, tables)
    missing = [t.qualified_name for t in tables if (t.schema, t.table) not in facts]
    if missing:
        raise SourceError(f"cannot publish {', '.join(missing)}: no such table in {conn.info.dbname!r}")
    if publication_exists(conn, name):
        problems = publication_problems(conn, name, tables, facts, publish, not_here)
        if problems:
            raise SourceError(
                f"publication {name!r} cannot be used as it is:\n  - " + "\n  - ".join(problems)
            )
        return False
    command = create_publication_sql(conn, name, tables, facts, publish)
    try:
        conn.execute(command)
    except psycopg.Error as e:
        detail = f" ({e.diag.message_detail.strip().rstrip('.')})" if e.diag.message_detail else ""
        if e.sqlstate == "42501":  # insufficient_privilege: then, and only then, it is about rights
            fix = f"ask the tables' owner (or a superuser) to run: {command.as_string(conn)}"
        else:
            fix = (
                "make every table publishable (UNLOGGED and temporary tables are not: ALTER TABLE ... SET "
                "LOGGED), "
                "or leave it out with a filter"
            )
        raise SourceError(
            f"cannot create publication {name!r}: {e.diag.message_primary or e}{detail}\n  {fix}"
        ) from None
    log.info("created publication %s for %d table(s)", name, len(tables))
    return True


def publication_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s", (name,)).fetchone()
    return row is not None


def ensure_empty_publication(conn: psycopg.Connection[Any], name: str, publish: str) -> None:
    """Publication ``name`` with no tables yet, unless it exists (then it is validated when used)."""
    if publication_exists(conn, name):
        return
    conn.execute(
        sql.SQL("CREATE PUBLICATION {} WITH ({})").format(sql.Identifier(name), _options(conn, publish))
    )
    log.info("created publication %s (no tables yet)", name)


def create_publication_sql(
    conn: psycopg.Connection[Any],
    name: str,
    tables: Sequence[PublishedTable],
    facts: dict[tuple[str, str], _TableFacts] | None = None,
    publish: str = _PUBLISH,
) -> sql.Composed:
    """CREATE PUBLICATION for ``tables``: column lists on PostgreSQL 15+, partitions via their root."""
    facts = facts if facts is not None else _table_facts(conn, tables)
    version = conn.info.server_version
    items: list[sql.Composable] = []
    for t in tables:
        item: sql.Composable = t.identifier()
        columns = _column_list(t, facts[(t.schema, t.table)]) if version >= 150000 else None
        if columns is not None:
            item = sql.SQL("{} ({})").format(item, sql.SQL(", ").join(map(sql.Identifier, columns)))
        if t.row_filter is not None:
            item = sql.SQL("{} WHERE ({})").format(item, sql.SQL(t.row_filter))
        items.append(item)
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH ({})").format(
        sql.Identifier(name), sql.SQL(", ").join(items), _options(conn, publish)
    )


def _options(conn: psycopg.Connection[Any], publish: str) -> sql.Composable:
    return publication_options(conn.info.server_version, publish)


def publication_options(server_version: int, publish: str = _PUBLISH) -> sql.Composable:
    """The options of every publication we make (WITH, or ALTER ... SET; the provisioning program's
    too): its operations, and partitions published via their root (PostgreSQL 13+)."""
    options: list[sql.Composable] = [sql.SQL("publish = {}").format(sql.Literal(publish))]
    if server_version >= 130000:
        options.append(sql.SQL("publish_via_partition_root = true"))
    return sql.SQL(", ").join(options)


def publication_problems(
    conn: psycopg.Connection[Any],
    name: str,
    tables: Sequence[PublishedTable],
    facts: dict[tuple[str, str], _TableFacts] | None = None,
    publish: str = _PUBLISH,
    not_here: Sequence[PublishedTable] = (),
) -> list[str]:
    """What is wrong with the existing publication ``name`` for replicating ``tables``, with fixes."""
    facts = facts if facts is not None else _table_facts(conn, tables)
    version = conn.info.server_version
    pub = sql.Identifier(name)
    via_root = "pubviaroot" if version >= 130000 else "false"
    row = conn.execute(
        f"SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, {via_root} "
        "FROM pg_catalog.pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return [f"publication {name!r} does not exist"]
    _all, ins, upd, dele, trunc, viaroot = row
    problems = []
    wanted_ops = [op.strip() for op in publish.split(",")]
    have = {"insert": ins, "update": upd, "delete": dele, "truncate": trunc}
    fix = sql.SQL("ALTER PUBLICATION {} SET (publish = {});").format(pub, sql.Literal(publish))
    absent = [op for op in wanted_ops if not have[op]]
    if absent:
        problems.append(f"it does not publish {', '.join(absent)}; fix: {fix.as_string(conn)}")
    extra_ops = [op for op in ("update", "delete") if op not in wanted_ops and have[op]]
    if extra_ops:
        problems.append(
            f"it publishes {' and '.join(extra_ops)} of tables without a replica identity, which makes those "
            f"statements fail at the source; fix: {fix.as_string(conn)}"
        )
    extra = ", attnames, rowfilter" if version >= 150000 else ", NULL::name[], NULL::text"
    published = {
        (s, t): (cols, rowfilter)
        for s, t, cols, rowfilter in conn.execute(
            f"SELECT schemaname, tablename{extra} FROM pg_catalog.pg_publication_tables WHERE pubname = %s",
            (name,),
        )
    }
    for t in not_here:
        if (t.schema, t.table) in published and (upd or dele):
            drop = sql.SQL("ALTER PUBLICATION {} DROP TABLE {};").format(pub, t.identifier())
            problems.append(
                f"{t.qualified_name} has no replica identity and the publication publishes its updates and "
                f"deletes, which makes them fail at the source; fix: {drop.as_string(conn)} (it is then "
                f"published for inserts and truncates only, in a publication of its own)"
            )
    for t in tables:
        f = facts[(t.schema, t.table)]
        readd = sql.SQL("ALTER PUBLICATION {} DROP TABLE {}; ").format(pub, t.identifier())
        add = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(pub, t.identifier())
        wanted = _column_list(t, f) if version >= 150000 else None
        if wanted is not None:
            add = sql.SQL("{} ({})").format(add, sql.SQL(", ").join(map(sql.Identifier, wanted)))
        if t.row_filter is not None:
            add = sql.SQL("{} WHERE ({})").format(add, sql.SQL(t.row_filter))
        add = sql.SQL("{};").format(add)
        if (t.schema, t.table) not in published:
            if f.relkind == "p" and not viaroot:
                fix = sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true);").format(pub)
                problems.append(
                    f"{t.qualified_name} is partitioned and the publication does not publish via the "
                    f"partition root (changes would arrive under each partition's name); fix: "
                    f"{fix.as_string(conn)}"
                )
            else:
                problems.append(f"it does not include {t.qualified_name}; fix: {add.as_string(conn)}")
            continue
        cols, rowfilter = published[(t.schema, t.table)]
        if rowfilter is not None and rowfilter != t.row_filter_printed:
            problems.append(
                f"it filters the rows of {t.qualified_name} (WHERE {rowfilter})"
                + (f", not by the filter's conditions (WHERE {t.row_filter_printed})" if t.row_filter else
                   ": changes to rows outside the filter would be lost")
                + f"; fix: {(readd + add).as_string(conn)}"
            )
        elif rowfilter is None and t.row_filter is not None:
            problems.append(
                f"it does not filter the rows of {t.qualified_name} by the filter's conditions; "
                f"fix: {(readd + add).as_string(conn)}"
            )
        needed = t.columns if t.columns is not None else f.columns
        if cols is not None:
            absent_cols = [c for c in needed if c not in cols]
            if absent_cols:
                problems.append(
                    f"its column list for {t.qualified_name} leaves out {', '.join(absent_cols)}; "
                    f"fix: {(readd + add).as_string(conn)}"
                )
    return problems


def _column_list(t: PublishedTable, f: _TableFacts) -> tuple[str, ...] | None:
    """The column list to publish: the asked columns plus the replica identity (UPDATE needs it)."""
    if t.columns is None or f.replica_identity == "f":
        return None  # REPLICA IDENTITY FULL: a column list must cover every column anyway
    wanted = set(t.columns) | set(f.identity_columns)
    if wanted >= set(f.columns):
        return None
    return tuple(c for c in f.columns if c in wanted)


_FACTS_QUERY = """
SELECT n.nspname, c.relname, c.relkind, c.relreplident,
       array(SELECT a.attname::text FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum),
       array(SELECT a.attname::text FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey::int2[])
             WHERE i.indrelid = c.oid
               AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
             ORDER BY a.attnum)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND c.relkind IN ('r', 'p')
"""


def _table_facts(
    conn: psycopg.Connection[Any], tables: Sequence[PublishedTable]
) -> dict[tuple[str, str], _TableFacts]:
    rows = conn.execute(_FACTS_QUERY, ([t.schema for t in tables], [t.table for t in tables])).fetchall()
    return {
        (s, t): _TableFacts(kind, ident, tuple(cols), tuple(idcols))
        for s, t, kind, ident, cols, idcols in rows
    }
