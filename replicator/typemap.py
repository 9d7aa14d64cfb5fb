"""Which tables may move between two PostgreSQL servers in binary COPY format.

(The destination half, source type -> destination DDL, is ``destinations/postgres/types.py``.)

Binary COPY is the fast path, but two binary formats embed type OIDs, which differ between
servers for user-defined types: arrays (element type) and composites (each field's type). A
table with such a column moves in text format instead; everything else moves in binary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from replicator.catalog import FIRST_NORMAL_OID, Catalog, Column


def without_typmod(type_sql: str) -> str:
    """``timestamp(3) without time zone`` -> ``timestamp without time zone``; ``numeric(12,2)`` ->
    ``numeric``."""
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
