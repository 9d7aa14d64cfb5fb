"""Exact fixes: AWS CLI commands for RDS and Aurora, SQL for self-hosted servers."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from replicator.provision import rds


@dataclass(frozen=True)
class RdsTarget:
    """The RDS instance or Aurora cluster behind the source endpoint, as far as we know it."""

    kind: Literal["instance", "cluster"]
    identifier: str
    region: str
    parameter_group: str | None = None
    members: tuple[str, ...] = field(default=())  # cluster: its instances (each needs the reboot)
    engine: str = "postgres"
    engine_version: str = ""

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"


def aws(*args: str) -> str:
    return "aws " + " ".join(shlex.quote(a) for a in args)


def reboot(target: RdsTarget) -> list[str]:
    instances = target.members if target.is_cluster else (target.identifier,)
    if not instances:
        return [
            f"reboot every instance of cluster {target.identifier} (RDS console: Databases > instance > "
            "Actions > Reboot)"
        ]
    return [
        aws("rds", "reboot-db-instance", "--db-instance-identifier", i, "--region", target.region)
        for i in instances
    ]


def set_parameters(target: RdsTarget | None, values: dict[str, str]) -> str:
    """Set parameters in the attached group (or a new one when the default is attached), then reboot."""
    if target is None:
        pairs = ", ".join(f"{k}={v}" for k, v in values.items())
        return (
            f"in the DB parameter group of this RDS instance (Aurora: the DB cluster parameter group) set "
            f"{pairs}, "
            "then reboot; or run `pulumi up` with this repository's program (source: adopt). "
            "Add db-instance-identifier (or db-cluster-identifier) and aws-region to the config for exact "
            "commands."
        )
    params = " ".join(
        f"ParameterName={k},ParameterValue={v},ApplyMethod={rds.default_apply_method(k)}"
        for k, v in values.items()
    )
    group = target.parameter_group
    noun = "db-cluster-parameter-group" if target.is_cluster else "db-parameter-group"
    steps = []
    if group is None or group.startswith("default."):
        # A default group cannot be modified: create one, then attach it.
        family = (
            rds.parameter_family(target.engine, target.engine_version) if target.engine_version else "FAMILY"
        )
        group = f"replicator-{family}"
        steps.append(
            aws(
                "rds",
                f"create-{noun}",
                f"--{noun}-name",
                group,
                "--db-parameter-group-family",
                family,
                "--description",
                "logical replication for replicator",
                "--region",
                target.region,
            )
        )
        if target.is_cluster:
            steps.append(
                aws(
                    "rds",
                    "modify-db-cluster",
                    "--db-cluster-identifier",
                    target.identifier,
                    "--db-cluster-parameter-group-name",
                    group,
                    "--apply-immediately",
                    "--region",
                    target.region,
                )
            )
        else:
            steps.append(
                aws(
                    "rds",
                    "modify-db-instance",
                    "--db-instance-identifier",
                    target.identifier,
                    "--db-parameter-group-name",
                    group,
                    "--apply-immediately",
                    "--region",
                    target.region,
                )
            )
    steps.append(
        f"aws rds modify-{noun} --{noun}-name {shlex.quote(group)} --parameters {shlex.quote(params)} "
        f"--region {shlex.quote(target.region)}"
    )
    if any(rds.default_apply_method(k) == "pending-reboot" for k in values):
        steps.extend(reboot(target))
    return "\n".join(steps)


def alter_system(values: dict[str, str]) -> str:
    """Self-hosted: ALTER SYSTEM, then a restart (these settings are read at server start)."""
    from psycopg import sql

    statements = [
        sql.SQL("ALTER SYSTEM SET {} = {};").format(sql.Identifier(k), sql.Literal(v)).as_string(None)
        for k, v in values.items()
    ]
    return "\n".join(
        [*statements, "then restart PostgreSQL (e.g. systemctl restart postgresql, or pg_ctl restart)"]
    )
