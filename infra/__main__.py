"""Provision a PostgreSQL source (RDS instance, Aurora cluster or self-hosted) for logical replication.

``pulumi up`` runs this with the stack config ``Pulumi.<stack>.yaml``; see ``infra/README.md``.
Pulumi runs it with this directory first on ``sys.path``, hence the flat imports.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
from access import ReplicationAccess
from alarms import WalAlarms
from database import SourceDatabase, admin_props
from handoff import Handoff
from network import NetworkAccess, describe_acl_entries
from stack_config import StackConfig, StackConfigError, read_stack_config

ALARM_TOPIC_OUTPUT = "walAlarmTopicArn"
ALARM_NAMES_OUTPUT = "walAlarmNames"


def compose(cfg: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """Declare every component for ``cfg``; returns the stack outputs (the hand-off's, and the alarms')."""
    region = cfg.region or aws.config.region
    if not region:
        raise StackConfigError("no AWS region: set aws:region (or replicator:region) in the stack config")
    name = cfg.identifier or "source"
    acl = cfg.network_acl
    acl_entries = describe_acl_entries(acl.id, region, _endpoint("ec2")) if acl is not None else []
    if cfg.source == "create":
        # The security group must exist before the database that uses it.
        network = NetworkAccess(
            f"{name}-access", cfg.port, cfg.allowlist, cfg.security_group_ids or None, cfg.vpc_id, acl,
            acl_entries,
        )
        db = SourceDatabase(name, cfg, list(network.security_group_ids), region, _endpoint("rds"))
    else:
        # An existing database (adopted, or self-hosted) has its groups already: add rules to them.
        db = SourceDatabase(name, cfg, [], region, _endpoint("rds"))
        groups = cfg.security_group_ids or (db.existing.security_group_ids if db.existing else [])
        port = db.existing.port if db.existing else cfg.port
        if cfg.allowlist and not groups:
            raise StackConfigError(
                "allowlist is set but there is no security group to add it to: set "
                "replicator:securityGroupIds"
            )
        network = NetworkAccess(
            f"{name}-access", port, cfg.allowlist, groups, cfg.vpc_id, cfg.network_acl, acl_entries
        )
    access = ReplicationAccess(
        f"{name}-replication",
        admin=admin_props(cfg, db.address, db.port, db.publicly_accessible),
        user=cfg.replication_user,
        replication_right="rds_replication" if cfg.is_rds else "attribute",
        schemas=cfg.schemas,
        table_owners=cfg.table_owners,
        heartbeat_table=cfg.heartbeat_table,
        publication=cfg.publication,
        publication_tables=cfg.publication_tables,
        ddl_capture=cfg.ddl_capture,
        password_version=cfg.password_version,
        secret_name=cfg.secret_name,
        secret_recovery_window_days=cfg.secret_recovery_window_days,
        engine=cfg.engine,
        identifier=cfg.identifier if cfg.is_rds else None,
        # The program connects through the rules it adds: they must exist first.
        opts=pulumi.ResourceOptions(depends_on=[*network.ingress_rules, *network.acl_rules]),
    )
    handoff = Handoff(
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
        ssh_tunnel=cfg.bastion.handoff_props() if cfg.bastion else None,
    )
    outputs = dict(handoff.outputs)
    if cfg.is_rds and cfg.wal_alarms.enabled:
        assert cfg.identifier
        alarms = WalAlarms(
            f"{name}-wal-alarms",
            "cluster" if cfg.is_cluster else "instance",
            cfg.identifier,
            cfg.wal_budget,
            cfg.wal_alarms.period_seconds,
            cfg.wal_alarms.email,
            opts=pulumi.ResourceOptions(depends_on=[db]),
        )
        outputs[ALARM_TOPIC_OUTPUT] = alarms.topic_arn
        outputs[ALARM_NAMES_OUTPUT] = alarms.alarm_names
    return outputs


def _endpoint(service: str) -> str | None:
    """A custom endpoint from ``aws:endpoints`` (LocalStack), for the boto3 calls the program makes itself."""
    endpoints: Any = pulumi.Config("aws").get_object("endpoints") or []
    for entry in endpoints if isinstance(endpoints, list) else [endpoints]:
        if isinstance(entry, dict) and entry.get(service):
            return str(entry[service])
    return None


# Pulumi runs this file (runpy.run_path); the tests run it the same way, under mocks.
outputs = compose(read_stack_config())
for _key, _value in outputs.items():
    pulumi.export(_key, _value)
