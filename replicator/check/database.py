"""Database-layer checks of the source (and destination): connection, TLS, WAL settings, slots, rights."""

from __future__ import annotations

import ipaddress
import itertools
import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.check import fixes
from replicator.check.fixes import RdsTarget
from replicator.check.report import CheckResult, fail, ok, skip, warn
from replicator.check.tunnel import check_tunnel
from replicator.config.connection import ConnectionConfig
from replicator.connect import ConnectError, connect, describe
from replicator.errors import ReplicatorError
from replicator.provision import accessspec, accesssql
from replicator.source import ddlcapture, ddlinstall
from replicator.source.slots import FAILOVER_SLOTS_FROM

SOURCE = "source"
DESTINATION = "destination"

_probe_counter = itertools.count()


@dataclass
class SourceContext:
    """What the source checks share: the connection, who we are, and what kind of server it is."""

    cfg: ConnectionConfig
    conn: psycopg.Connection[Any]
    user: str
    is_rds: bool  # RDS or Aurora: settings live in parameter groups, the right is rds_replication
    has_rds_role: bool = False
    target: RdsTarget | None = None

    @property
    def needs_replication(self) -> bool:
        return bool(self.cfg.replication_slots)

    def settings_fix(self, values: dict[str, str], rds_values: dict[str, str] | None = None) -> str:
        """Change server settings: the RDS parameter group, or ALTER SYSTEM when self-hosted."""
        if self.is_rds:
            return fixes.set_parameters(self.target, rds_values or values)
        return fixes.alter_system(values)

    def sql(self, statement: sql.Composable) -> str:
        return statement.as_string(self.conn) + ";"


def open_connection(
    cfg: ConnectionConfig, role: str, layer: str
) -> tuple[psycopg.Connection[Any] | None, CheckResult]:
    """Connect (retrying at most once: a check should answer quickly) and say how."""
    quick = cfg.model_copy(update={"max_retries": min(cfg.max_retries, 1), "retry_wait_duration_ms": 500})
    try:
        conn = connect(quick, role, application_name="replicator-check", autocommit=True)
    except ConnectError as e:
        return None, fail(layer, "connect", str(e).splitlines()[0], _connect_fix(str(e), cfg))
    except ReplicatorError as e:  # credential store, mostly
        return None, fail(layer, "connect", str(e), "fix the credential-store settings (see the message)")
    return conn, ok(layer, "connect", f"connected to {describe(cfg)} as {conn.info.user}")


def _connect_fix(message: str, cfg: ConnectionConfig) -> str:
    if "password authentication failed" in message:
        return "check username and password (or the credential-store secret) in the config"
    if "no pg_hba.conf entry" in message:
        return (
            f"add to pg_hba.conf: hostssl {cfg.database} {cfg.username or 'USER'} <this machine's "
            "address>/32 "
            "scram-sha-256, then SELECT pg_reload_conf();"
        )
    if "does not exist" in message and "database" in message:
        return f"check `database: {cfg.database}` in the config (the PostgreSQL database name)"
    if "certificate" in message or "SSL" in message:
        return "check ssl.root-cert (the CA bundle) and that host matches the server certificate"
    return (
        f"make sure {cfg.host}:{cfg.port} is reachable from here: the server runs, and its security group / "
        "network ACL / firewall allows this address (see the aws checks)"
    )


def check_ssl(conn: psycopg.Connection[Any], cfg: ConnectionConfig, layer: str) -> CheckResult:
    row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    encrypted, version = (bool(row[0]), row[1]) if row else (False, None)
    mode = cfg.ssl.ssl_mode if cfg.ssl else "prefer"
    if encrypted:
        verified = mode in ("verify-ca", "verify-full")
        return ok(
            layer,
            "tls",
            f"{version}, ssl-mode {mode}" + ("" if verified else " (server certificate not verified)"),
        )
    if _is_loopback(cfg.host):
        return ok(layer, "tls", "not encrypted (loopback connection)")
    return warn(
        layer, "tls", f"the connection to {cfg.host} is not encrypted",
        "set `ssl: {ssl-mode: verify-full, root-cert: /path/to/ca.pem}` in the config "
        "(RDS CA bundle: https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)",
    )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "") or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def source_context(
    conn: psycopg.Connection[Any], cfg: ConnectionConfig, target: RdsTarget | None
) -> SourceContext:
    row = conn.execute(
        "SELECT current_user, EXISTS (SELECT 1 FROM pg_settings WHERE name = 'rds.logical_replication'),"
        " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')"
    ).fetchone()
    assert row is not None
    return SourceContext(cfg, conn, str(row[0]), bool(row[1]) or target is not None, bool(row[2]), target)


def check_source(ctx: SourceContext) -> list[CheckResult]:
    """Every server-level prerequisite of logical replication."""
    if not ctx.needs_replication:
        return [
            skip(
                SOURCE,
                "replication",
                "no replication-slots in the config: realtime prerequisites not checked "
                "(snapshot and delta-snapshot need none of them)",
            )
        ]
    results = [check_wal_level(ctx), check_replication_right(ctx)]
    results.extend(check_slot_capacity(ctx))
    results.extend(check_output_plugins(ctx, results))
    results.append(check_ddl_capture(ctx))
    results.append(check_slot_failover(ctx))
    return results


def check_ddl_capture(ctx: SourceContext) -> CheckResult:
    """Schema changes while streaming: followed only with the DDL capture installed (issue 13)."""
    capture = ddlcapture.state(ctx.conn)
    if not capture.installed:
        return warn(
            SOURCE, "ddl capture",
            f"{capture.problem}: realtime follows only added columns and widened types, not renames, drops, "
            "new tables, indexes or rewritten values",
            "replicator install-ddl-capture --source <the master user's / a superuser's connection config>",
        )
    if ctx.conn.info.server_version < 140000 and "pgoutput" in ctx.cfg.slots.values():
        return warn(SOURCE, "ddl capture", "installed, but pgoutput sends logical messages only from "
                    "PostgreSQL 14 on: its messages do not reach pgoutput slots", "use wal2json, or upgrade")
    gap = ddlinstall.publication_gap(ctx.conn, ctx.cfg.publication)
    if gap is not None:
        return warn(SOURCE, "ddl capture", f"installed (owner {capture.owner}); {gap[0]}", gap[1])
    return ok(SOURCE, "ddl capture", f"installed (version {capture.version}, owner {capture.owner}): schema "
              "changes follow the stream")


def failover_query(server_version: int) -> str | None:
    """What ``check_slot_failover`` asks the source: None before PostgreSQL 17 (no failover slots).

    (synchronized_standby_slots, sync_replication_slots, our slots without failover = true)."""
    if server_version < FAILOVER_SLOTS_FROM:
        return None
    return (
        "SELECT current_setting('synchronized_standby_slots'), current_setting('sync_replication_slots'),"
        " array(SELECT slot_name::text FROM pg_catalog.pg_replication_slots"
        "       WHERE slot_name = ANY(%s) AND NOT failover ORDER BY 1)"
    )


def check_slot_failover(ctx: SourceContext) -> CheckResult:
    """PostgreSQL 17+: can our slots survive a failover to a standby? Before 17 they cannot."""
    version = ctx.conn.info.server_version
    query = failover_query(version)
    if query is None:
        return skip(
            SOURCE, "slot failover",
            f"PostgreSQL {version // 10000}: logical slots do not follow a failover to a standby (from 17 "
            "they can); after one, realtime stops and `replicator run full` copies the tables again",
        )
    row = ctx.conn.execute(query, (list(ctx.cfg.slots),)).fetchone()
    assert row is not None
    standby_slots, sync_here, without = str(row[0]), str(row[1]), list(row[2])
    if without:
        return warn(
            SOURCE, "slot failover",
            f"slot(s) {', '.join(without)} were created without failover = true: a promoted standby will not "
            "have them",
            "drop them and run `replicator run full` (which creates them with failover = true), or on a "
            "replication connection: "
            + "; ".join(f'ALTER_REPLICATION_SLOT "{s}" (FAILOVER true)' for s in without),
        )
    if not standby_slots:
        return warn(
            SOURCE, "slot failover",
            "synchronized_standby_slots is not set: our slots are created with failover = true, but a "
            f"standby may be promoted without them (sync_replication_slots is {sync_here} here; it is the "
            "standby's setting that counts)",
            ctx.settings_fix({"synchronized_standby_slots": "<the physical slot of each standby>"})
            + "\nand on each standby: ALTER SYSTEM SET sync_replication_slots = on; "
            "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();",
        )
    return ok(
        SOURCE, "slot failover",
        f"slots are created with failover = true; synchronized_standby_slots = {standby_slots} "
        "(standbys need sync_replication_slots = on)",
    )


def _setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def check_wal_level(ctx: SourceContext) -> CheckResult:
    level = _setting(ctx.conn, "wal_level")
    if level == "logical":
        return ok(SOURCE, "wal_level", "logical")
    return fail(
        SOURCE, "wal_level", f"wal_level is {level}; logical decoding needs logical",
        ctx.settings_fix({"wal_level": "logical"}, {"rds.logical_replication": "1"}),
    )


def check_replication_right(ctx: SourceContext) -> CheckResult:
    row = ctx.conn.execute(
        "SELECT r.rolsuper, r.rolreplication,"
        " EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')"
        " AND pg_has_role(current_user, 'rds_replication', 'MEMBER')"
        " FROM pg_roles r WHERE r.rolname = current_user"
    ).fetchone()
    assert row is not None
    superuser, attribute, rds_member = (bool(v) for v in row)
    if superuser or attribute or rds_member:
        how = (
            "superuser"
            if superuser
            else ("member of rds_replication" if rds_member else "REPLICATION attribute")
        )
        return ok(SOURCE, "replication right", f"{ctx.user} may replicate ({how})")
    right: accessspec.ReplicationRight = "rds_replication" if ctx.is_rds or ctx.has_rds_role else "attribute"
    return fail(
        SOURCE, "replication right", f"{ctx.user} may not open replication connections or use slots",
        ctx.sql(accesssql.grant_replication(ctx.user, right)) + "  -- as the master user / a superuser",
    )


def check_slot_capacity(ctx: SourceContext) -> list[CheckResult]:
    conn, cfg = ctx.conn, ctx.cfg
    wanted = cfg.slots
    existing = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT slot_name, plugin, database, active_pid FROM pg_replication_slots"
        ).fetchall()
    }
    max_slots = int(_setting(conn, "max_replication_slots"))
    results: list[CheckResult] = []
    to_create = [s for s in wanted if s not in existing]
    free = max_slots - len(existing)
    if free >= len(to_create):
        results.append(
            ok(
                SOURCE,
                "replication slots",
                f"{len(existing)} of {max_slots} in use; {len(to_create)} to create",
            )
        )
    else:
        inactive = [name for name, (_, _, pid) in existing.items() if pid is None and name not in wanted]
        drop = "\n".join(
            f"SELECT pg_drop_replication_slot({sql.Literal(n).as_string(conn)});  -- if nothing uses it"
            for n in inactive
        )
        needed = len(existing) + len(to_create)
        raise_it = ctx.settings_fix({"max_replication_slots": str(needed)})
        results.append(fail(
            SOURCE, "replication slots",
            f"{len(existing)} of max_replication_slots={max_slots} in use; {len(to_create)} more needed",
            raise_it + (f"\nor free unused slots:\n{drop}" if drop else ""),
        ))
    for name, plugin in wanted.items():
        if name not in existing:
            continue
        have_plugin, database, pid = existing[name]
        if have_plugin != plugin or database != cfg.database:
            results.append(
                fail(
                    SOURCE,
                    f"slot {name}",
                    f"slot {name} exists for {have_plugin} in database {database}; the config wants "
                    f"{plugin} in {cfg.database}",
                    f"SELECT pg_drop_replication_slot({sql.Literal(name).as_string(conn)});  -- only if "
                    "nothing else uses it, "
                    "or choose another slot name in replication-slots",
                )
            )
        elif pid is not None:
            results.append(
                warn(SOURCE, f"slot {name}", f"slot {name} is in use by backend {pid} (another replicator?)")
            )
    if cfg.log_reader_type == "STREAM":
        max_senders = int(_setting(conn, "max_wal_senders"))
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'"
        ).fetchone()
        busy = int(row[0]) if row else 0
        if max_senders - busy >= len(wanted):
            results.append(ok(SOURCE, "wal senders", f"{busy} of {max_senders} in use; {len(wanted)} needed"))
        else:
            results.append(
                fail(
                    SOURCE,
                    "wal senders",
                    f"{busy} of max_wal_senders={max_senders} in use; {len(wanted)} needed",
                    ctx.settings_fix({"max_wal_senders": str(busy + len(wanted))}),
                )
            )
    return results


def check_output_plugins(ctx: SourceContext, earlier: list[CheckResult]) -> list[CheckResult]:
    plugins = sorted({p for p in ctx.cfg.slots.values() if p != "pgoutput"})
    if not plugins:
        return []
    if any(r.failed for r in earlier):
        return [skip(SOURCE, f"{p} plugin", "not tried: fix the failures above first") for p in plugins]
    return [check_output_plugin(ctx, p) for p in plugins]


def check_output_plugin(ctx: SourceContext, plugin: str) -> CheckResult:
    """Load the output plugin for real: create a temporary slot with it, then drop it."""
    existing = ctx.conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE plugin = %s LIMIT 1", (plugin,)
    ).fetchone()
    if existing:
        return ok(SOURCE, f"{plugin} plugin", f"a slot already uses {plugin}")
    name = f"replicator_check_{os.getpid()}_{next(_probe_counter)}"
    try:
        with ctx.conn.transaction():
            # A new slot waits for running transactions to finish; do not wait for ever.
            ctx.conn.execute("SET LOCAL statement_timeout = '10s'")
            ctx.conn.execute("SELECT pg_create_logical_replication_slot(%s, %s, true)", (name, plugin))
            ctx.conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    except psycopg.errors.QueryCanceled:
        return warn(
            SOURCE, f"{plugin} plugin", "could not tell: a temporary slot waited 10s for running transactions"
        )
    except psycopg.Error as e:
        text = (e.diag.message_primary or str(e)).strip()
        if "could not access file" in text or "No such file" in text:
            major = ctx.conn.info.server_version // 10000
            fix = (
                f"{plugin} is built into RDS and Aurora: check the engine version supports it"
                if ctx.is_rds else f"install it on the server: apt-get install postgresql-{major}-{plugin}"
            )
            return fail(SOURCE, f"{plugin} plugin", f"the server cannot load {plugin}: {text}", fix)
        return warn(SOURCE, f"{plugin} plugin", f"could not tell: {text}")
    return ok(SOURCE, f"{plugin} plugin", f"{plugin} loads")


def check_destination(cfg: ConnectionConfig) -> list[CheckResult]:
    hops = check_tunnel(cfg, DESTINATION)
    if any(r.failed for r in hops):
        return [
            *hops,
            skip(DESTINATION, "connect", "the SSH tunnel is not usable (above): database checks skipped"),
        ]
    conn, result = open_connection(cfg, "destination", DESTINATION)
    if conn is None:
        return [*hops, result]
    with conn:
        results = [*hops, result, check_ssl(conn, cfg, DESTINATION)]
        row = conn.execute(
            "SELECT current_user, has_database_privilege(current_database(), 'CREATE')"
        ).fetchone()
        assert row is not None
        if row[1]:
            results.append(
                ok(DESTINATION, "create schemas", f"{row[0]} may create schemas in {cfg.database}")
            )
        else:
            grant = sql.SQL("GRANT CREATE ON DATABASE {} TO {};").format(
                sql.Identifier(cfg.database), sql.Identifier(str(row[0]))
            )
            results.append(
                fail(
                    DESTINATION,
                    "create schemas",
                    f"{row[0]} may not create schemas in {cfg.database} (the replicator keeps its state in "
                    "_replicator)",
                    grant.as_string(conn) + "  -- as the database owner",
                )
            )
    return results
