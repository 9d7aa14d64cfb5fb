"""One table's key order, as both servers compare it: the shared language of key-range comparisons.

A delta pass compares key sets range by range (``delta/deletes.py``): the source cuts the ranges
and computes its digests, the destination computes its own and removes what the source no
longer has. Both must order and hash keys the same way, so the SQL for a range, its order and
its digest is written once, here, for PostgreSQL on either side.

Integer, numeric, uuid and date/time keys order the same everywhere; text depends on the
collation, which may differ between the servers, so collatable key columns are compared under
``COLLATE "C"`` (byte order) on both sides. The digests compare text forms, so both sessions
must use the same output settings (``DIGEST_SESSION_SETTINGS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from psycopg import sql

from replicator.catalog import Column

# Identical text forms of key values on both servers (for the digests).
DIGEST_SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

Digest = tuple[int, Decimal]
"""(key count, sum of a 64-bit hash of each key's text form) of a key range."""

Bound = tuple[str, ...]
"""A key's values in text form."""


@dataclass(frozen=True)
class KeyOrder:
    """How both sides order and compare one table's key."""

    columns: tuple[Column, ...]
    bytewise: frozenset[str]  # collatable columns, compared under COLLATE "C"

    def _expr(self, col: Column, alias: str | None) -> sql.Composable:
        ident = sql.Identifier(alias, col.name) if alias else sql.Identifier(col.name)
        return sql.SQL('{} COLLATE "C"').format(ident) if col.name in self.bytewise else ident

    def _row(self, alias: str | None) -> sql.Composable:
        exprs = [self._expr(c, alias) for c in self.columns]
        return exprs[0] if len(exprs) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(exprs))

    def _values(self, values: Bound) -> sql.Composable:
        lits = [
            sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(c.type_sql))
            for c, v in zip(self.columns, values, strict=True)
        ]
        return lits[0] if len(lits) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(lits))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def order_by(self, descending: bool = False, alias: str | None = None) -> sql.Composable:
        direction = sql.SQL(" DESC" if descending else "")
        return sql.SQL(", ").join(
            sql.SQL("{}{}").format(self._expr(c, alias), direction) for c in self.columns
        )

    def after(self, lower: Bound | None, alias: str | None = None) -> list[sql.Composable]:
        if lower is None:
            return []
        return [sql.SQL("{} > {}").format(self._row(alias), self._values(lower))]

    def between(
        self, lower: Bound | None, upper: Bound | None, alias: str | None = None
    ) -> list[sql.Composable]:
        """Keys in ``(lower, upper]``; a missing bound is open."""
        preds = self.after(lower, alias)
        if upper is not None:
            preds.append(sql.SQL("{} <= {}").format(self._row(alias), self._values(upper)))
        return preds

    def digest_sql(self, alias: str | None = None) -> sql.Composable:
        idents = [sql.Identifier(alias, c.name) if alias else sql.Identifier(c.name) for c in self.columns]
        return sql.SQL("hashtextextended(ROW({})::text, 0)").format(sql.SQL(", ").join(idents))
