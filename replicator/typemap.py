"""PostgreSQL source types -> destination types, and which tables may move in binary COPY format.

For a PostgreSQL destination the mapping is the identity: every column keeps its exact type
(``format_type`` text, typmod included). User-defined types the columns depend on (enums,
domains, composites, ranges, and the extensions that own types) are recreated first, in
dependency order.

Binary COPY is the fast path, but two binary formats embed type OIDs, which differ between
servers for user-defined types: arrays (element type) and composites (each field's type). A
table with such a column moves in text format instead; everything else moves in binary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from psycopg import sql

from replicator.catalog import FIRST_NORMAL_OID, Catalog, Column, UserType
from replicator.errors import DestinationError


def without_typmod(type_sql: str) -> str:
    """``timestamp(3) without time zone`` -> ``timestamp without time zone``; ``numeric(12,2)`` -> ``numeric``."""
    return re.sub(r"\(\s*\d+\s*(?:,\s*-?\d+\s*)?\)", "", type_sql).replace("  ", " ").strip()


def is_user_oid(oid: int) -> bool:
    return oid >= FIRST_NORMAL_OID


def binary_safe(catalog: Catalog, columns: Iterable[Column]) -> bool:
    """Whether binary COPY between two different servers is safe for all these columns."""
    return all(_binary_safe_type(catalog, c.type_oid, set()) for c in columns)


def _binary_safe_type(catalog: Catalog, oid: int, seen: set[int]) -> bool:
    if not is_user_oid(oid) or oid in seen:
        return True
    seen.add(oid)
    t = catalog.types.get(oid)
    if t is None:
        return False
    if t.category == "A":
        # array_recv checks the element type OID carried in the data.
        return not is_user_oid(_strip_domains(catalog, t.element_oid)) and _binary_safe_type(
            catalog, t.element_oid, seen
        )
    if t.kind == "c":
        # record_recv checks every field's type OID carried in the data.
        return all(not is_user_oid(_strip_domains(catalog, a[2])) for a in t.attributes) and all(
            _binary_safe_type(catalog, a[2], seen) for a in t.attributes
        )
    if t.kind == "d":
        return _binary_safe_type(catalog, t.base_oid, seen)
    if t.kind == "r":
        return _binary_safe_type(catalog, t.range_subtype_oid, seen)
    return True


def _strip_domains(catalog: Catalog, oid: int) -> int:
    # A domain's binary form is its base type's, and the OID written is the base type's too.
    while is_user_oid(oid) and (t := catalog.types.get(oid)) is not None and t.kind == "d":
        oid = t.base_oid
    return oid


def types_in_order(catalog: Catalog, columns: Iterable[Column]) -> list[UserType]:
    """The user types these columns need, each after the types it depends on."""
    ordered: list[UserType] = []
    done: set[int] = set()

    def visit(oid: int) -> None:
        if not is_user_oid(oid) or oid in done:
            return
        done.add(oid)
        t = catalog.types.get(oid)
        if t is None:
            return
        for dep in (t.element_oid, t.base_oid, t.range_subtype_oid, *(a[2] for a in t.attributes)):
            visit(dep)
        ordered.append(t)

    for c in columns:
        visit(c.type_oid)
    return ordered


def create_type_sql(t: UserType) -> sql.Composable | None:
    """DDL creating ``t`` in the destination; None when nothing is to be created for it.

    Array types come with their element type; extension types come with their extension.
    """
    if t.category == "A":
        return None
    if t.extension:
        return sql.SQL("CREATE EXTENSION IF NOT EXISTS {} SCHEMA {}").format(
            sql.Identifier(t.extension), sql.Identifier(t.schema)
        )
    if t.kind == "e":
        return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            t.ident, sql.SQL(", ").join(sql.Literal(label) for label in t.enum_labels)
        )
    if t.kind == "d":
        parts: list[sql.Composable] = [
            sql.SQL("CREATE DOMAIN {} AS {}").format(t.ident, sql.SQL(t.base_sql or "text"))
        ]
        if t.collation:
            parts.append(sql.SQL("COLLATE {}").format(sql.SQL(t.collation)))
        if t.domain_not_null:
            parts.append(sql.SQL("NOT NULL"))
        parts.extend(sql.SQL(check) for check in t.domain_checks)
        return sql.SQL(" ").join(parts)
    if t.kind == "c":
        fields = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_sql)) for name, type_sql, _ in t.attributes
        )
        return sql.SQL("CREATE TYPE {} AS ({})").format(t.ident, fields)
    if t.kind == "r":
        return sql.SQL("CREATE TYPE {} AS RANGE (SUBTYPE = {})").format(t.ident, sql.SQL(t.range_subtype_sql or ""))
    if t.kind == "m":
        return None  # created together with its range type
    raise DestinationError(
        f"column type {t.display} is a user-defined base type that replicator cannot recreate; "
        f"create it in the destination database first"
    )


def column_sql(c: Column, as_generated: bool = True) -> sql.Composable:
    """A column definition for CREATE TABLE: same type and collation; no defaults (values come from the source)."""
    parts: list[sql.Composable] = [sql.Identifier(c.name), sql.SQL(c.type_sql)]
    if c.collation:
        parts.append(sql.SQL("COLLATE {}").format(sql.SQL(c.collation)))
    if c.not_null:
        parts.append(sql.SQL("NOT NULL"))
    if as_generated and c.generated_expr is not None:
        parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(c.generated_expr)))
    return sql.SQL(" ").join(parts)
