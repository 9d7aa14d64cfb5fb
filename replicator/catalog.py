"""What the source holds: tables, columns, keys, replica identity, partitions and user types.

One query set, run once per run (inside the snapshot's transaction when there is one), so every
later step reads the same picture. ``search_path`` is emptied while reading so ``format_type``
qualifies every non-catalog type with its schema, which is what the destination DDL needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

# OIDs below this are assigned at initdb and equal on every server of a major version.
FIRST_NORMAL_OID = 16384

EXCLUDED_SCHEMAS = ("pg_catalog", "information_schema", "_replicator", "_replicator_ddl")


@dataclass(frozen=True)
class Column:
    name: str
    attnum: int
    type_sql: str  # format_type(): schema-qualified for user types, with typmod
    type_oid: int
    not_null: bool
    generated_expr: str | None = None  # set for STORED generated columns
    collation: str | None = None  # quoted, schema-qualified, only when not the type's default

    @property
    def is_generated(self) -> bool:
        return self.generated_expr is not None


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    kind: str  # 'r' table, 'p' partitioned table
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    replica_identity: str  # 'd' default, 'f' full, 'i' index, 'n' nothing
    identity_index_columns: tuple[str, ...]
    estimated_rows: int
    pages: int
    partitions: tuple[Partition, ...] = ()
    unlogged: bool = False  # no WAL, so logical decoding never sees its changes

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def identity_gap(self) -> str | None:
        """Why the source cannot log which row an UPDATE or DELETE of this table touched; None
        when it can. The one replica identity rule (realtime's warning and ``check`` use it).

        FULL logs the whole old row; DEFAULT the primary key, if there is one; USING INDEX the
        index's columns (an identity index that was dropped logs nothing); NOTHING nothing.
        Without it, the table's UPDATEs and DELETEs fail at the source once it is published.
        """
        if self.replica_identity == "f" or self.identity_index_columns:
            return None
        if self.replica_identity == "n":
            return "REPLICA IDENTITY NOTHING"
        if self.replica_identity == "i":
            return "REPLICA IDENTITY USING INDEX of an index that no longer exists"
        return "no primary key and REPLICA IDENTITY DEFAULT"


@dataclass(frozen=True)
class Partition:
    """A leaf partition of a partitioned table: copied on its own, landing in the root's table."""

    schema: str
    name: str
    estimated_rows: int
    pages: int

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class UserType:
    """A type the destination may need to recreate before a table can use it."""

    oid: int
    schema: str
    name: str
    kind: str  # typtype: 'e' enum, 'd' domain, 'c' composite, 'r' range, 'm' multirange, 'b' base
    category: str  # typcategory: 'A' for arrays
    element_oid: int  # arrays: element type; 0 otherwise
    base_oid: int  # domains: base type
    base_sql: str | None  # domains: base type with typmod
    extension: str | None  # the extension that owns it, if any
    enum_labels: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str, int], ...] = ()  # composite: (name, type_sql, type_oid)
    range_subtype_oid: int = 0
    range_subtype_sql: str | None = None
    domain_not_null: bool = False
    domain_checks: tuple[str, ...] = ()
    collation: str | None = None

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Catalog:
    tables: dict[tuple[str, str], Table] = field(default_factory=dict)
    types: dict[int, UserType] = field(default_factory=dict)
    server_version: int = 0
    schemas: frozenset[str] = frozenset()  # every user schema, tables or not


    def find(self, schema: str, name: str) -> Table | None:
        return self.tables.get((schema, name))


_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident,
       greatest(c.reltuples, 0)::bigint, c.relpages, c.relpersistence = 'u'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname <> ALL(%(excluded)s) AND n.nspname NOT LIKE 'pg\\_%%'
ORDER BY n.nspname, c.relname
"""

_COLUMNS = """
SELECT a.attrelid, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid,
       a.attnotnull,
       CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_KEYS = """
SELECT i.indrelid, i.indisprimary,
       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord)
FROM pg_index i
WHERE i.indrelid = ANY(%(oids)s) AND (i.indisprimary OR i.indisreplident)
"""

_TYPES = """
SELECT t.oid, n.nspname, t.typname, t.typtype, t.typcategory, t.typelem, t.typbasetype,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
       (SELECT e.extname FROM pg_depend dep JOIN pg_extension e ON e.oid = dep.refobjid
         WHERE dep.classid = 'pg_type'::regclass AND dep.objid = t.oid AND dep.deptype = 'e'),
       array(SELECT enumlabel FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder),
       array(SELECT ARRAY[a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid::text]
               FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
                AND NOT a.attisdropped ORDER BY a.attnum),
       coalesce(r.rngsubtype, 0), CASE WHEN r.rngsubtype IS NOT NULL THEN format_type(r.rngsubtype, NULL) END,
       t.typnotnull,
       array(SELECT pg_get_constraintdef(cc.oid) FROM pg_constraint cc
              WHERE cc.contypid = t.oid AND cc.contype = 'c' ORDER BY cc.conname),
       CASE WHEN t.typcollation <> 0 AND t.typcollation <> bt.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_range r ON r.rngtypid = t.oid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_collation co ON co.oid = t.typcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE t.oid = ANY(%(oids)s)
"""


def load_catalog(conn: psycopg.Connection[Any]) -> Catalog:
    """Read every user table of the connected database, with its columns, keys and types."""
    cat = Catalog(server_version=conn.info.server_version)
    with conn.cursor() as cur:
        # Inside the caller's transaction: a local setting ends with it.
        cur.execute("SELECT set_config('search_path', '', true)")
        cur.execute(
            "SELECT nspname FROM pg_namespace"
            " WHERE nspname <> ALL(%(excluded)s) AND nspname NOT LIKE 'pg\\_%%'",
            {"excluded": list(EXCLUDED_SCHEMAS)},
        )
        cat.schemas = frozenset(str(r[0]) for r in cur.fetchall())
        cur.execute(_TABLES, {"excluded": list(EXCLUDED_SCHEMAS)})
        raw_tables = cur.fetchall()
        oids = [r[0] for r in raw_tables]
        columns: dict[int, list[Column]] = {}
        cur.execute(_COLUMNS, {"oids": oids})
        for relid, attnum, name, type_sql, type_oid, not_null, gen, coll in cur.fetchall():
            columns.setdefault(relid, []).append(
                Column(name, attnum, type_sql, type_oid, not_null, gen, coll)
            )
        pkeys: dict[int, tuple[str, ...]] = {}
        ident: dict[int, tuple[str, ...]] = {}
        cur.execute(_KEYS, {"oids": oids})
        for relid, is_primary, cols in cur.fetchall():
            (pkeys if is_primary else ident)[relid] = tuple(cols)
            if is_primary and relid not in ident:
                ident.setdefault(relid, tuple(cols))
        partitioned = [r[0] for r in raw_tables if r[3] == "p"]
        parts = _leaf_partitions(cur, partitioned) if partitioned else {}
        for oid, schema, name, kind, replident, rows, pages, unlogged in raw_tables:
            leafs = tuple(parts.get(oid, ()))
            cat.tables[(schema, name)] = Table(
                oid=oid,
                schema=schema,
                name=name,
                kind=kind,
                columns=tuple(columns.get(oid, ())),
                primary_key=pkeys.get(oid, ()),
                replica_identity=replident,
                identity_index_columns=ident.get(oid, ()) if replident in ("d", "i") else (),
                estimated_rows=sum(p.estimated_rows for p in leafs) if leafs else rows,
                pages=sum(p.pages for p in leafs) if leafs else pages,
                partitions=leafs,
                unlogged=unlogged,
            )
        load_types(cur, cat, {c.type_oid for cols in columns.values() for c in cols})
    return cat


def _leaf_partitions(cur: psycopg.Cursor[Any], roots: list[int]) -> dict[int, list[Partition]]:
    grouped: dict[int, list[Partition]] = {}
    cur.execute(
        """
        SELECT r.oid, n.nspname, c.relname, greatest(c.reltuples, 0)::bigint, c.relpages
        FROM unnest(%(oids)s::oid[]) r(oid)
        CROSS JOIN LATERAL pg_partition_tree(r.oid) t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.isleaf ORDER BY n.nspname, c.relname
        """,
        {"oids": roots},
    )
    for root, schema, name, rows, pages in cur.fetchall():
        grouped.setdefault(root, []).append(Partition(schema, name, rows, pages))
    return grouped


def load_types(cur: psycopg.Cursor[Any], cat: Catalog, oids: set[int]) -> None:
    """Load every user type reachable from ``oids`` (through arrays, domains, composites, ranges)."""
    pending = {o for o in oids if o >= FIRST_NORMAL_OID}
    while pending:
        cur.execute(_TYPES, {"oids": sorted(pending)})
        pending = set()
        for row in cur.fetchall():
            (oid, schema, name, kind, category, elem, base, base_sql, ext, labels, attrs,
             rng_sub, rng_sub_sql, notnull, checks, coll) = row
            attributes = tuple((a[0], a[1], int(a[2])) for a in attrs)
            utype = UserType(
                oid=oid, schema=schema, name=name, kind=kind, category=category,
                element_oid=elem if category == "A" else 0, base_oid=base, base_sql=base_sql,
                extension=ext, enum_labels=tuple(labels), attributes=attributes,
                range_subtype_oid=rng_sub, range_subtype_sql=rng_sub_sql,
                domain_not_null=notnull, domain_checks=tuple(checks), collation=coll,
            )
            cat.types[oid] = utype
            for dep in (
                utype.element_oid,
                utype.base_oid,
                utype.range_subtype_oid,
                *(a[2] for a in attributes),
            ):
                if dep >= FIRST_NORMAL_OID and dep not in cat.types:
                    pending.add(dep)
