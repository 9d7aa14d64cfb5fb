"""From the filter and extractor configs to the tables, columns and rows to move."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from replicator import conditions
from replicator.catalog import Catalog, Column, Table
from replicator.config import ConfigFile, ExtractorConfig, FilterConfig
from replicator.config.extractor import DeltaPerTable, RealtimePerTable, SnapshotPerTable, SplitHints
from replicator.errors import ConfigError

log = logging.getLogger(__name__)

Section = Literal["snapshot", "realtime", "delta-snapshot"]
"""The extractor section whose per-table settings (keys, split keys, update keys) apply."""


@dataclass(frozen=True)
class SelectedTable:
    """One table to replicate, with what the configs say about it."""

    table: Table
    columns: tuple[Column, ...]  # the selected columns, in table order
    condition: str | None = None  # the filter's SQL predicate on the source table
    condition_where: str = ""  # file:line of the predicate, for error messages
    key: tuple[str, ...] = ()  # primary key, else row-identifier-key
    key_from: Literal["primary-key", "row-identifier-key"] | None = None
    split_key: str | None = None
    split_hints: SplitHints | None = None
    config_where: str = ""  # file:line of the table's per-table-config entry
    update_key: tuple[str, ...] = ()  # delta-snapshot only
    replicate_deletes: bool | None = None  # delta-snapshot only
    key_where: str = ""  # file:line of the row-identifier-key, when the key came from one
    update_key_where: str = ""  # file:line of the update-key (per table, else the section's)

    @property
    def display(self) -> str:
        return self.table.display


def select_tables(
    catalog: Catalog,
    filter_file: ConfigFile[FilterConfig] | None,
    extractor: ConfigFile[ExtractorConfig],
    database: str,
    section: Section = "snapshot",
) -> list[SelectedTable]:
    """Apply the filter and the per-table extractor settings to the catalog."""
    chosen: dict[tuple[str, str], tuple[tuple[Column, ...], str | None, str]] = {}
    if filter_file is None:
        for key, table in catalog.tables.items():
            chosen[key] = (table.columns, None, "")
    else:
        _apply_filter(catalog, filter_file, database, chosen)
    per_table = _per_table_settings(catalog, extractor, database, section)
    selected = []
    for key, (columns, condition, where) in chosen.items():
        table = catalog.tables[key]
        settings = per_table.get(key, {})
        selected.append(_selected(table, columns, condition, where, settings, extractor, section))
    return selected


def _apply_filter(
    catalog: Catalog,
    filter_file: ConfigFile[FilterConfig],
    database: str,
    chosen: dict[tuple[str, str], tuple[tuple[Column, ...], str | None, str]],
) -> None:
    cfg = filter_file.value
    for i, schema_filter in enumerate(cfg.schemas):
        base: tuple[str | int, ...] = ("allow", i)
        if schema_filter.catalog is not None and schema_filter.catalog != database:
            raise ConfigError(
                f"{filter_file.where(*base, 'catalog')}: catalog: '{schema_filter.catalog}' is not the "
                f"source database '{database}' (the catalog is the PostgreSQL database name)"
            )
        schema = schema_filter.schema_name
        in_scope = [t for t in catalog.tables.values() if schema is None or t.schema == schema]
        if schema is not None and not in_scope and schema not in catalog.schemas:
            # (An existing schema without tables is taken: tables created there later are followed.)
            known = sorted({t.schema for t in catalog.tables.values()})
            raise ConfigError(
                f"{filter_file.where(*base, 'schema')}: schema: no tables in schema '{schema}'"
                f"{_did_you_mean(schema, known)}"
            )
        if schema_filter.allow is None:
            for t in in_scope:
                chosen[(t.schema, t.name)] = (t.columns, None, "")
            continue
        by_name = {t.name: t for t in in_scope}
        for name, rule in schema_filter.allow.items():
            loc = (*base, "allow", name)
            table = _match(name, by_name)
            if table is None:
                raise ConfigError(
                    f"{filter_file.where(*loc)}: allow.{name}: no table '{name}' in "
                    f"{'schema ' + schema if schema else 'the database'}{_did_you_mean(name, list(by_name))}"
                )
            columns = table.columns
            condition = None
            where = ""
            if rule is not None and rule.allow:
                columns = _pick_columns(table, rule.allow, filter_file, (*loc, "allow"))
            if rule is not None and rule.conditions:
                condition = rule.conditions
                where = filter_file.where(*loc, "conditions")
            chosen[(table.schema, table.name)] = (columns, condition, where)


def _pick_columns(
    table: Table, names: list[str], filter_file: ConfigFile[FilterConfig], loc: tuple[str | int, ...]
) -> tuple[Column, ...]:
    by_name = {c.name: c for c in table.columns}
    wanted = set()
    for n in names:
        col = _match(n, by_name)
        if col is None:
            raise ConfigError(
                f"{filter_file.where(*loc)}: allow: table {table.display} has no column '{n}'"
                f"{_did_you_mean(n, list(by_name))}"
            )
        wanted.add(col.name)
    missing_key = [k for k in table.primary_key if k not in wanted]
    if missing_key:
        log.warning(
            "%s: the filter's column list leaves out key column(s) %s; adding them (later modes need the "
            "key)",
            table.display, ", ".join(missing_key),
        )
        wanted.update(missing_key)
    return tuple(c for c in table.columns if c.name in wanted)


def _per_table_settings(
    catalog: Catalog, extractor: ConfigFile[ExtractorConfig], database: str, section: Section
) -> dict[tuple[str, str], dict[str, Any]]:
    cfg = extractor.value
    entries: Sequence[SnapshotPerTable | RealtimePerTable | DeltaPerTable]
    if section == "snapshot":
        entries = cfg.snapshot.per_table_config
    elif section == "realtime":
        entries = cfg.realtime.per_table_config
    else:
        entries = cfg.delta_snapshot.per_table_config
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        loc = (section, "per-table-config", i)
        if entry.catalog is not None and entry.catalog != database:
            raise ConfigError(
                f"{extractor.where(*loc, 'catalog')}: catalog: '{entry.catalog}' is not the source "
                f"database '{database}'"
            )
        schema = entry.schema_name or "public"
        by_name = {t.name: t for t in catalog.tables.values() if t.schema == schema}
        for name, settings in entry.table_settings().items():
            table = _match(name, by_name)
            if table is None:
                raise ConfigError(
                    f"{extractor.where(*loc, 'tables', name)}: tables.{name}: no table '{name}' in schema "
                    f"'{schema}'{_did_you_mean(name, list(by_name))}"
                )
            values = settings.model_dump(exclude_none=True) if settings else {}
            for key_field in ("row_identifier_key", "split_key", "update_key"):
                cols = values.get(key_field)
                for col in [cols] if isinstance(cols, str) else cols or []:
                    if table.column(col) is None:
                        alias = key_field.replace("_", "-")
                        raise ConfigError(
                            f"{extractor.where(*loc, 'tables', name, alias)}: {alias}: table "
                            f"{table.display} has no column "
                            f"'{col}'{_did_you_mean(col, [c.name for c in table.columns])}"
                        )
            values["_where"] = extractor.where(*loc, "tables", name)
            for key_field in ("row_identifier_key", "update_key"):
                if key_field in values:
                    values[f"_{key_field}_where"] = extractor.where(
                        *loc, "tables", name, key_field.replace("_", "-")
                    )
            out[(table.schema, table.name)] = values
    return out


def _selected(
    table: Table,
    columns: tuple[Column, ...],
    condition: str | None,
    where: str,
    settings: dict[str, Any],
    extractor: ConfigFile[ExtractorConfig],
    section: Section,
) -> SelectedTable:
    key: tuple[str, ...] = table.primary_key
    key_from: Literal["primary-key", "row-identifier-key"] | None = "primary-key" if key else None
    rik = settings.get("row_identifier_key")
    rik_where = settings.get("_row_identifier_key_where", "")
    if section == "delta-snapshot" and not rik:
        rik = extractor.value.delta_snapshot.row_identifier_key
        rik = rik if rik and all(table.column(c) for c in rik) else None
        rik_where = extractor.where(section, "row-identifier-key")
    key_where = ""
    if not key and rik:
        key, key_from, key_where = tuple(rik), "row-identifier-key", rik_where
    if key:
        selected_names = {c.name for c in columns}
        columns = tuple(c for c in table.columns if c.name in selected_names or c.name in key)
    update_key: tuple[str, ...] = ()
    update_key_where = ""
    replicate_deletes = None
    if section == "delta-snapshot":
        uk = settings.get("update_key")
        update_key_where = settings.get("_update_key_where", "")
        if not uk:
            # The section-wide update-key applies to the tables that have its columns.
            uk = extractor.value.delta_snapshot.update_key
            update_key_where = extractor.where(section, "update-key")
        if isinstance(uk, str):
            uk = [uk]
        if uk and all(table.column(c) for c in uk):
            update_key = tuple(uk)
        else:
            update_key_where = ""
        replicate_deletes = settings.get(
            "replicate_deletes", extractor.value.delta_snapshot.replicate_deletes
        )
    hints = settings.get("split_hints")
    return SelectedTable(
        table=table,
        columns=columns,
        condition=condition,
        condition_where=where,
        key=key,
        key_from=key_from,
        split_key=settings.get("split_key"),
        split_hints=SplitHints(**hints) if hints else None,
        config_where=settings.get("_where", ""),
        update_key=update_key,
        replicate_deletes=replicate_deletes,
        key_where=key_where,
        update_key_where=update_key_where,
    )


def check_conditions(conn: psycopg.Connection[Any], tables: list[SelectedTable]) -> None:
    """Refuse a filter predicate that is not one harmless boolean expression, before anything is copied."""
    for t in tables:
        if t.condition:
            conditions.verify(conn, t.table.ident, t.condition, t.condition_where, t.display)


def _match(name: str, candidates: dict[str, Any]) -> Any:
    """Exact name first; else a unique case-insensitive match (filters are often written in upper case)."""
    if name in candidates:
        return candidates[name]
    folded = [v for k, v in candidates.items() if k.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _did_you_mean(name: str, known: list[str]) -> str:
    same_but_case = sorted(k for k in known if k.lower() == name.lower())
    if len(same_but_case) > 1:
        both = " and ".join(f'"{k}"' for k in same_but_case)
        return (
            f"; '{name}' matches {both} when case is ignored, so it names neither: write one of them exactly "
            f"(names are case-sensitive)"
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
