"""wal2json and NaN: a loss refused unless the user accepts it by name.

wal2json prints ``numeric``, ``real`` and ``double precision`` values as JSON numbers, and JSON
has no NaN or Infinity: wal2json 2.5 (Debian 12's) writes ``null`` for them, so an UPDATE that
sets a column to ``'NaN'`` or ``'-Infinity'`` lands at the destination as NULL, silently. Its
``numeric-data-types-as-string`` option (2.6+) prints them as strings, which keeps them; 2.5
rejects that option. pgoutput sends every value as text and has no such limit.

So a wal2json slot that carries a table with such a column is refused (by ``run`` before
anything is written, and by ``check``) unless the server's wal2json knows the option, or the
source config says ``wal2json-nan-becomes-null: true``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.config import ConfigFile, ConnectionConfig
from replicator.filters import SelectedTable
from replicator.source.slots import get_slot, wal2json_accepts

OPT_IN = "wal2json-nan-becomes-null"
OPTION = "numeric-data-types-as-string"
# Types whose values wal2json prints as bare JSON numbers, NaN and Infinity included.
NAN_TYPES = {700: "real", 701: "double precision", 1700: "numeric"}

_probe = itertools.count()


@dataclass(frozen=True)
class NanRisk:
    slot: str
    table: str
    columns: tuple[str, ...]


def nan_columns(t: SelectedTable) -> tuple[str, ...]:
    """The selected columns of ``t`` whose NaN or ±Infinity wal2json would print as null."""
    return tuple(c.name for c in t.columns if c.type_oid in NAN_TYPES and not c.is_generated)


def nan_risks(cfg: ConnectionConfig, slot_tables: dict[str, list[SelectedTable]]) -> list[NanRisk]:
    """For each wal2json slot, the tables it carries with such columns."""
    risks = []
    for slot, tables in slot_tables.items():
        if cfg.slots.get(slot) != "wal2json":
            continue
        for t in tables:
            cols = nan_columns(t)
            if cols:
                risks.append(NanRisk(slot, t.display, cols))
    return risks


def keeps_nan(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Whether the server's wal2json can print numbers as strings (2.6+), asked of ``slot`` if it
    exists and is idle, else of a temporary slot (dropped at once)."""
    info = get_slot(conn, slot)
    try:
        if info is not None and not info.active and info.plugin == "wal2json":
            return wal2json_accepts(conn, slot, OPTION)
        name = f"replicator_nan_probe_{os.getpid()}_{next(_probe)}"
        with conn.transaction():
            # A new slot waits for running transactions to finish: not for ever.
            conn.execute("SET LOCAL statement_timeout = '10s'")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json', true)", (name,))
            try:
                return wal2json_accepts(conn, name, OPTION)
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.Error:
        return False  # cannot tell: the safe answer


def nan_refusal(source: ConfigFile[ConnectionConfig], risks: list[NanRisk]) -> str:
    """The message refusing ``risks`` (which must not be empty)."""
    listed = "; ".join(f"{r.table} ({', '.join(r.columns)}) through slot {r.slot}" for r in risks)
    return (
        f"{source.where('replication-slots')}: replication-slots: wal2json would replicate NaN and "
        f"±Infinity as NULL, silently, in the numeric, real and double precision columns of {listed} "
        f"(this server's wal2json cannot print them as strings: {OPTION} needs wal2json 2.6). Use "
        f"pgoutput, the default, which has no such limit: "
        f"replication-slots: {{{risks[0].slot}: [pgoutput]}}; or accept the loss by adding "
        f"`{OPT_IN}: true` to the source config"
    )
