"""Replication access: the replication user and its rights (dynamic provider), its password in Secrets
Manager."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from replicator.provision.accessspec import ReplicationRight
from replicator.provision.dynamic import ReplicationUserProvider


class ReplicationUser(pulumi.dynamic.Resource, module="replicator", name="ReplicationUser"):
    """A PostgreSQL role with CONNECT, USAGE, SELECT (now and for future tables) and the replication right."""

    password: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, pulumi.Input[object]], opts: pulumi.ResourceOptions
    ) -> None:
        super().__init__(
            ReplicationUserProvider(),
            name,
            {**props, "password": None},
            pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(additional_secret_outputs=["password", "admin_password", "bastion"]),
            ),
        )


class ReplicationAccess(pulumi.ComponentResource):
    """The replication user, and a secret holding its credentials in the JSON shape RDS itself writes."""

    secret_arn: pulumi.Output[str]
    user: str

    def __init__(
        self,
        name: str,
        *,
        admin: dict[str, pulumi.Input[Any]],
        user: str,
        replication_right: ReplicationRight,
        schemas: list[str],
        table_owners: list[str] | None = None,
        heartbeat_table: str | None = None,
        publication: str | None = None,
        publication_tables: list[str] | str | None = None,
        ddl_capture: bool = False,
        password_version: int = 1,
        secret_name: str | None = None,
        secret_recovery_window_days: int = 30,
        engine: str = "postgres",
        identifier: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:ReplicationAccess", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.user = user
        self.replication_user = ReplicationUser(
            f"{name}-user",
            {
                # host, port, database, admin_user/password, sslmode, connect_host/port,
                # publicly_accessible, bastion
                **admin,
                "user": user,
                "replication_right": replication_right,
                "schemas": schemas,
                "table_owners": table_owners or [],
                "heartbeat_table": heartbeat_table,
                "publication": publication if publication_tables is not None else None,
                "publication_tables": publication_tables,
                # Absent unless asked for: stacks made before this setting see no change.
                "ddl_capture": ddl_capture or None,
                "password_version": password_version,
            },
            child,
        )
        secret = aws.secretsmanager.Secret(
            f"{name}-secret",
            name=secret_name,
            description=f"Credentials of the replication user {user} (written by the replicator Pulumi "
                        "program)",
            # A deleted secret keeps its name this long; 0 frees a fixed secretName at once.
            recovery_window_in_days=secret_recovery_window_days,
            opts=child,
        )
        fields: dict[str, pulumi.Input[object]] = {
            "username": user,
            "password": self.replication_user.password,
            "engine": "postgres",
            "host": admin["host"],
            "port": admin["port"],
            "dbname": admin["database"],
        }
        if identifier:
            fields["dbClusterIdentifier" if engine == "aurora-postgresql" else "dbInstanceIdentifier"] = (
                identifier
            )
        self.secret_version = aws.secretsmanager.SecretVersion(
            f"{name}-secret-value",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(pulumi.Output.json_dumps(fields)),
            opts=child,
        )
        self.secret_arn = secret.arn
        self.register_outputs({"secret_arn": self.secret_arn, "user": user})
