"""What a source table has besides its columns: indexes, constraints, defaults, identity columns,
the sequences behind them and the collations they use. Read from the server, never generated.

Every definition is the server's own text (``pg_get_indexdef``, ``pg_get_constraintdef``,
``pg_get_expr``), read with an empty ``search_path`` so every name in it is schema-qualified.
Three things have no such function and are rebuilt from their catalog rows the way
``pg_dump`` does: sequences (``pg_sequence``), identity options and collations
(``pg_collation``).

``replicator.objectplan`` then decides what of it each destination table can have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import FIRST_NORMAL_OID
from replicator.filters import SelectedTable

TableName = tuple[str, str]


@dataclass(frozen=True)
class IndexDef:
    name: str
    definition: str  # pg_get_indexdef, "ON ONLY" of a partitioned index made "ON"
    columns: frozenset[str]  # every column it reads (keys, expressions, predicate)
    unique: bool


@dataclass(frozen=True)
class ConstraintDef:
    name: str
    kind: str  # 'p' primary key, 'u' unique, 'x' exclusion, 'c' check, 'f' foreign key
    definition: str  # pg_get_constraintdef (without an index tablespace the destination lacks)
    columns: frozenset[str]
    validated: bool  # at the source: a NOT VALID constraint stays NOT VALID
    references: TableName | None = None  # foreign keys: the referenced table
    referenced_columns: frozenset[str] = frozenset()

    @property
    def is_foreign_key(self) -> bool:
        return self.kind == "f"


@dataclass(frozen=True)
class SequenceDef:
    schema: str
    name: str
    type_sql: str
    start: int
    increment: int
    minimum: int
    maximum: int
    cache: int
    cycle: bool
    owned_by: tuple[str, str, str] | None = None  # (schema, table, column) of a serial column

    @property
    def qualified(self) -> TableName:
        return (self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    def options_sql(self) -> sql.Composed:
        """``INCREMENT BY .. MINVALUE .. MAXVALUE .. START WITH .. CACHE .. [NO] CYCLE``."""
        return sql.SQL("INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}").format(
            sql.Literal(self.increment), sql.Literal(self.minimum), sql.Literal(self.maximum),
            sql.Literal(self.start), sql.Literal(self.cache), sql.SQL("CYCLE" if self.cycle else "NO CYCLE"),
        )  # fmt: skip


def regclass_names(names: Iterable[TableName]) -> list[str]:
    """Relation names as ``to_regclass`` reads them (quoted: any name, any case)."""
    return [sql.Identifier(*name).as_string(None) for name in names]


@dataclass(frozen=True)
class SequenceValue:
    """Where a sequence stands: ``last_value`` None when it was never used (``is_called`` false)."""

    name: TableName
    last_value: int | None
    readable: bool = True  # False: no SELECT or USAGE on it, so last_value is unknown
    start: int = 1


def sequence_values(conn: psycopg.Connection[Any], names: Iterable[TableName]) -> list[SequenceValue]:
    """Where these sequences stand (those that do not exist are left out). The same on both servers.

    ``last_value`` is readable only with SELECT or USAGE on the sequence (``pg_sequences`` shows
    NULL without it): such a sequence comes back with ``readable`` False."""
    names = list(names)
    if not names:
        return []
    rows = conn.execute(
        """SELECT n.nspname, c.relname, has_sequence_privilege(c.oid, 'SELECT,USAGE'),
                  CASE WHEN has_sequence_privilege(c.oid, 'SELECT,USAGE')
                       THEN pg_sequence_last_value(c.oid) END,
                  s.seqstart
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_sequence s ON s.seqrelid = c.oid
           WHERE c.relkind = 'S' AND c.oid IN (SELECT to_regclass(x) FROM unnest(%s::text[]) x)""",
        (regclass_names(names),),
    ).fetchall()
    return [SequenceValue((r[0], r[1]), r[3], bool(r[2]), r[4]) for r in rows]


@dataclass(frozen=True)
class IdentityColumn:
    column: str
    always: bool  # GENERATED ALWAYS (else BY DEFAULT)
    sequence: SequenceDef


@dataclass(frozen=True)
class ColumnDefault:
    column: str
    expression: str  # pg_get_expr
    sequences: tuple[TableName, ...] = ()  # sequences it calls (serial, or free-standing)


@dataclass(frozen=True)
class CollationDef:
    oid: int
    schema: str
    name: str
    provider: str  # 'c' libc, 'i' icu, 'b' builtin, 'd' the database default
    deterministic: bool
    collate: str | None
    ctype: str | None
    locale: str | None  # icu/builtin locale
    rules: str | None = None  # icu rules (PostgreSQL 16+)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def user_defined(self) -> bool:
        return self.oid >= FIRST_NORMAL_OID

    def create_sql(self) -> sql.Composed:
        """As ``pg_dump`` writes it (no server function prints a collation's definition)."""
        options: list[sql.Composable] = []
        if self.provider == "i":
            options += [
                sql.SQL("provider = icu"),
                sql.SQL("locale = {}").format(sql.Literal(self.locale or "")),
            ]
            if self.rules:
                options.append(sql.SQL("rules = {}").format(sql.Literal(self.rules)))
        elif self.provider == "b":
            options += [
                sql.SQL("provider = builtin"),
                sql.SQL("locale = {}").format(sql.Literal(self.locale)),
            ]
        else:
            options += [
                sql.SQL("provider = libc"),
                sql.SQL("lc_collate = {}").format(sql.Literal(self.collate or "")),
                sql.SQL("lc_ctype = {}").format(sql.Literal(self.ctype or "")),
            ]
        if not self.deterministic:
            options.append(sql.SQL("deterministic = false"))
        return sql.SQL("CREATE COLLATION IF NOT EXISTS {} ({})").format(
            sql.Identifier(self.schema, self.name), sql.SQL(", ").join(options)
        )


@dataclass
class TableObjects:
    """One source table's objects (as the source has them, before ``plan_objects`` trims them)."""

    table: TableName
    indexes: list[IndexDef] = field(default_factory=list)
    constraints: list[ConstraintDef] = field(default_factory=list)
    defaults: list[ColumnDefault] = field(default_factory=list)
    identities: list[IdentityColumn] = field(default_factory=list)
    sequences: list[SequenceDef] = field(default_factory=list)  # used by defaults (serial, free-standing)
    collations: list[int] = field(default_factory=list)  # OIDs of non-default collations used
    collation_defs: list[CollationDef] = field(default_factory=list)  # those, as plan_objects resolves them
    partition_only_indexes: list[str] = field(default_factory=list)

    @property
    def primary_key(self) -> ConstraintDef | None:
        return next((c for c in self.constraints if c.kind == "p"), None)

    @property
    def foreign_keys(self) -> list[ConstraintDef]:
        return [c for c in self.constraints if c.kind == "f"]

    @property
    def table_constraints(self) -> list[ConstraintDef]:
        """CHECK, UNIQUE and EXCLUDE: built with the indexes, after the load."""
        return [c for c in self.constraints if c.kind in ("c", "u", "x")]

    @property
    def all_sequences(self) -> list[SequenceDef]:
        return [*self.sequences, *(i.sequence for i in self.identities)]

    @property
    def enforces_uniqueness(self) -> bool:
        """Whether rows of this table can collide on something other than the key the stream folds
        by: a UNIQUE or EXCLUDE constraint, or a unique index."""
        return any(c.kind in ("u", "x") for c in self.constraints) or any(i.unique for i in self.indexes)


@dataclass
class SourceObjects:
    tables: dict[TableName, TableObjects] = field(default_factory=dict)
    collations: dict[int, CollationDef] = field(default_factory=dict)

    def of(self, table: TableName) -> TableObjects:
        return self.tables.get(table) or TableObjects(table)

    def collations_of(self, objects: TableObjects) -> list[CollationDef]:
        return [self.collations[o] for o in objects.collations if o in self.collations]

    def sequences(self) -> list[SequenceDef]:
        """Every sequence of every table, once."""
        seen: dict[TableName, SequenceDef] = {}
        for t in self.tables.values():
            for s in t.all_sequences:
                seen.setdefault(s.qualified, s)
        return list(seen.values())


_INDEXES = """
SELECT i.indrelid, ic.relname, quote_ident(ic.relname), pg_get_indexdef(i.indexrelid), i.indisunique,
       ic.relkind = 'I',
       array(SELECT DISTINCT a.attname::text FROM pg_depend d
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
               AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid > 0),
       array(SELECT c::oid FROM unnest(i.indcollation) c WHERE c <> 0)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s) AND i.indisvalid AND i.indislive
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                  AND c.contype IN ('p', 'u', 'x'))
ORDER BY i.indrelid, ic.relname
"""

# Indexes of leaf partitions that no index of the root stands for: they cannot be had on the
# one destination table that receives every partition's rows.
_PARTITION_ONLY_INDEXES = """
SELECT t.root, n.nspname || '.' || ic.relname
FROM unnest(%(roots)s::oid[]) t(root)
CROSS JOIN LATERAL pg_partition_tree(t.root) p
JOIN pg_index i ON i.indrelid = p.relid
JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE p.isleaf AND NOT ic.relispartition
ORDER BY 1, 2
"""

_CONSTRAINTS = """
SELECT c.conrelid, c.conname, c.contype, pg_get_constraintdef(c.oid), c.convalidated,
       array(SELECT a.attname::text FROM unnest(c.conkey) k
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
       rn.nspname, r.relname,
       array(SELECT a.attname::text FROM unnest(c.confkey) k
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k),
       (SELECT quote_ident(ts.spcname) FROM pg_class ci JOIN pg_tablespace ts ON ts.oid = ci.reltablespace
         WHERE ci.oid = c.conindid),
       array(SELECT x::oid FROM pg_index ix, unnest(ix.indcollation) x
             WHERE ix.indexrelid = c.conindid AND x <> 0)
FROM pg_constraint c
LEFT JOIN pg_class r ON r.oid = c.confrelid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE c.conrelid = ANY(%(oids)s) AND c.contype IN ('p', 'u', 'x', 'c', 'f') AND c.conparentid = 0
ORDER BY c.conrelid, c.contype, c.conname
"""

_DEFAULTS = """
SELECT d.adrelid, a.attname, pg_get_expr(d.adbin, d.adrelid),
       array(SELECT ARRAY[sn.nspname::text, s.relname::text] FROM pg_depend dep
             JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S'
             JOIN pg_namespace sn ON sn.oid = s.relnamespace
             WHERE dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
               AND dep.refclassid = 'pg_class'::regclass)
FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE d.adrelid = ANY(%(oids)s) AND a.attgenerated = '' AND NOT a.attisdropped
ORDER BY d.adrelid, a.attnum
"""

# Sequences tied to a column: owned by it (serial, deptype 'a') or its identity ('i').
_TIED_SEQUENCES = """
SELECT d.refobjid, a.attname, d.deptype, a.attidentity, d.objid
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY(%(oids)s) AND d.deptype IN ('a', 'i')
"""

_SEQUENCES = """
SELECT s.seqrelid, n.nspname, c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
       s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
       (SELECT ARRAY[tn.nspname::text, t.relname::text, a.attname::text] FROM pg_depend d
          JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype = 'a')
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE s.seqrelid = ANY(%(oids)s) OR s.seqrelid IN (SELECT to_regclass(x) FROM unnest(%(names)s::text[]) x)
"""

_COLLATIONS = """
SELECT c.oid, n.nspname, c.collname, c.collprovider, c.collisdeterministic, c.collcollate, c.collctype,
       coalesce(to_jsonb(c) ->> 'colllocale', to_jsonb(c) ->> 'colliculocale'), to_jsonb(c) ->> 'collicurules'
FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE c.oid = ANY(%(oids)s) AND c.collprovider <> 'd'
"""

DEFAULT_COLLATION_OID = 100


def read_objects(
    conn: psycopg.Connection[Any], tables: Iterable[SelectedTable], type_collations: Iterable[int] = ()
) -> SourceObjects:
    """Read the objects of ``tables`` (inside the caller's transaction, so a snapshot's view)."""
    selected = list(tables)
    by_oid = {t.table.oid: (t.table.schema, t.table.name) for t in selected}
    found = SourceObjects({key: TableObjects(key) for key in by_oid.values()})
    if not by_oid:
        return found
    collations: set[int] = set(type_collations)
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('search_path', '', true)")
        collations |= _read_indexes(
            cur, found, by_oid, [t.table.oid for t in selected if t.table.kind == "p"]
        )
        collations |= _read_constraints(cur, found, by_oid)
        _read_defaults_and_sequences(cur, found, by_oid)
        for relid, colls in _column_collations(cur, list(by_oid)).items():
            found.tables[by_oid[relid]].collations.extend(colls)
            collations.update(colls)
        for objects in found.tables.values():
            objects.collations = sorted(set(objects.collations))
        if collations:
            cur.execute(_COLLATIONS, {"oids": sorted(collations)})
            for oid, schema, name, provider, deterministic, collate, ctype, locale, rules in cur.fetchall():
                found.collations[oid] = CollationDef(
                    oid, schema, name, provider, deterministic, collate, ctype, locale, rules
                )
    return found


def _read_indexes(
    cur: psycopg.Cursor[Any], found: SourceObjects, by_oid: dict[int, TableName], roots: list[int]
) -> set[int]:
    """Secondary indexes (those behind a constraint come with it); returns the collations they use."""
    collations: set[int] = set()
    cur.execute(_INDEXES, {"oids": list(by_oid)})
    for relid, name, quoted, definition, unique, partitioned, columns, colls in cur.fetchall():
        if partitioned:
            # The destination table is one plain table: its index is built on all of it.
            definition = _without_only(definition, quoted, unique)
        objects = found.tables[by_oid[relid]]
        objects.indexes.append(IndexDef(name, definition, frozenset(columns), unique))
        objects.collations.extend(colls)
        collations.update(colls)
    if roots:
        cur.execute(_PARTITION_ONLY_INDEXES, {"roots": roots})
        for root, name in cur.fetchall():
            found.tables[by_oid[root]].partition_only_indexes.append(name)
    return collations


def _read_constraints(
    cur: psycopg.Cursor[Any], found: SourceObjects, by_oid: dict[int, TableName]
) -> set[int]:
    collations: set[int] = set()
    cur.execute(_CONSTRAINTS, {"oids": list(by_oid)})
    for (relid, name, kind, definition, validated, columns, ref_schema, ref_name, ref_columns,
         tablespace, colls) in cur.fetchall():  # fmt: skip
        if tablespace is not None:
            # The destination has its own tablespaces: the index goes to its default one.
            definition = definition.replace(f" USING INDEX TABLESPACE {tablespace}", "")
        objects = found.tables[by_oid[relid]]
        objects.constraints.append(
            ConstraintDef(
                name, kind, definition, frozenset(columns), validated,
                (ref_schema, ref_name) if kind == "f" else None, frozenset(ref_columns or ()),
            )
        )  # fmt: skip
        objects.collations.extend(colls)
        collations.update(colls)
    return collations


def _read_defaults_and_sequences(
    cur: psycopg.Cursor[Any], found: SourceObjects, by_oid: dict[int, TableName]
) -> None:
    """Column defaults, the sequences they call, and identity columns with their sequences."""
    cur.execute(_DEFAULTS, {"oids": list(by_oid)})
    called: set[TableName] = set()
    for relid, column, expression, calls in cur.fetchall():
        seqs = tuple((s[0], s[1]) for s in calls)
        called.update(seqs)
        found.tables[by_oid[relid]].defaults.append(ColumnDefault(column, expression, seqs))
    cur.execute(_TIED_SEQUENCES, {"oids": list(by_oid)})
    tied = cur.fetchall()
    cur.execute(_SEQUENCES, {"oids": [r[4] for r in tied], "names": regclass_names(sorted(called))})
    by_oid_seq: dict[int, SequenceDef] = {}
    by_name: dict[TableName, SequenceDef] = {}
    for seq_oid, schema, name, type_sql, start, inc, lo, hi, cache, cycle, owner in cur.fetchall():
        seq = SequenceDef(
            schema, name, type_sql, start, inc, lo, hi, cache, cycle,
            (owner[0], owner[1], owner[2]) if owner else None,
        )  # fmt: skip
        by_oid_seq[seq_oid] = by_name[(schema, name)] = seq
    for relid, column, deptype, identity, seq_oid in tied:
        if deptype == "i" and identity in ("a", "d") and seq_oid in by_oid_seq:
            found.tables[by_oid[relid]].identities.append(
                IdentityColumn(column, identity == "a", by_oid_seq[seq_oid])
            )
    for objects in found.tables.values():
        names = {n for d in objects.defaults for n in d.sequences}
        objects.sequences = [by_name[n] for n in sorted(names) if n in by_name]


def _column_collations(cur: psycopg.Cursor[Any], oids: list[int]) -> dict[int, list[int]]:
    cur.execute(
        """SELECT a.attrelid, array_agg(DISTINCT a.attcollation)
           FROM pg_attribute a
           WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
             AND a.attcollation NOT IN (0, %(default)s)
           GROUP BY a.attrelid""",
        {"oids": oids, "default": DEFAULT_COLLATION_OID},
    )
    return {relid: list(colls) for relid, colls in cur.fetchall()}


def _without_only(definition: str, quoted_name: str, unique: bool) -> str:
    prefix = f"CREATE {'UNIQUE ' if unique else ''}INDEX {quoted_name} ON ONLY "
    if definition.startswith(prefix):
        return f"CREATE {'UNIQUE ' if unique else ''}INDEX {quoted_name} ON " + definition[len(prefix) :]
    return definition
