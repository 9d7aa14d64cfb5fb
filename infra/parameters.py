"""Logical-replication parameters: a DB parameter group (RDS) or DB cluster parameter group (Aurora)."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from replicator.provision import rds


class LogicalReplicationParameters(pulumi.ComponentResource):
    """``rds.logical_replication=1`` and friends, in the group family the engine version needs.

    The group is attached by whoever owns the instance or cluster (``database.py`` when the program
    creates it, an attachment when it adopts one); ``group_name`` is what they attach.
    """

    group_name: pulumi.Output[str]
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
        rds.validate_parameters(engine, parameters)
        child = pulumi.ResourceOptions(parent=self)
        description = "Logical replication for replicator (rds.logical_replication=1)"
        group: aws.rds.ParameterGroup | aws.rds.ClusterParameterGroup
        if engine == "aurora-postgresql":
            group = aws.rds.ClusterParameterGroup(
                name,
                family=self.family,
                description=description,
                parameters=[
                    aws.rds.ClusterParameterGroupParameterArgs(
                        name=p.name, value=p.value, apply_method=p.apply_method
                    )
                    for p in parameters
                ],
                opts=child,
            )
        else:
            group = aws.rds.ParameterGroup(
                name,
                family=self.family,
                description=description,
                parameters=[
                    aws.rds.ParameterGroupParameterArgs(
                        name=p.name, value=p.value, apply_method=p.apply_method
                    )
                    for p in parameters
                ],
                opts=child,
            )
        self.group_name = group.name
        self.register_outputs({"group_name": self.group_name, "family": self.family})
