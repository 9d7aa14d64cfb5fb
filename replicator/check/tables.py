"""Per-table checks: SELECT grants, a key or replica identity, and the publication's coverage."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import load_catalog
from replicator.check.database import SourceContext
from replicator.check.report import CheckResult, fail, ok, skip, warn
from replicator.config import ConfigFile, ExtractorConfig, FilterConfig
from replicator.errors import ConfigError
from replicator.filters import SelectedTable, check_conditions, select_tables
from replicator.provision import accesssql
from replicator.realtime.setup import plan_slots
from replicator.source import rowfilter
from replicator.source.wal2json_nan import OPT_IN, OPTION, keeps_nan, nan_risks
from replicator.tableobjects import read_objects, sequence_values

TABLES = "tables"


def selected_tables(
    ctx: SourceContext, filter_file: ConfigFile[FilterConfig] | None, extractor: ConfigFile[ExtractorConfig]
) -> tuple[list[SelectedTable], CheckResult]:
    try:
        with ctx.conn.transaction():
            catalog = load_catalog(ctx.conn)
            tables = select_tables(catalog, filter_file, extractor, ctx.cfg.database)
        check_conditions(ctx.conn, tables)
    except ConfigError as e:
        return [], fail(
            TABLES, "selection", str(e), "correct the filter / extractor config as the message says"
        )
    if not tables:
        return [], warn(TABLES, "selection", "no tables selected: nothing would be replicated",
                        "check the filter config (allow: schema / table names)")
    return tables, ok(TABLES, "selection", f"{len(tables)} table(s) selected")


def check_tables(ctx: SourceContext, tables: list[SelectedTable]) -> list[CheckResult]:
    results = [check_select_grants(ctx, tables), check_sequence_grants(ctx, tables)]
    if ctx.needs_replication:
        results.append(check_keys(ctx, tables))
        if "pgoutput" in ctx.cfg.slots.values():
            results.extend(check_publication(ctx, tables))
        if "wal2json" in ctx.cfg.slots.values():
            results.append(check_wal2json_nan(ctx, tables))
    return results


def check_wal2json_nan(ctx: SourceContext, tables: list[SelectedTable]) -> CheckResult:
    """wal2json 2.5 replicates NaN and ±Infinity as NULL (source/wal2json_nan.py)."""
    plans = plan_slots(ConfigFile(ctx.cfg), tables)
    risks = nan_risks(ctx.cfg, {p.slot: p.tables for p in plans})
    if not risks:
        return ok(
            TABLES, "wal2json values", "no selected table has a numeric, real or double precision column"
        )
    if ctx.cfg.wal2json_nan_becomes_null:
        return warn(
            TABLES, "wal2json values",
            f"NaN and ±Infinity replicate as NULL in {', '.join(r.table for r in risks)} "
            f"({OPT_IN}: true accepts it)",
        )
    lossy = [r for r in risks if not keeps_nan(ctx.conn, r.slot)]
    if not lossy:
        return ok(TABLES, "wal2json values", f"this server's wal2json prints NaN and Infinity ({OPTION})")
    return fail(
        TABLES, "wal2json values",
        f"wal2json would replicate NaN and ±Infinity as NULL in {', '.join(r.table for r in lossy)}; "
        "`replicator run` refuses it",
        f"use pgoutput (the default; no such limit): replication-slots: {{{lossy[0].slot}: [pgoutput]}}, "
        f"or accept the loss: {OPT_IN}: true in the source config",
    )


def check_select_grants(ctx: SourceContext, tables: list[SelectedTable]) -> CheckResult:
    conn, user = ctx.conn, ctx.user
    schemas = sorted({t.table.schema for t in tables})
    no_usage = [
        s for s in schemas
        if not _one(conn, "SELECT has_schema_privilege(%s, 'USAGE')", (s,))
    ]
    missing = []
    for t in tables:
        if t.table.schema in no_usage:
            missing.append(t)
            continue
        if _one(conn, "SELECT has_table_privilege(%s, 'SELECT')", (t.table.oid,)):
            continue
        # Column privileges are enough when every selected column is covered.
        columns = [c.name for c in t.columns]
        if not _one(conn, "SELECT bool_and(has_column_privilege(%s, c, 'SELECT')) FROM unnest(%s::text[]) c",
                    (t.table.oid, columns)):
            missing.append(t)
    if not missing:
        return ok(TABLES, "select grants", f"{user} may read all {len(tables)} selected table(s)")
    statements = [ctx.sql(accesssql.grant_schema_usage(user, s)) for s in no_usage]
    statements += [ctx.sql(accesssql.grant_select(user, (t.table.schema, t.table.name))) for t in missing]
    return fail(
        TABLES, "select grants",
        f"{user} may not read {len(missing)} table(s): {_names(missing)}",
        "\n".join(statements),
    )


def check_sequence_grants(ctx: SourceContext, tables: list[SelectedTable]) -> CheckResult:
    """The sequences behind the tables' serial and identity columns and defaults are kept in step
    at the destination (and set exactly at switchover): their values must be readable, which
    takes SELECT or USAGE on each (``pg_sequences.last_value`` reads NULL without it)."""
    with ctx.conn.transaction():
        found = read_objects(ctx.conn, tables)
    names = sorted({s.qualified for s in found.sequences()})
    if not names:
        return ok(TABLES, "sequence grants", "no sequence behind the selected tables")
    unreadable = [v.name for v in sequence_values(ctx.conn, names) if not v.readable]
    if not unreadable:
        return ok(
            TABLES, "sequence grants", f"{ctx.user} may read all {len(names)} sequence(s) of the tables"
        )
    schemas = sorted({schema for schema, _ in unreadable})
    return fail(
        TABLES, "sequence grants",
        f"{ctx.user} may not read the value of {len(unreadable)} sequence(s): "
        f"{', '.join('.'.join(n) for n in unreadable)} (kept in step at the destination, set at switchover)",
        "\n".join(ctx.sql(accesssql.grant_select_all_sequences(ctx.user, s)) for s in schemas),
    )


def check_keys(ctx: SourceContext, tables: list[SelectedTable]) -> CheckResult:
    """Updates and deletes reach us only with a replica identity, and we apply them by key."""
    problems: list[str] = []
    statements: list[str] = []
    for t in tables:
        table = t.table
        ident = sql.Identifier(table.schema, table.name)
        gap = table.identity_gap
        if not t.key:
            problems.append(f"{table.display} has no primary key")
            statements.append(
                f"ALTER TABLE {ident.as_string(ctx.conn)} ADD PRIMARY KEY (...);  -- or set "
                "row-identifier-key "
                "for it in the extractor config (snapshot and realtime: per-table-config) and run the next "
                "statement"
            )
            if gap is not None:
                statements.append(ctx.sql(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident)))
        elif gap is not None:
            problems.append(f"{table.display} has {gap}")
            statements.append(ctx.sql(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(ident)))
    if not problems:
        return ok(TABLES, "keys", "every selected table has a key and a replica identity")
    return fail(
        TABLES, "keys",
        "updates and deletes cannot be replicated: " + "; ".join(problems),
        "\n".join(statements),
    )


def check_publication(ctx: SourceContext, tables: list[SelectedTable]) -> list[CheckResult]:
    """The publication of every pgoutput slot, as `replicator run` will use it (one per slot when several)."""
    if not ctx.cfg.publication:
        # Tables without a replica identity stay out: published for updates, theirs would fail.
        create = accesssql.create_publication(
            "replicator_pub",
            tuple((t.table.schema, t.table.name) for t in tables if t.table.identity_gap is None),
            ctx.conn.info.server_version,
        )
        return [fail(TABLES, "publication", "pgoutput slots need a publication, and the config names none",
                     f"add `publication: replicator_pub` to the source config, then run:\n{ctx.sql(create)}")]
    results = []
    for plan in plan_slots(ConfigFile(ctx.cfg), tables):
        # Tables without a replica identity go to an insert-only publication `run` makes.
        if plan.publication is not None and plan.identified:
            results.extend(_check_one_publication(ctx, plan.publication, plan.identified))
    return results


def _check_one_publication(ctx: SourceContext, name: str, tables: list[SelectedTable]) -> list[CheckResult]:
    conn = ctx.conn
    row = conn.execute(
        "SELECT puballtables, pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = %s", (name,)
    ).fetchone()
    if row is None:
        create = accesssql.create_publication(
            name, tuple((t.table.schema, t.table.name) for t in tables), conn.info.server_version
        )
        if _owns_all(ctx, tables):
            return [warn(TABLES, "publication", f"publication {name} does not exist yet; `replicator run` "
                         "creates it (the user owns the tables)", ctx.sql(create))]
        return [fail(TABLES, "publication", f"publication {name} does not exist", ctx.sql(create))]
    all_tables, ins, upd, dele = (bool(v) for v in row)
    results = []
    ops = [op for op, on in (("insert", ins), ("update", upd), ("delete", dele)) if not on]
    if ops:
        results.append(
            fail(
                TABLES,
                "publish operations",
                f"publication {name} does not publish {', '.join(ops)}",
                ctx.sql(accesssql.publish_all_operations(name, ctx.conn.info.server_version)),
            )
        )
    else:
        results.append(ok(TABLES, "publish operations", f"{name} publishes insert, update, delete"))
    results.append(_coverage(ctx, name, all_tables, tables))
    results.append(_filters(ctx, name, tables))
    return results


def _owns_all(ctx: SourceContext, tables: list[SelectedTable]) -> bool:
    row = ctx.conn.execute(
        "SELECT bool_and(pg_has_role(current_user, c.relowner, 'USAGE')) FROM pg_class c WHERE c.oid = "
        "ANY(%s)",
        ([t.table.oid for t in tables],),
    ).fetchone()
    return bool(row and row[0])


def _coverage(ctx: SourceContext, name: str, all_tables: bool, tables: list[SelectedTable]) -> CheckResult:
    if all_tables:
        return ok(TABLES, "publication coverage", f"{name} is FOR ALL TABLES")
    members = {
        (r[0], r[1])
        for r in ctx.conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        ).fetchall()
    }
    missing = [t for t in tables if not _published(t, members)]
    if not missing:
        return ok(TABLES, "publication coverage", f"{name} covers all {len(tables)} selected table(s)")
    fixes = [ctx.sql(accesssql.add_to_publication(name, (t.table.schema, t.table.name)))
             for t in missing if not _leaves_published(t, members)]
    if any(_leaves_published(t, members) for t in missing):
        fixes.append(ctx.sql(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(
            sql.Identifier(name))))
    return fail(TABLES, "publication coverage", f"{name} leaves out {_names(missing)}", "\n".join(fixes))


def _leaves_published(t: SelectedTable, members: set[tuple[str, str]]) -> bool:
    return bool(t.table.partitions) and all((p.schema, p.name) in members for p in t.table.partitions)


def _published(t: SelectedTable, members: set[tuple[str, str]]) -> bool:
    # A partitioned table must be published via its root (pg_publication_tables then lists the
    # root): published leaf by leaf, a partition attached later would not be replicated.
    return (t.table.schema, t.table.name) in members


def _filters(ctx: SourceContext, name: str, tables: list[SelectedTable]) -> CheckResult:
    if ctx.conn.info.server_version < 150000:
        return skip(
            TABLES, "publication filters", "row filters and column lists exist only from PostgreSQL 15"
        )
    rows = ctx.conn.execute(
        "SELECT pr.prrelid, pg_get_expr(pr.prqual, pr.prrelid), pr.prattrs IS NOT NULL"
        " FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid"
        " WHERE p.pubname = %s AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)",
        (name,),
    ).fetchall()
    by_oid = {t.table.oid: t for t in tables}
    filtered = [
        (by_oid[r[0]], r[1], r[2])
        for r in rows
        if r[0] in by_oid
        and (
            (r[1] is not None and not _is_our_row_filter(ctx, by_oid[r[0]], r[1]))
            or _leaves_out(ctx, by_oid[r[0]], name)
        )
    ]
    if not filtered:
        return ok(TABLES, "publication filters", f"{name} sends every selected row and column")
    details, statements = [], []
    for t, where, columns in filtered:
        what = [f"WHERE {where}"] if where else []
        what += ["a column list"] if columns else []
        details.append(f"{t.display} ({' and '.join(what)})")
        key = (t.table.schema, t.table.name)
        statements.append(ctx.sql(accesssql.drop_from_publication(name, key)))
        statements.append(ctx.sql(accesssql.add_to_publication(name, key)))
    return fail(
        TABLES, "publication filters",
        f"{name} publishes only part of {', '.join(details)}; the filter config does the filtering, "
        "the publication must send every change",
        "\n".join(statements),
    )


def _is_our_row_filter(ctx: SourceContext, t: SelectedTable, where: str) -> bool:
    """Whether ``where`` is the row filter `run` makes of the table's conditions (source/rowfilter.py)."""
    if not t.condition:
        return False
    decided = rowfilter.decide(ctx.conn, "pgoutput", t, insert_only=t.table.identity_gap is not None)
    return decided is not None and decided.native and decided.printed == where


def _leaves_out(ctx: SourceContext, t: SelectedTable, name: str) -> bool:
    """Whether the publication's column list for ``t`` lacks a column the filter selects.

    A column list is fine (replicator creates one itself when the filter names columns) as long as
    it carries every selected column.
    """
    row = ctx.conn.execute(
        "SELECT attnames FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = "
        "%s",
        (name, t.table.schema, t.table.name),
    ).fetchone()
    published = set(row[0]) if row and row[0] is not None else None
    return published is not None and any(c.name not in published for c in t.columns if not c.is_generated)


def _names(tables: list[SelectedTable], limit: int = 10) -> str:
    names = [t.display for t in tables]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None
