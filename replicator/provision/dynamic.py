"""Pulumi dynamic providers: the replication user (psycopg) and attaching settings to an adopted RDS
resource (boto3).

They live in the installed package, not in ``infra/``, because Pulumi runs dynamic providers in
a separate host process that unpickles them; only importable modules survive that trip.
The work itself is in ``pgaccess`` and plain boto3 calls, so it is tested without Pulumi.
"""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from replicator import awsclient
from replicator.provision import pgaccess

# Changing any of these means another role, or another server: a new resource.
_USER_IDENTITY = ("host", "port", "database", "user")
_USER_SETTINGS = (
    "schemas", "replication_right", "table_owners", "heartbeat_table", "publication", "publication_tables",
    "password_version", "admin_user", "admin_password", "sslmode",
)


def _admin_connection(props: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=props["host"],
        port=int(props["port"]),
        dbname=props["database"],
        user=props["admin_user"],
        password=props["admin_password"],
        sslmode=props.get("sslmode") or "prefer",
        connect_timeout=15,
        application_name="replicator-provision",
        autocommit=True,
    )


def new_password() -> str:
    # URL-safe: survives connection strings, JSON and shells without quoting.
    return secrets.token_urlsafe(24)


class ReplicationUserProvider(ResourceProvider):
    """CRUD for the replication user; every operation is idempotent (see ``pgaccess``)."""

    serialize_as_secret_always = True

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        for key in ("host", "database", "user", "admin_user"):
            if not news.get(key):
                failures.append(CheckFailure(key, f"{key} is required"))
        if news.get("replication_right") not in ("rds_replication", "attribute"):
            failures.append(CheckFailure("replication_right", "must be rds_replication or attribute"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in _USER_IDENTITY if olds.get(k) != news.get(k)]
        changed = replaces or [k for k in _USER_SETTINGS if olds.get(k) != news.get(k)]
        # The old role must be gone before a new one of the same name can be created.
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        password = new_password()
        with _admin_connection(props) as conn:
            pgaccess.ensure_access(conn, pgaccess.AccessSpec.from_props(props), password)
        return CreateResult(_user_id(props), {**props, "password": password})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        rotate = olds.get("password_version") != news.get("password_version")
        password = new_password() if rotate or not olds.get("password") else olds["password"]
        old_spec, new_spec = pgaccess.AccessSpec.from_props(olds), pgaccess.AccessSpec.from_props(news)
        with _admin_connection(news) as conn:
            pgaccess.update_access(conn, old_spec, new_spec, password)
        return UpdateResult({**news, "password": password})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        with _admin_connection(props) as conn:
            pgaccess.drop_access(conn, pgaccess.AccessSpec.from_props(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # `pulumi refresh`: a role dropped by hand is reported gone, so the next `up` recreates it.
        with _admin_connection(props) as conn:
            exists = pgaccess.role_exists(conn, props["user"])
        return ReadResult(id_ if exists else None, props)


def _user_id(props: dict[str, Any]) -> str:
    return f"{props['host']}:{int(props['port'])}/{props['database']}/{props['user']}"


class RdsAttachmentProvider(ResourceProvider):
    """Attach a parameter group and a minimum backup retention to an instance or cluster we adopt.

    The program does not own an adopted database, so instead of managing it as a Pulumi resource it
    changes just these two settings and puts the previous ones back on delete.
    """

    serialize_as_secret_always = False

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in ("kind", "identifier", "region", "endpoint_url") if olds.get(k) != news.get(k)]
        changed = replaces or [
            k for k in ("parameter_group", "backup_retention_days") if olds.get(k) != news.get(k)
        ]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        current = describe_settings(props)
        applied = apply_settings(props, current)
        outs = {
            **props,
            "previous_parameter_group": current["parameter_group"],
            "previous_backup_retention_days": current["backup_retention_days"],
            "applied_backup_retention_days": applied,
        }
        return CreateResult(f"{props['kind']}/{props['identifier']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        applied = apply_settings(news, describe_settings(news))
        keep = {k: olds.get(k) for k in ("previous_parameter_group", "previous_backup_retention_days")}
        return UpdateResult({**news, **keep, "applied_backup_retention_days": applied})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        restore_settings(props)


def _rds(props: dict[str, Any]) -> Any:
    return awsclient.client("rds", props.get("region"), props.get("endpoint_url") or None)


def describe_settings(props: dict[str, Any]) -> dict[str, Any]:
    """The attached parameter group and backup retention of the instance or cluster."""
    rds = _rds(props)
    if props["kind"] == "cluster":
        c = rds.describe_db_clusters(DBClusterIdentifier=props["identifier"])["DBClusters"][0]
        return {
            "parameter_group": c["DBClusterParameterGroup"],
            "backup_retention_days": c["BackupRetentionPeriod"],
        }
    i = rds.describe_db_instances(DBInstanceIdentifier=props["identifier"])["DBInstances"][0]
    groups = [g["DBParameterGroupName"] for g in i.get("DBParameterGroups", [])]
    return {
        "parameter_group": groups[0] if groups else None,
        "backup_retention_days": i["BackupRetentionPeriod"],
    }


def apply_settings(props: dict[str, Any], current: dict[str, Any]) -> int:
    """Attach our group; raise retention to the minimum asked for (never lower it). Returns the retention
    set."""
    retention = max(int(props["backup_retention_days"]), int(current["backup_retention_days"] or 0))
    _modify(props, props["parameter_group"], retention)
    return retention


def restore_settings(props: dict[str, Any]) -> None:
    """Put back what was there before, unless someone has changed the settings since."""
    current = describe_settings(props)
    if current["parameter_group"] != props["parameter_group"]:
        return
    retention = int(current["backup_retention_days"])
    if retention == int(props.get("applied_backup_retention_days") or -1):
        retention = int(props.get("previous_backup_retention_days") or retention)
    _modify(props, props.get("previous_parameter_group") or _default_group(props), retention)


def _modify(props: dict[str, Any], group: str, retention: int) -> None:
    rds = _rds(props)
    if props["kind"] == "cluster":
        rds.modify_db_cluster(
            DBClusterIdentifier=props["identifier"],
            DBClusterParameterGroupName=group,
            BackupRetentionPeriod=retention,
            ApplyImmediately=True,
        )
    else:
        rds.modify_db_instance(
            DBInstanceIdentifier=props["identifier"],
            DBParameterGroupName=group,
            BackupRetentionPeriod=retention,
            ApplyImmediately=True,
        )


def _default_group(props: dict[str, Any]) -> str:
    return f"default.{props['family']}"
