"""Which tables a delta pass covers, how each finds its changes, and the configs it refuses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from replicator.catalog import Catalog, Column
from replicator.delta import updatekey
from replicator.destinations.base import DestinationSession
from replicator.errors import ConfigError, DestinationError
from replicator.filters import SelectedTable, check_conditions, select_tables
from replicator.job import Job

log = logging.getLogger(__name__)

Kind = Literal["xmin", "update-key"]


@dataclass(frozen=True)
class DeltaTable:
    st: SelectedTable
    kind: Kind
    replicate_deletes: bool

    @property
    def display(self) -> str:
        return self.st.display

    @property
    def ident(self) -> tuple[str, str]:
        return (self.st.table.schema, self.st.table.name)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(c for k in self.st.key if (c := self.st.table.column(k)) is not None)


def select_delta_tables(conn: psycopg.Connection[Any], job: Job, catalog: Catalog) -> list[DeltaTable]:
    """The filter's tables with the ``delta-snapshot`` section's settings, checked."""
    selected = select_tables(catalog, job.filter, job.extractor, job.source.value.database, "delta-snapshot")
    check_conditions(conn, selected)
    _refuse_keyless(selected, job)
    _check_section_update_key(selected, job)
    tables = []
    for st in selected:
        _check_update_key(st)
        deletes = bool(st.replicate_deletes)
        if deletes:
            _check_key_not_null(st, job)
        tables.append(DeltaTable(st, "update-key" if st.update_key else "xmin", deletes))
    return tables


def _refuse_keyless(selected: list[SelectedTable], job: Job) -> None:
    keyless = [st.display for st in selected if not st.key]
    if not keyless:
        return
    names = ", ".join(keyless)
    one = len(keyless) == 1
    raise ConfigError(
        f"{'table ' + names + ' has' if one else 'tables ' + names + ' have'} no primary key and no "
        f"row-identifier-key: delta-snapshot cannot tell {'its' if one else 'their'} rows apart (add a "
        f"primary key, set row-identifier-key under delta-snapshot: per-table-config in the extractor "
        f"config, or leave {'it' if one else 'them'} out with a filter)"
    )


def _check_section_update_key(selected: list[SelectedTable], job: Job) -> None:
    """A section-wide update-key applies where its columns exist; one that fits no table is a typo."""
    uk = job.extractor.value.delta_snapshot.update_key
    if not uk:
        return
    columns = [uk] if isinstance(uk, str) else list(uk)
    where = job.extractor.where("delta-snapshot", "update-key")
    has_it = [st for st in selected if all(st.table.column(c) for c in columns)]
    if selected and not has_it:
        raise ConfigError(f"{where}: update-key: no selected table has column(s) {', '.join(columns)}")
    without = [st.display for st in selected if st not in has_it and not st.update_key]
    if without:
        log.info("no column %s in %s: these tables use xmin instead", ", ".join(columns), ", ".join(without))


def _check_update_key(st: SelectedTable) -> None:
    cols = [st.table.column(c) for c in st.update_key]
    for col in cols:
        assert col is not None  # filters checked the names
        if not updatekey.usable_type(col):
            raise ConfigError(
                f"{st.update_key_where}: update-key: column '{col.name}' of {st.display} has type "
                f"{col.type_sql}; an update key must be an integer, numeric, date or timestamp column"
            )
    if cols and all(c is not None and not c.not_null for c in cols):
        log.warning(
            "%s: update-key %s allows NULL; rows whose update key is NULL are copied by the first pass only",
            st.display,
            ", ".join(st.update_key),
        )


def _check_key_not_null(st: SelectedTable, job: Job) -> None:
    nullable = [c.name for c in st.table.columns if c.name in st.key and not c.not_null]
    if nullable:
        where = st.key_where or job.extractor.where("delta-snapshot")
        raise ConfigError(
            f"{where}: row-identifier-key: column '{nullable[0]}' of {st.display} allows NULL; "
            f"replicate-deletes compares keys and needs NOT NULL key columns (choose NOT NULL "
            f"columns, or set replicate-deletes: false for this table)"
        )


def check_destination_key(dst: DestinationSession, t: DeltaTable) -> None:
    """Changed rows merge by key: an existing destination table needs a unique index on it."""
    if not dst.has_unique_key(t.ident, t.st.key):
        raise DestinationError(
            f"destination table {t.display} has no primary key or unique index on "
            f"({', '.join(t.st.key)}); delta-snapshot merges changed rows by key: add one, or drop "
            f"the table so replicator recreates it"
        )
