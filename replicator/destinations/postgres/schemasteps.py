"""Each step of a schema change captured at the source, as the destination's DDL (``schemasync.apply``).

Steps that change data or names (tables, columns, types, rows leaving with a partition) raise when
the destination refuses them; steps that only mirror the source's schema (indexes, constraints,
defaults, NOT NULL) go through ``tolerant``: a savepoint, and a refusal is a warning. Foreign keys
are not created (set-wise apply reorders rows within a batch). Runs in the writer's open transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog
from replicator.catalog import Column as CatalogColumn
from replicator.catalog import Table as CatalogTable
from replicator.decoding import ddlplan as plan
from replicator.decoding.ddl import ColumnShape, TableShape
from replicator.destinations.base import TableName
from replicator.destinations.postgres import ddl
from replicator.errors import DestinationError
from replicator.filters import SelectedTable

if TYPE_CHECKING:
    from replicator.destinations.postgres.apply import Writer
    from replicator.destinations.postgres.schemasync import SchemaState

log = logging.getLogger(__name__)


def apply_step(writer: Writer, st: SchemaState, step: plan.Step) -> None:
    """Apply one step of a captured schema change in the writer's open transaction."""
    conn = writer.conn
    t = sql.Identifier(*step.table)
    name = ".".join(step.table)
    match step:
        case plan.CreateTable(shape=shape):
            _create_table(writer, step.table, shape)
        case plan.DropTable(keep=keep):
            writer.session.state.move_pending_refreshes(writer.job, writer.slot, step.table, None)
            if not keep:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        case plan.RenameTable(to=to):
            _rename_table(writer, st, step.table, to)
        case plan.AddColumn():
            _add_column(writer, step)
        case plan.DropColumn(name=column, keep=keep):
            if keep:
                tolerant(
                    writer,
                    f"{name}: DROP NOT NULL on {column}",
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(t, sql.Identifier(column)),
                )
            else:
                conn.execute(
                    sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(t, sql.Identifier(column))
                )
        case plan.RenameColumn(name=old, to=new):
            columns = _columns(writer, step.table)
            if old in columns and new not in columns:
                conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                        t, sql.Identifier(old), sql.Identifier(new)
                    )
                )
            elif new not in columns:
                raise DestinationError(
                    f"{name}: cannot rename column {old} to {new}: the destination has no {old}"
                )
        case plan.AlterType():
            _alter_type(writer, step)
        case plan.SetNotNull(name=column, not_null=on):
            verb = "SET" if on else "DROP"
            tolerant(
                writer,
                f"{name}: {verb} NOT NULL on {column}",
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} " + verb + " NOT NULL").format(
                    t, sql.Identifier(column)
                ),
            )
        case plan.SetDefault(name=column, default=default):
            action = (
                sql.SQL("SET DEFAULT {}").format(sql.SQL(default)) if default else sql.SQL("DROP DEFAULT")
            )
            tolerant(
                writer,
                f"{name}: default of {column}",
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} {}").format(t, sql.Identifier(column), action),
            )
        case plan.DropExpression(name=column):
            tolerant(
                writer,
                f"{name}: DROP EXPRESSION on {column}",
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP EXPRESSION IF EXISTS").format(
                    t, sql.Identifier(column)
                ),
            )
        case plan.CreateIndex(index=index):
            tolerant(writer, f"{name}: index {index.name}", sql.SQL(_index_sql(index.definition)))
        case plan.DropIndex(name=index_name):
            tolerant(
                writer,
                f"{name}: drop index {index_name}",
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(step.table[0], index_name)),
            )
        case plan.RenameIndex(name=old, to=new):
            tolerant(
                writer,
                f"{name}: rename index {old}",
                sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                    sql.Identifier(step.table[0], old), sql.Identifier(new)
                ),
            )
        case plan.AddConstraint(constraint=c):
            _add_constraint(writer, st, step.table, c.name, c.type, c.definition)
        case plan.DropConstraint(name=constraint):
            tolerant(
                writer,
                f"{name}: drop constraint {constraint}",
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(t, sql.Identifier(constraint)),
            )
        case plan.RenameConstraint(name=old, to=new):
            tolerant(
                writer,
                f"{name}: rename constraint {old}",
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    t, sql.Identifier(old), sql.Identifier(new)
                ),
            )
        case plan.DeleteRows(where=where):
            dest = ddl.describe_table(conn, *step.table)
            if dest is not None:
                conn.execute(
                    writer.session.deletes.delete_where(dest, sql.SQL("({})").format(sql.SQL(where)))
                )
        case plan.Refresh():
            pass  # recorded by the caller; staged and merged by the realtime engine's calls
        case _:
            raise AssertionError(step)


def _columns(writer: Writer, table: TableName) -> dict[str, Any]:
    found = ddl.describe_table(writer.conn, *table)
    return dict(found.columns) if found is not None else {}


def tolerant(writer: Writer, what: str, statement: sql.SQL | sql.Composed) -> bool:
    """Run ``statement`` in a savepoint; a refusal is a warning (the schema is mirrored as far as
    the destination allows; the data does not depend on it)."""
    try:
        with writer.conn.transaction():
            writer.conn.execute(statement)
        return True
    except psycopg.Error as e:
        log.warning(
            "%s: the destination refused it (%s); the data is unaffected, go on",
            what,
            (e.diag.message_primary or str(e)).strip(),
        )
        return False


_INDEX_HEAD = re.compile(r"^CREATE (UNIQUE )?INDEX ")


def _index_sql(definition: str) -> str:
    """The source's index definition for a destination table: IF NOT EXISTS, and never ON ONLY (the
    destination's table is never partitioned)."""
    text = _INDEX_HEAD.sub(lambda m: f"CREATE {m.group(1) or ''}INDEX IF NOT EXISTS ", definition, count=1)
    return text.replace(" ON ONLY ", " ON ", 1)


def _user_types(writer: Writer, columns: Sequence[ColumnShape]) -> None:
    """Create the user types these columns use, as the source defines them, if missing."""
    for c in columns:
        if c.type_oid >= 16384:
            _type_sql, catalog = writer.column_type(c.type_oid, c.typmod)
            if catalog.types:
                ddl.ensure_types(writer.conn, catalog, (_catalog_column(c),))


def _catalog_column(c: ColumnShape) -> CatalogColumn:
    return CatalogColumn(c.name, c.attnum, c.type_sql, c.type_oid, c.not_null, c.generated, c.collation)


def _create_table(writer: Writer, table: TableName, shape: TableShape) -> None:
    conn = writer.conn
    if ddl.describe_table(conn, *table) is not None:
        log.warning(
            "%s: created at the source, and a table of that name is at the destination already: using it",
            ".".join(table),
        )
        return
    _user_types(writer, shape.columns)
    columns = tuple(_catalog_column(c) for c in shape.columns)
    source = CatalogTable(
        shape.relid, table[0], table[1], "r", columns, shape.key, shape.identity, shape.identity_columns, 0, 0
    )
    ddl.create_table(conn, Catalog(), SelectedTable(source, columns, key=shape.key))
    created = ddl.describe_table(conn, *table)
    assert created is not None
    if writer.session.deletes.lacks_column(created):
        writer.session.deletes.add_column(conn, created)


def _rename_table(writer: Writer, st: SchemaState, table: TableName, to: TableName) -> None:
    conn = writer.conn
    if ddl.describe_table(conn, *to) is not None:
        raise DestinationError(
            f"{'.'.join(table)} was renamed to {'.'.join(to)} at the source, but the destination already has "
            f"a table {'.'.join(to)} (kept after a DROP TABLE?): rename or drop it at the destination, then "
            "start again"
        )
    current = table
    if table[0] != to[0]:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(to[0])))
        conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(*table), sql.Identifier(to[0]))
        )
        current = (to[0], table[1])
    if current[1] != to[1]:
        conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(*current), sql.Identifier(to[1]))
        )
    writer.session.state.move_pending_refreshes(writer.job, writer.slot, table, to)
    for held, relid in [k for k in st.holding if k[0] == table]:
        st.holding[(to, relid)] = st.holding.pop((held, relid))


def _add_column(writer: Writer, step: plan.AddColumn) -> None:
    conn, c = writer.conn, step.column
    t = sql.Identifier(*step.table)
    if c.name in _columns(writer, step.table):
        return  # added already (by the stream's relation description)
    _user_types(writer, (c,))
    parts: list[sql.Composable] = [sql.Identifier(c.name), sql.SQL(c.type_sql)]
    if c.collation:
        parts.append(sql.SQL("COLLATE {}").format(sql.SQL(c.collation)))
    if c.generated is not None:
        generated = sql.SQL(" ").join(
            [*parts, sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(c.generated))]
        )
        if tolerant(
            writer,
            f"{'.'.join(step.table)}: generated column {c.name}",
            sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(t, generated),
        ):
            return
    if step.filled is not None:
        # What the rows already there read at the source (a constant, or now() as it was then).
        parts.append(sql.SQL("DEFAULT {}::{}").format(sql.Literal(step.filled), sql.SQL(c.type_sql)))
    if c.not_null and (step.filled is not None or not _has_rows(writer, step.table)):
        parts.append(sql.SQL("NOT NULL"))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(t, sql.SQL(" ").join(parts)))
    if c.default is not None and c.generated is None:
        action = sql.SQL("SET DEFAULT {}").format(sql.SQL(c.default))
        if not tolerant(
            writer,
            f"{'.'.join(step.table)}: default of {c.name}",
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} {}").format(t, sql.Identifier(c.name), action),
        ):
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(t, sql.Identifier(c.name))
            )
    elif step.filled is not None:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(t, sql.Identifier(c.name)))


def _has_rows(writer: Writer, table: TableName) -> bool:
    row = writer.conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(*table))
    ).fetchone()
    return bool(row and row[0])


def _alter_type(writer: Writer, step: plan.AlterType) -> None:
    conn = writer.conn
    t, col = sql.Identifier(*step.table), sql.Identifier(step.name)
    shape = ColumnShape(
        0, step.name, step.type_sql, step.type_oid, step.typmod, False, None, None, "", step.collation, False
    )
    _user_types(writer, (shape,))
    collate = sql.SQL(" COLLATE {}").format(sql.SQL(step.collation)) if step.collation else sql.SQL("")
    new_type = sql.SQL("{}{}").format(sql.SQL(step.type_sql), collate)
    converted = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(t, col, new_type)
    cast = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
        t, col, new_type, col, sql.SQL(step.type_sql)
    )
    attempts = [converted, cast]
    if not step.recompute:  # the values come with the refresh: any placeholder will do meanwhile
        attempts.append(
            sql.SQL(
                "ALTER TABLE {0} ALTER COLUMN {1} DROP DEFAULT, ALTER COLUMN {1} DROP NOT NULL, "
                "ALTER COLUMN {1} TYPE {2} USING NULL"
            ).format(t, col, new_type)
        )
    reasons = []
    for attempt in attempts:
        try:
            with conn.transaction():
                conn.execute(attempt)
            return
        except psycopg.Error as e:
            reasons.append((e.diag.message_primary or str(e)).strip())
            if "default" in reasons[-1]:
                tolerant(
                    writer,
                    f"{'.'.join(step.table)}: default of {step.name}",
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(t, col),
                )
                try:
                    with conn.transaction():
                        conn.execute(attempt)
                    return
                except psycopg.Error as again:
                    reasons.append((again.diag.message_primary or str(again)).strip())
    raise DestinationError(
        f"{'.'.join(step.table)}: cannot change column {step.name} to {step.type_sql} at the destination: "
        + "; ".join(reasons)
    )


def _add_constraint(
    writer: Writer, st: SchemaState, table: TableName, name: str, kind: str, definition: str
) -> None:
    where = ".".join(table)
    if kind == "f":
        if not st.warned_foreign_keys:
            log.info(
                "%s: foreign key %s is not created at the destination (set-wise apply reorders rows "
                "within a batch, which a foreign key would refuse)",
                where,
                name,
            )
            st.warned_foreign_keys = True
        return
    t = sql.Identifier(*table)
    if kind == "p":
        row = writer.conn.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = %s::regclass AND contype = 'p'""",
            (t.as_string(writer.conn),),
        ).fetchone()
        if row is not None and row[1] == definition:
            if row[0] != name:
                tolerant(
                    writer,
                    f"{where}: rename primary key {row[0]}",
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        t, sql.Identifier(row[0]), sql.Identifier(name)
                    ),
                )
            return
        if row is not None:
            writer.conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(t, sql.Identifier(row[0]))
            )
    tolerant(
        writer,
        f"{where}: constraint {name}",
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(t, sql.Identifier(name), sql.SQL(definition)),
    )
