"""``replicator check``: every prerequisite of the source (and destination), each failure with its fix.

The "test & continue" of the source-setup guides: database layer (connection, TLS, WAL settings,
slots, rights, keys, publication) and, for RDS and Aurora, the AWS layer (parameter group,
pending reboot, backup retention, security groups, network ACLs). Exit 0 only when all hold.
"""

from __future__ import annotations

from typing import Any

import psycopg

from replicator.check.aws import check_aws, local_address_towards
from replicator.check.database import (
    SOURCE,
    check_destination,
    check_source,
    check_ssl,
    open_connection,
    source_context,
)
from replicator.check.report import CheckResult, Report, Status, skip
from replicator.check.tables import check_tables, selected_tables
from replicator.check.tunnel import check_tunnel
from replicator.config import (
    ConfigFile,
    ConnectionConfig,
    ExtractorConfig,
    FilterConfig,
    load_connection,
    load_extractor,
    load_filter,
)
from replicator.errors import ReplicatorError

__all__ = ["CheckResult", "Report", "Status", "check_all", "run_check"]


def check_all(
    source: ConfigFile[ConnectionConfig],
    destination: ConfigFile[ConnectionConfig] | None = None,
    filter_file: ConfigFile[FilterConfig] | None = None,
    extractor: ConfigFile[ExtractorConfig] | None = None,
    client_ip: str | None = None,
) -> Report:
    """Run every check; nothing is changed on any server (a temporary slot at most, dropped at once)."""
    cfg = source.value
    extractor = extractor or ConfigFile(ExtractorConfig())
    report = Report()
    # Through a bastion, the tunnel first: its hops say where the path breaks.
    hops = check_tunnel(cfg, SOURCE)
    report.add(hops)
    if any(r.failed for r in hops):
        conn = None
        report.add(skip(SOURCE, "connect", "the SSH tunnel is not usable (above): database checks skipped"))
    else:
        conn, connected = open_connection(cfg, "source", SOURCE)
        report.add(connected)
    ip, origin = _client_address(conn, cfg, client_ip)
    # AWS first: its findings (which group, which instances) make the database fixes exact.
    target, aws_results = check_aws(cfg, ip, origin)
    if conn is not None:
        with conn:
            report.add(check_ssl(conn, cfg, SOURCE))
            ctx = source_context(conn, cfg, target)
            report.add(check_source(ctx))
            tables, selection = selected_tables(ctx, filter_file, extractor)
            report.add(selection)
            if tables:
                report.add(check_tables(ctx, tables))
    report.add(aws_results)
    if destination is not None:
        report.add(check_destination(destination.value))
    return report


def _client_address(
    conn: psycopg.Connection[Any] | None, cfg: ConnectionConfig, given: str | None
) -> tuple[str | None, str]:
    """Our address as the source sees it: given, else what the server saw, else the local route's."""
    if given:
        return given, " (--client-ip)"
    if conn is not None:
        row = conn.execute("SELECT inet_client_addr()").fetchone()
        if row and row[0] is not None:
            # Through an ssh-tunnel the server sees the bastion, which is what its security group must allow.
            return str(
                row[0]
            ), " (the bastion, as the server sees it)" if cfg.ssh_tunnel else " (as the server sees us)"
    if cfg.ssh_tunnel is not None:
        return None, ""  # the bastion's address is not this machine's: only the server could tell
    local = local_address_towards(cfg.host, cfg.port)
    return local, " (local address; pass --client-ip if NAT changes it)"


def _refuse_same_database(
    source: ConfigFile[ConnectionConfig], destination: ConfigFile[ConnectionConfig]
) -> None:
    """Exit 2 when the destination is the source, as every mode would; unreachable servers are the
    checks' to report."""
    from replicator.identity import SameDatabaseError, verify_distinct

    def quick(f: ConfigFile[ConnectionConfig]) -> ConfigFile[ConnectionConfig]:
        return ConfigFile(f.value.model_copy(update={"max_retries": 0}), f.doc)

    try:
        verify_distinct(quick(source), quick(destination))
    except SameDatabaseError:
        raise
    except ReplicatorError:
        pass


def run_check(
    source: str,
    destination: str | None,
    filter_path: str | None,
    extractor: str | None,
    client_ip: str | None,
) -> int:
    source_file = load_connection(source, "source")
    destination_file = load_connection(destination, "destination") if destination else None
    filter_file, extractor_file = load_filter(filter_path), load_extractor(extractor)
    if destination_file is not None:
        _refuse_same_database(source_file, destination_file)
    report = check_all(source_file, destination_file, filter_file, extractor_file, client_ip)
    print(report.render())
    return report.exit_code
