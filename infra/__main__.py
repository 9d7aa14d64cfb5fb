"""Provision a PostgreSQL source (RDS instance, Aurora cluster or self-hosted) for logical replication.

``pulumi up`` runs this with the stack config ``Pulumi.<stack>.yaml``; see ``infra/README.md``.
Pulumi runs it with this directory first on ``sys.path``, hence the flat imports.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
from access import ReplicationAccess
from database import SourceDatabase
from handoff import Handoff
from network import NetworkAccess
from parameters import LogicalReplicationParameters
from stack_config import StackConfig, StackConfigError, read_stack_config


def compose(cfg: StackConfig) -> Handoff:
    """Declare every component for ``cfg``; returns the hand-off holding the stack outputs."""
    region = cfg.region or aws.config.region
    if not region:
        raise StackConfigError("no AWS region: set aws:region (or replicator:region) in the stack config")
    name = cfg.identifier or "source"
    group = None
    if cfg.is_rds:
        group = LogicalReplicationParameters(
            f"{name}-logical-replication", cfg.engine, cfg.engine_version, cfg.parameters
        ).group_name
    if cfg.source == "create":
        # The security group must exist before the database that uses it.
        network = NetworkAccess(
            f"{name}-access",
            cfg.port,
            cfg.allowlist,
            cfg.security_group_ids or None,
            cfg.vpc_id,
            cfg.network_acl,
        )
        db = SourceDatabase(name, cfg, group, list(network.security_group_ids), region, _endpoint("rds"))
    else:
        # An existing database (adopted, or self-hosted) has its groups already: add rules to them.
        db = SourceDatabase(name, cfg, group, [], region, _endpoint("rds"))
        groups = cfg.security_group_ids or (db.existing.security_group_ids if db.existing else [])
        port = db.existing.port if db.existing else cfg.port
        if cfg.allowlist and not groups:
            raise StackConfigError(
                "allowlist is set but there is no security group to add it to: set "
                "replicator:securityGroupIds"
            )
        NetworkAccess(f"{name}-access", port, cfg.allowlist, groups, cfg.vpc_id, cfg.network_acl)
    access = ReplicationAccess(
        f"{name}-replication",
        host=db.address,
        port=db.port,
        database=cfg.database_name,
        admin_user=cfg.admin_username,
        admin_password=cfg.admin_password,
        sslmode=cfg.ssl_mode,
        user=cfg.replication_user,
        replication_right="rds_replication" if cfg.is_rds else "attribute",
        schemas=cfg.schemas,
        table_owners=cfg.table_owners,
        heartbeat_table=cfg.heartbeat_table,
        publication=cfg.publication,
        publication_tables=cfg.publication_tables,
        password_version=cfg.password_version,
        secret_name=cfg.secret_name,
        engine=cfg.engine,
        identifier=cfg.identifier if cfg.is_rds else None,
    )
    return Handoff(
        f"{name}-handoff",
        host=db.address,
        port=db.port,
        database=cfg.database_name,
        secret_arn=access.secret_arn,
        region=region,
        slots=cfg.slots,
        publication=cfg.publication,
        ssl_mode=cfg.ssl_mode,
        engine=cfg.engine,
        replication_user=cfg.replication_user,
        instance_identifier=cfg.identifier if cfg.is_rds and not cfg.is_cluster else None,
        cluster_identifier=cfg.identifier if cfg.is_cluster else None,
    )


def _endpoint(service: str) -> str | None:
    """A custom endpoint from ``aws:endpoints`` (LocalStack), for the boto3 calls the program makes itself."""
    endpoints: Any = pulumi.Config("aws").get_object("endpoints") or []
    for entry in endpoints if isinstance(endpoints, list) else [endpoints]:
        if isinstance(entry, dict) and entry.get(service):
            return str(entry[service])
    return None


# Pulumi runs this file (runpy.run_path); the tests run it the same way, under mocks.
handoff = compose(read_stack_config())
handoff.export()
