"""Logical replication slots: create (with or without an exported snapshot), look up, validate, drop."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from replicator.config.connection import ConnectionConfig
from replicator.connect import connect, describe
from replicator.errors import SourceError
from replicator.lsn import Lsn

log = logging.getLogger(__name__)

PLUGINS = ("pgoutput", "wal2json")

# PostgreSQL 17: a logical slot created with failover = true is synchronized to standbys that
# ask for it (sync_replication_slots = on there, synchronized_standby_slots here), so a promoted
# standby still has it and the stream goes on after a failover instead of copying everything again.
FAILOVER_SLOTS_FROM = 170000


def create_slot_sql(server_version: int) -> str:
    """The SQL that creates a logical slot (no snapshot): with failover = true where supported."""
    if server_version >= FAILOVER_SLOTS_FROM:
        # (name, plugin, temporary, twophase, failover)
        return "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot(%s, %s, false, false, true)"
    return "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot(%s, %s)"


def create_snapshot_slot_command(
    slot: str, plugin: str, server_version: int, temporary: bool = False
) -> sql.Composed:
    """CREATE_REPLICATION_SLOT exporting a snapshot; with FAILOVER where supported (17+, whose
    option list form exists from 15; EXPORT_SNAPSHOT works from 10 on). A ``temporary`` slot (a
    snapshot is all it is for) goes with its connection, and cannot fail over."""
    if temporary:
        return sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL {} EXPORT_SNAPSHOT").format(
            sql.Identifier(slot), sql.Identifier(plugin)
        )
    if server_version >= FAILOVER_SLOTS_FROM:
        return sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} (SNAPSHOT 'export', FAILOVER true)").format(
            sql.Identifier(slot), sql.Identifier(plugin)
        )
    return sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} EXPORT_SNAPSHOT").format(
        sql.Identifier(slot), sql.Identifier(plugin)
    )


@dataclass(frozen=True)
class SlotInfo:
    """A row of ``pg_replication_slots`` (the parts we use)."""

    name: str
    plugin: str | None  # None for a physical slot
    slot_type: str  # "logical" or "physical"
    database: str | None
    active: bool
    active_pid: int | None
    restart_lsn: Lsn | None
    confirmed_flush_lsn: Lsn | None
    wal_status: str | None  # "reserved", "extended", "unreserved", "lost"


_SLOT_QUERY = """
SELECT slot_name, plugin, slot_type, database, active, active_pid, restart_lsn, confirmed_flush_lsn,
    wal_status
FROM pg_catalog.pg_replication_slots WHERE slot_name = %s
"""


def get_slot(conn: psycopg.Connection[Any], name: str) -> SlotInfo | None:
    """The slot called ``name``, or None."""
    row = conn.execute(_SLOT_QUERY, (name,)).fetchone()
    if row is None:
        return None
    name, plugin, slot_type, database, active, active_pid, restart, confirmed, wal_status = row
    return SlotInfo(
        name, plugin, slot_type, database, active, active_pid, _lsn(restart), _lsn(confirmed), wal_status
    )


def check_slot(info: SlotInfo, plugin: str, database: str) -> None:
    """Raise a SourceError if an existing slot cannot be used as configured (and say how to fix it)."""
    drop = sql.SQL("SELECT pg_drop_replication_slot({});").format(sql.Literal(info.name)).as_string(None)
    if info.slot_type != "logical":
        raise SourceError(
            f"replication slot {info.name!r} is a {info.slot_type} slot, not a logical one: "
            f"choose another name in replication-slots, or drop it: {drop}"
        )
    if info.database != database:
        raise SourceError(
            f"replication slot {info.name!r} belongs to database {info.database!r}, not {database!r}: "
            "choose another name in replication-slots (a slot decodes one database)"
        )
    if info.plugin != plugin:
        raise SourceError(
            f"replication slot {info.name!r} decodes with {info.plugin}, but replication-slots says "
            f"{plugin}: "
            f"set replication-slots: {{{info.name}: [{info.plugin}]}}, or drop the slot (then run the "
            f"`full` mode again, the slot's position is lost with it): {drop}"
        )
    if info.wal_status == "lost":
        raise SourceError(
            f"replication slot {info.name!r} is lost: the server removed WAL it still needed "
            "(max_slot_wal_keep_size). Changes were missed; drop the slot and run the `full` mode "
            f"again: {drop}"
        )


def create_slot(conn: psycopg.Connection[Any], name: str, plugin: str) -> Lsn:
    """Create a logical slot (no snapshot) on a regular connection; return its consistent point."""
    _check_plugin_name(plugin)
    try:
        row = conn.execute(create_slot_sql(conn.info.server_version), (name, plugin)).fetchone()
    except psycopg.Error as e:
        raise _create_failed(name, plugin, e) from None
    assert row is not None
    log.info("created replication slot %s (%s) at %s", name, plugin, row[0])
    return Lsn(row[0])


def ensure_slot(conn: psycopg.Connection[Any], name: str, plugin: str) -> tuple[SlotInfo, bool]:
    """The slot ``name``, validated against ``plugin``; created first if missing. (info, created)."""
    database = conn.info.dbname
    info = get_slot(conn, name)
    created = info is None
    if info is None:
        create_slot(conn, name, plugin)
        info = get_slot(conn, name)
        assert info is not None
    check_slot(info, plugin, database)
    return info, created


def drop_slot(conn: psycopg.Connection[Any], name: str, missing_ok: bool = True) -> bool:
    """Drop the slot; whether it existed. Fails if a stream is using it (it is active)."""
    if get_slot(conn, name) is None:
        if missing_ok:
            return False
        raise SourceError(f"replication slot {name!r} does not exist")
    try:
        conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.ObjectInUse as e:
        raise SourceError(f"cannot drop replication slot {name!r}: {e.diag.message_primary}") from None
    log.info("dropped replication slot %s", name)
    return True


def wal2json_accepts(conn: psycopg.Connection[Any], slot: str, option: str, value: str = "1") -> bool:
    """Whether the server's wal2json knows ``option`` (e.g. numeric-data-types-as-string, 2.6+).

    Peeks at ``slot`` (which must not be streaming) up to its first WAL record: enough for the
    plugin to parse its options. Nothing is consumed.
    """
    try:
        with conn.transaction():  # a savepoint when a transaction is open: the failure stays here
            conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_logical_slot_peek_changes(%s, '0/1', NULL, %s, %s)",
                (slot, option, value),
            )
    except psycopg.errors.InvalidParameterValue:
        return False
    return True


class SnapshotSlot:
    """A slot just created with ``EXPORT_SNAPSHOT``, and the replication connection keeping it alive.

    ``snapshot_name`` can be imported by other sessions (``SET TRANSACTION SNAPSHOT``, in a
    REPEATABLE READ transaction started before anything else) only while this object is open and
    this connection stays idle: close it once every snapshot worker has imported the snapshot.
    Streaming from ``consistent_point`` then continues exactly where that snapshot ends.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], slot: str, plugin: str, consistent_point: Lsn, snapshot: str
    ):
        self.conn = conn
        self.slot = slot
        self.plugin = plugin
        self.consistent_point = consistent_point
        self.snapshot_name = snapshot

    @classmethod
    def create(
        cls,
        cfg: ConnectionConfig,
        slot: str,
        plugin: str,
        application_name: str = "replicator-snapshot",
        temporary: bool = False,
    ) -> SnapshotSlot:
        """``temporary``: the slot goes with this connection (a snapshot is all it is for)."""
        _check_plugin_name(plugin)
        conn = connect(cfg, "source", application_name, autocommit=True, replication=True)
        command = create_snapshot_slot_command(slot, plugin, conn.info.server_version, temporary)
        try:
            row = conn.execute(command).fetchone()
        except psycopg.Error as e:
            conn.close()
            raise _create_failed(slot, plugin, e, describe(cfg)) from None
        assert row is not None
        name, point, snapshot, _plugin = row
        log.info("created replication slot %s (%s) at %s with snapshot %s", name, plugin, point, snapshot)
        return cls(conn, name, plugin, Lsn.parse(point), snapshot)

    def close(self) -> None:
        """Release the exported snapshot (the slot stays)."""
        self.conn.close()

    def __enter__(self) -> SnapshotSlot:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_plugin_name(plugin: str) -> None:
    if plugin not in PLUGINS:
        raise SourceError(f"unknown decoder {plugin!r}: use one of {', '.join(PLUGINS)}")


def _create_failed(name: str, plugin: str, exc: psycopg.Error, where: str = "the source") -> SourceError:
    text = (
        exc.diag.message_primary if isinstance(exc, psycopg.Error) and exc.diag.message_primary else str(exc)
    )
    state = getattr(exc, "sqlstate", None) or ""
    hint = ""
    if isinstance(exc, psycopg.errors.DuplicateObject):
        hint = " (another run created it meanwhile; start again to reuse it)"
    elif state == "42501" or "permission" in text or "must be superuser" in text:
        hint = (
            "; the user needs the REPLICATION attribute (ALTER ROLE ... WITH REPLICATION), "
            "or on Amazon RDS / Aurora: GRANT rds_replication TO <user>;"
        )
    elif "wal_level" in text:
        hint = (
            "; set wal_level = logical (on RDS / Aurora: rds.logical_replication = 1) and restart the server"
        )
    elif "max_replication_slots" in text or state == "53400":
        hint = (
            "; raise max_replication_slots, or drop slots no longer used (SELECT * FROM pg_replication_slots)"
        )
    elif isinstance(exc, psycopg.errors.UndefinedFile) or "could not access file" in text:
        hint = f"; the {plugin} output plugin is not installed on the server"
    return SourceError(f"cannot create replication slot {name!r} ({plugin}) on {where}: {text}{hint}")


def _lsn(value: Any) -> Lsn | None:
    if value is None:
        return None
    return value if isinstance(value, Lsn) else Lsn.parse(str(value))
