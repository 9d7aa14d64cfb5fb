"""Pulumi dynamic providers: the replication user (psycopg), the settings of an adopted RDS resource (boto3).

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

from replicator.provision import adminconn, attach, pgaccess, slotguard
from replicator.provision.accessspec import AccessSpec
from replicator.provision.adminsession import AccessError

# Changing any of these means another role, or another server: a new resource.
_USER_IDENTITY = ("host", "port", "database", "user")
_USER_SETTINGS = (
    "schemas", "replication_right", "table_owners", "heartbeat_table", "publication", "publication_tables",
    "ddl_capture",
    "password_version", "admin_user", "admin_password", "sslmode", "connect_host", "connect_port",
    "publicly_accessible", "bastion",
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
        with adminconn.admin_session(props) as session:
            pgaccess.ensure_access(session, AccessSpec.from_props(props), password)
        return CreateResult(_user_id(props), {**props, "password": password})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        rotate = olds.get("password_version") != news.get("password_version")
        password = new_password() if rotate or not olds.get("password") else olds["password"]
        old_spec, new_spec = AccessSpec.from_props(olds), AccessSpec.from_props(news)
        with adminconn.admin_session(news) as session:
            pgaccess.update_access(session, old_spec, new_spec, password)
        return UpdateResult({**news, "password": password})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        with adminconn.admin_session(props) as session:
            spec = AccessSpec.from_props(props)
            pgaccess.drop_access(session, spec, lambda db: adminconn.admin_connection(props, db))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # `pulumi refresh`: a role dropped by hand is reported gone, so the next `up` recreates it.
        with adminconn.admin_session(props) as session:
            exists = pgaccess.role_exists(session, props["user"])
        return ReadResult(id_ if exists else None, props)


def _user_id(props: dict[str, Any]) -> str:
    return f"{props['host']}:{int(props['port'])}/{props['database']}/{props['user']}"


class RdsAttachmentProvider(ResourceProvider):
    """The parameter group and minimum backup retention of an instance or cluster we adopt (see ``attach``).

    The program does not own an adopted database, so instead of managing it as a Pulumi resource it
    changes just these two settings and puts the previous ones back on delete: after checking that
    switching logical replication off leaves no logical slot behind (``slotguard``), for which it
    connects with the same admin props as the replication user.
    """

    serialize_as_secret_always = True  # the props hold the admin password

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in _ATTACH_IDENTITY if olds.get(k) != news.get(k)]
        changed = replaces or [k for k in _ATTACH_SETTINGS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> CreateResult:
        current = attach.describe(props)
        prepared = attach.prepare_group(props, current.parameter_group)
        applied = attach.attach(props, current)
        outs = {
            **props,
            **prepared,
            "previous_parameter_group": current.parameter_group,
            "previous_backup_retention_days": current.backup_retention_days,
            "applied_backup_retention_days": applied,
        }
        return CreateResult(f"{props['kind']}/{props['identifier']}", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        originals = attach.update_parameters(olds, news)
        applied = attach.attach(news, attach.describe(news))
        kept = ("previous_parameter_group", "previous_backup_retention_days", "copied_from")
        outs = {**news, **{k: olds.get(k) for k in kept}, "original_values": originals}
        return UpdateResult({**outs, "applied_backup_retention_days": applied})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        attach.restore(props, lambda what: _no_logical_slots_left(props, what))


# Changing any of these is another database or another group: a new attachment.
_ATTACH_IDENTITY = ("kind", "identifier", "region", "endpoint_url", "managed_group")
_ATTACH_SETTINGS = (
    "parameters", "backup_retention_days", "host", "port", "database", "admin_user", "admin_password",
    "sslmode", "connect_host", "connect_port", "publicly_accessible", "drop_inactive_slots", "bastion",
)


def _no_logical_slots_left(props: dict[str, Any], what: str) -> None:
    try:
        conn = adminconn.admin_connection(props)
    except (psycopg.Error, AccessError) as e:
        raise AccessError(
            f"before it can {what} (which switches logical replication off), the program must check the "
            f"database for logical slots, and cannot connect: {e}"
        ) from None
    with conn:
        drop = bool(props.get("drop_inactive_slots"))
        slotguard.clear_for_logical_replication_off(
            conn, what, drop, lambda db: adminconn.admin_connection(props, db)
        )
