"""The source database: an RDS instance or Aurora cluster the program creates, or one it adopts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
from parameters import LogicalReplicationParameters
from stack_config import StackConfig, StackConfigError

from replicator.provision import rds
from replicator.provision.dynamic import RdsAttachmentProvider


@dataclass(frozen=True)
class ExistingDatabase:
    """What a lookup of an adopted instance or cluster tells us."""

    address: str
    port: int
    security_group_ids: list[str]
    engine: str
    engine_version: str
    publicly_accessible: bool | None = None  # clusters: per instance, unknown here


class RdsAttachment(pulumi.dynamic.Resource, module="replicator", name="RdsAttachment"):
    """Parameter group + backup retention on an instance or cluster the program does not own."""

    def __init__(
        self, name: str, props: dict[str, pulumi.Input[object]], opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__(
            RdsAttachmentProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["admin_password", "bastion"])
            ),
        )


def managed_group_name(cfg: StackConfig) -> str:
    """The group the program makes for an adopted database (family in the name: an upgrade needs another)."""
    return f"{cfg.identifier}-replicator-{cfg.family}"


class SourceDatabase(pulumi.ComponentResource):
    """Endpoint of the source, with the logical-replication parameter group attached.

    ``create``: a new instance (``postgres``) or cluster + writer instance (``aurora-postgresql``)
    with the group and the backup retention. ``adopt``: an existing one by identifier; its group
    and retention are changed by an ``RdsAttachment``. ``self-hosted``: just the given host.
    """

    address: pulumi.Output[str]
    port: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        security_group_ids: list[pulumi.Input[str]],
        region: str,
        endpoint_url: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:SourceDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.existing: ExistingDatabase | None = None
        self.publicly_accessible: bool | None = None
        if cfg.source == "self-hosted":
            assert cfg.host is not None
            self.address, self.port = pulumi.Output.from_input(cfg.host), pulumi.Output.from_input(cfg.port)
        elif cfg.source == "adopt":
            assert cfg.identifier
            self.existing = lookup(cfg)
            self.publicly_accessible = self.existing.publicly_accessible
            self.address = pulumi.Output.from_input(self.existing.address)
            self.port = pulumi.Output.from_input(self.existing.port)
            self.attachment = RdsAttachment(
                f"{name}-settings",
                {
                    "kind": "cluster" if cfg.is_cluster else "instance",
                    "identifier": cfg.identifier,
                    "managed_group": managed_group_name(cfg),
                    "family": cfg.family,
                    "parameters": [
                        {"name": p.name, "value": p.value, "apply_method": p.apply_method}
                        for p in cfg.parameters
                    ],
                    "backup_retention_days": cfg.backup_retention_days,
                    "region": region,
                    "endpoint_url": endpoint_url,
                    # For the slot check on destroy (logical replication off with slots left: refused).
                    **admin_props(cfg, self.existing.address, self.existing.port, self.publicly_accessible),
                    "drop_inactive_slots": cfg.drop_inactive_slots_on_destroy,
                },
                child,
            )
        else:
            self.publicly_accessible = cfg.publicly_accessible
            groups = LogicalReplicationParameters(
                f"{name}-logical-replication", cfg.engine, cfg.engine_version, cfg.parameters, opts=child
            )
            if cfg.is_cluster:
                self._create_cluster(name, cfg, groups, security_group_ids, child)
            else:
                self._create_instance(name, cfg, groups, security_group_ids, child)
        self.register_outputs({"address": self.address, "port": self.port})

    def _create_instance(
        self,
        name: str,
        cfg: StackConfig,
        groups: LogicalReplicationParameters,
        security_group_ids: list[pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        instance = aws.rds.Instance(
            name,
            identifier=cfg.identifier,
            engine=cfg.engine,
            # The major only: AWS picks the minor and upgrades it; a minor here would be drift to undo.
            engine_version=cfg.engine_version_for_aws,
            auto_minor_version_upgrade=True,
            instance_class=cfg.instance_class,
            allocated_storage=cfg.allocated_storage_gb,
            db_name=cfg.database_name,
            username=cfg.admin_username,
            password=pulumi.Output.secret(cfg.admin_password),
            parameter_group_name=groups.group_name,
            port=cfg.port,
            backup_retention_period=cfg.backup_retention_days,
            vpc_security_group_ids=security_group_ids,
            db_subnet_group_name=self._subnet_group(name, cfg, child),
            publicly_accessible=cfg.publicly_accessible,
            storage_encrypted=True,
            apply_immediately=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=f"{cfg.identifier}-final",
            opts=child,
        )
        self.instance_identifier = instance.identifier
        self.address, self.port = instance.address, instance.port

    def _create_cluster(
        self,
        name: str,
        cfg: StackConfig,
        groups: LogicalReplicationParameters,
        security_group_ids: list[pulumi.Input[str]],
        child: pulumi.ResourceOptions,
    ) -> None:
        subnets = self._subnet_group(name, cfg, child)
        cluster = aws.rds.Cluster(
            name,
            cluster_identifier=cfg.identifier,
            engine=cfg.engine,
            engine_version=cfg.engine_version_for_aws,
            database_name=cfg.database_name,
            master_username=cfg.admin_username,
            master_password=pulumi.Output.secret(cfg.admin_password),
            db_cluster_parameter_group_name=groups.group_name,
            port=cfg.port,
            backup_retention_period=cfg.backup_retention_days,
            vpc_security_group_ids=security_group_ids,
            db_subnet_group_name=subnets,
            storage_encrypted=True,
            apply_immediately=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=f"{cfg.identifier}-final",
            # Aurora upgrades minors itself; the version written at creation must not be "restored" later.
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(ignore_changes=["engineVersion"])
            ),
        )
        writer = aws.rds.ClusterInstance(
            f"{name}-writer",
            identifier=f"{cfg.identifier}-1",
            cluster_identifier=cluster.id,
            engine=cfg.engine,
            instance_class=cfg.instance_class,
            db_subnet_group_name=subnets,
            # Instance-level parameters (a cluster group does not apply them); None: Aurora's default group.
            db_parameter_group_name=groups.instance_group_name,
            publicly_accessible=cfg.publicly_accessible,
            apply_immediately=True,
            opts=child,
        )
        self.cluster_identifier = cluster.cluster_identifier
        # The cluster endpoint answers only once the writer exists: whoever connects (the replication user,
        # the hand-off) must wait for the writer, so the address carries a dependency on it.
        self.address = pulumi.Output.all(cluster.endpoint, writer.id).apply(lambda values: str(values[0]))
        self.port = cluster.port

    @staticmethod
    def _subnet_group(
        name: str, cfg: StackConfig, child: pulumi.ResourceOptions
    ) -> pulumi.Output[str] | None:
        if not cfg.subnet_ids:
            return None  # the account's default subnet group (default VPC)
        return aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=cfg.subnet_ids, opts=child).name


def admin_props(
    cfg: StackConfig, host: pulumi.Input[str], port: pulumi.Input[int], publicly_accessible: bool | None
) -> dict[str, pulumi.Input[Any]]:
    """How the program's admin session reaches the database (see replicator/provision/adminconn.py)."""
    tunnel = cfg.admin_access if cfg.admin_access and cfg.admin_access.via == "tunnel" else None
    return {
        "host": host,
        "port": port,
        "database": cfg.database_name,
        "admin_user": cfg.admin_username,
        "admin_password": pulumi.Output.secret(cfg.admin_password),
        "sslmode": cfg.ssl_mode,
        "connect_host": tunnel.host if tunnel else None,
        "connect_port": tunnel.port if tunnel else None,
        "publicly_accessible": publicly_accessible,
        # Provider inputs are kept in the stack's state: the bastion's key and passphrase only as a secret.
        "bastion": pulumi.Output.secret(cfg.bastion.tunnel_props()) if cfg.bastion else None,
    }


def lookup(cfg: StackConfig) -> ExistingDatabase:
    """Read the adopted instance or cluster, and refuse one whose engine the group cannot fit."""
    assert cfg.identifier
    if cfg.is_cluster:
        c = aws.rds.get_cluster(cluster_identifier=cfg.identifier)
        found = ExistingDatabase(
            c.endpoint, int(c.port), list(c.vpc_security_group_ids), c.engine, c.engine_version
        )
    else:
        i = aws.rds.get_instance(db_instance_identifier=cfg.identifier)
        found = ExistingDatabase(
            i.address, int(i.port), list(i.vpc_security_groups), i.engine, i.engine_version,
            bool(i.publicly_accessible) if i.publicly_accessible is not None else None,
        )
    if found.engine != cfg.engine or rds.major_version(found.engine_version) != rds.major_version(
        cfg.engine_version
    ):
        raise StackConfigError(
            f"{cfg.identifier} runs {found.engine} {found.engine_version}, but the stack config says "
            f"{cfg.engine} {cfg.engine_version}: set replicator:engine and replicator:engineVersion to match "
            f"(the parameter group family must be {rds.parameter_family(found.engine, found.engine_version)})"
        )
    if found.publicly_accessible is False and cfg.admin_access is None and cfg.bastion is None:
        raise StackConfigError(
            f"{cfg.identifier} is not publicly accessible, so this program can reach it, to create the "
            "replication user, only from inside its VPC. Say how: replicator:adminAccess: {via: vpc} when "
            "pulumi runs in the VPC (or reaches it by peering or VPN), or {via: tunnel, host: 127.0.0.1, "
            "port: 15432} through SSM port forwarding or an SSH tunnel via a bastion (infra/README.md, "
            "\"Private databases\")"
        )
    return found
