"""What a delete does at the destination: the one home of ``deletes: hard | soft``.

Hard (the default): the row goes. Soft: the row stays, with ``__replicator_is_deleted = true``
(a column added to each table that receives changes); a key that comes back is live again;
TRUNCATE flags every row; digests and comparisons count only live rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.destinations.base import OUR_COLUMN_PREFIX, DestTable
from replicator.destinations.postgres.ddl import ident

SOFT_DELETE_COLUMN = OUR_COLUMN_PREFIX + "is_deleted"
_FLAG = sql.Identifier(SOFT_DELETE_COLUMN)


@dataclass(frozen=True)
class DeletePolicy:
    soft: bool = False

    def lacks_column(self, table: DestTable) -> bool:
        """Whether ``table`` needs the flag added before it can receive changes."""
        return self.soft and SOFT_DELETE_COLUMN not in table.columns

    def add_column(self, conn: psycopg.Connection[Any], table: DestTable) -> None:
        """Add the flag (instant: a constant default)."""
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} boolean NOT NULL DEFAULT false").format(
                ident(table), _FLAG
            )
        )

    @staticmethod
    def is_ours(column: str) -> bool:
        """A column we added, which the source does not have (and must not be mistaken for one it lost)."""
        return column == SOFT_DELETE_COLUMN

    # Deleting. A table that receives changes has the flag (``add_column``) when deletes are soft.

    def delete_where(self, table: DestTable, where: sql.Composable) -> sql.Composed:
        """Remove the rows of ``table`` matching ``where``."""
        if self.soft:
            return sql.SQL("UPDATE {} SET {} = true WHERE {}").format(ident(table), _FLAG, where)
        return sql.SQL("DELETE FROM {} WHERE {}").format(ident(table), where)

    def delete_using(self, table: DestTable, stage: sql.Composable, match: sql.Composable) -> sql.Composed:
        """Remove the rows of ``table`` (alias ``d``) that have a row in ``stage`` (alias ``s``) by
        ``match``."""
        if self.soft:
            return sql.SQL("UPDATE {} AS d SET {} = true FROM {} AS s WHERE {}").format(
                ident(table), _FLAG, stage, match
            )
        return sql.SQL("DELETE FROM {} AS d USING {} AS s WHERE {}").format(ident(table), stage, match)

    def delete_aliased(self, table: DestTable, where: sql.Composable) -> sql.Composed:
        """Remove the rows of ``table`` (alias ``d``) matching ``where``, not counting rows already
        deleted."""
        if self.soft:
            return sql.SQL("UPDATE {} d SET {} = true WHERE NOT d.{} AND {}").format(
                ident(table), _FLAG, _FLAG, where
            )
        return sql.SQL("DELETE FROM {} d WHERE {}").format(ident(table), where)

    def restore_deleted(
        self, table: DestTable, saved: sql.Composable, columns: list[str], key: list[str]
    ) -> sql.Composed:
        """Put back, flagged as deleted, the rows of ``saved`` (a copy of some rows of ``table``, as
        ``columns``) whose key ``table`` no longer holds. Soft deletes only."""
        assert self.soft
        values = sql.SQL(", ").join(
            sql.SQL("true") if c == SOFT_DELETE_COLUMN else sql.Identifier("s", c) for c in columns
        )
        same = sql.SQL(" AND ").join(
            sql.SQL("d.{} = s.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in key
        )
        return sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {values} FROM {saved} AS s "
            "WHERE NOT EXISTS (SELECT FROM {t} AS d WHERE {same})"
        ).format(
            t=ident(table), cols=sql.SQL(", ").join(map(sql.Identifier, columns)), values=values,
            saved=saved, same=same,
        )

    def truncate(self, table: DestTable) -> sql.Composed:
        if self.soft:
            return sql.SQL("UPDATE {} SET {} = true").format(ident(table), _FLAG)
        return sql.SQL("TRUNCATE {}").format(ident(table))

    # Writing and reading. A table only loaded so far (a snapshot) may not have the flag yet.

    def revive(self, table: DestTable) -> list[sql.Composed]:
        """SET items for a row written again: a soft-deleted key that comes back is live."""
        return [sql.SQL("{} = false").format(_FLAG)] if self._flagged(table) else []

    def live(self, table: DestTable, alias: str) -> list[sql.Composed]:
        """Predicates keeping only the live rows of ``table`` (as ``alias``)."""
        return [sql.SQL("NOT {}.{}").format(sql.Identifier(alias), _FLAG)] if self._flagged(table) else []

    def _flagged(self, table: DestTable) -> bool:
        return self.soft and SOFT_DELETE_COLUMN in table.columns
