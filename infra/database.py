"""The source database: an RDS instance or Aurora cluster the program creates, or one it adopts."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
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


class RdsAttachment(pulumi.dynamic.Resource, module="replicator", name="RdsAttachment"):
    """Parameter group + backup retention on an instance or cluster the program does not own."""

    def __init__(
        self, name: str, props: dict[str, pulumi.Input[object]], opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__(RdsAttachmentProvider(), name, props, opts)


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
        parameter_group: pulumi.Input[str] | None,
        security_group_ids: list[pulumi.Input[str]],
        region: str,
        endpoint_url: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:SourceDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.existing: ExistingDatabase | None = None
        if cfg.source == "self-hosted":
            assert cfg.host is not None
            self.address, self.port = pulumi.Output.from_input(cfg.host), pulumi.Output.from_input(cfg.port)
        elif cfg.source == "adopt":
            assert parameter_group is not None and cfg.identifier
            self.existing = lookup(cfg)
            self.address = pulumi.Output.from_input(self.existing.address)
            self.port = pulumi.Output.from_input(self.existing.port)
            self.attachment = RdsAttachment(
                f"{name}-settings",
                {
                    "kind": "cluster" if cfg.is_cluster else "instance",
                    "identifier": cfg.identifier,
                    "parameter_group": parameter_group,
                    "family": cfg.family,
                    "backup_retention_days": cfg.backup_retention_days,
                    "region": region,
                    "endpoint_url": endpoint_url,
                },
                child,
            )
        elif cfg.is_cluster:
            assert parameter_group is not None
            subnets = self._subnet_group(name, cfg, child)
            cluster = aws.rds.Cluster(
                name,
                cluster_identifier=cfg.identifier,
                engine=cfg.engine,
                engine_version=cfg.engine_version,
                database_name=cfg.database_name,
                master_username=cfg.admin_username,
                master_password=pulumi.Output.secret(cfg.admin_password),
                db_cluster_parameter_group_name=parameter_group,
                port=cfg.port,
                backup_retention_period=cfg.backup_retention_days,
                vpc_security_group_ids=security_group_ids,
                db_subnet_group_name=subnets,
                storage_encrypted=True,
                apply_immediately=True,
                skip_final_snapshot=False,
                final_snapshot_identifier=f"{cfg.identifier}-final",
                opts=child,
            )
            aws.rds.ClusterInstance(
                f"{name}-writer",
                identifier=f"{cfg.identifier}-1",
                cluster_identifier=cluster.id,
                engine=cfg.engine,
                engine_version=cfg.engine_version,
                instance_class=cfg.instance_class,
                db_subnet_group_name=subnets,
                publicly_accessible=cfg.publicly_accessible,
                apply_immediately=True,
                opts=child,
            )
            self.address, self.port = cluster.endpoint, cluster.port
        else:
            assert parameter_group is not None
            instance = aws.rds.Instance(
                name,
                identifier=cfg.identifier,
                engine=cfg.engine,
                engine_version=cfg.engine_version,
                instance_class=cfg.instance_class,
                allocated_storage=cfg.allocated_storage_gb,
                db_name=cfg.database_name,
                username=cfg.admin_username,
                password=pulumi.Output.secret(cfg.admin_password),
                parameter_group_name=parameter_group,
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
            self.address, self.port = instance.address, instance.port
        self.register_outputs({"address": self.address, "port": self.port})

    @staticmethod
    def _subnet_group(
        name: str, cfg: StackConfig, child: pulumi.ResourceOptions
    ) -> pulumi.Output[str] | None:
        if not cfg.subnet_ids:
            return None  # the account's default subnet group (default VPC)
        return aws.rds.SubnetGroup(f"{name}-subnets", subnet_ids=cfg.subnet_ids, opts=child).name


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
            i.address, int(i.port), list(i.vpc_security_groups), i.engine, i.engine_version
        )
    if found.engine != cfg.engine or rds.major_version(found.engine_version) != rds.major_version(
        cfg.engine_version
    ):
        raise StackConfigError(
            f"{cfg.identifier} runs {found.engine} {found.engine_version}, but the stack config says "
            f"{cfg.engine} {cfg.engine_version}: set replicator:engine and replicator:engineVersion to match "
            f"(the parameter group family must be {rds.parameter_family(found.engine, found.engine_version)})"
        )
    return found
