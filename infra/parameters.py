"""Logical-replication parameters: a DB parameter group (RDS), or a DB cluster parameter group (Aurora)
plus, when instance-level parameters are asked for, a DB parameter group for the cluster's writer."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from replicator.provision import rds


class LogicalReplicationParameters(pulumi.ComponentResource):
    """``rds.logical_replication=1`` and friends, in the group family the engine version needs.

    The groups are attached by whoever owns the instance or cluster (``database.py`` when the program
    creates it); ``group_name`` is the instance group (RDS) or cluster group (Aurora), and
    ``instance_group_name`` the writer's DB parameter group on Aurora (None when no instance-level
    parameter is set: Aurora then uses its default group, as before).
    """

    group_name: pulumi.Output[str]
    instance_group_name: pulumi.Output[str] | None
    family: str

    def __init__(
        self,
        name: str,
        engine: rds.Engine,
        engine_version: str,
        parameters: list[rds.Parameter],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:LogicalReplicationParameters", name, None, opts)
        self.family = rds.parameter_family(engine, engine_version)
        rds.validate_parameters(engine, parameters, rds.major_version(engine_version))
        child = pulumi.ResourceOptions(parent=self)
        description = "Logical replication for replicator (rds.logical_replication=1)"
        cluster_level, instance_level = rds.split_by_level(engine, parameters)
        self.instance_group_name = None
        if engine == "aurora-postgresql":
            cluster_group = aws.rds.ClusterParameterGroup(
                name,
                family=self.family,
                description=description,
                parameters=[
                    aws.rds.ClusterParameterGroupParameterArgs(name=p.name, value=p.value, apply_method=p.apply_method)
                    for p in cluster_level
                ],
                opts=child,
            )
            self.group_name = cluster_group.name
            if instance_level:
                # A cluster parameter group does not apply instance-level parameters; they need a DB
                # parameter group (same family) on the instances.
                self.instance_group_name = self._db_group(
                    f"{name}-instance", description + ": instance-level parameters", instance_level, child
                ).name
        else:
            self.group_name = self._db_group(name, description, cluster_level, child).name
        self.register_outputs({"group_name": self.group_name, "family": self.family})

    def _db_group(
        self, name: str, description: str, parameters: list[rds.Parameter], child: pulumi.ResourceOptions
    ) -> aws.rds.ParameterGroup:
        return aws.rds.ParameterGroup(
            name,
            family=self.family,
            description=description,
            parameters=[
                aws.rds.ParameterGroupParameterArgs(name=p.name, value=p.value, apply_method=p.apply_method)
                for p in parameters
            ],
            opts=child,
        )
