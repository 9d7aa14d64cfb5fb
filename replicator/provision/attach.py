"""Settings of an instance or cluster the program adopts (does not own): parameter group, backup retention.

The database's current parameter group holds settings someone chose (``shared_preload_libraries``,
``rds.force_ssl``, memory): attaching a group with only the replication parameters would drop them
all at the next reboot. So the program attaches a group of its own that starts as a copy of the
current one (``copy_db_parameter_group`` / ``copy_db_cluster_parameter_group``) plus the replication
parameters; a ``default.*`` group cannot be modified and holds only engine defaults, so then a fresh
group of the same family is enough. On destroy, the previous group and retention are put back and
the program's group deleted; see ``slotguard`` for what is checked first.

``props`` are the dynamic resource's inputs: ``kind`` (instance | cluster), ``identifier``,
``region``, ``endpoint_url``, ``family``, ``managed_group`` (the name of the program's group),
``parameters`` ([{name, value, apply_method}]) and ``backup_retention_days``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from replicator import awsclient

_BATCH = 20  # ModifyDBParameterGroup takes at most 20 parameters per call
DESCRIPTION = "replicator: logical replication ({how})"


class AttachError(RuntimeError):
    """The adopted database is not in a state the program can safely change; the message says what to do."""


@dataclass(frozen=True)
class Current:
    parameter_group: str | None
    backup_retention_days: int


def client(props: dict[str, Any]) -> Any:
    return awsclient.client("rds", props.get("region"), props.get("endpoint_url") or None)


def is_cluster(props: dict[str, Any]) -> bool:
    return props["kind"] == "cluster"


def describe(props: dict[str, Any]) -> Current:
    """The attached parameter group and backup retention of the instance or cluster."""
    rds = client(props)
    if is_cluster(props):
        c = rds.describe_db_clusters(DBClusterIdentifier=props["identifier"])["DBClusters"][0]
        return Current(c.get("DBClusterParameterGroup"), int(c.get("BackupRetentionPeriod") or 0))
    i = rds.describe_db_instances(DBInstanceIdentifier=props["identifier"])["DBInstances"][0]
    groups = [g["DBParameterGroupName"] for g in i.get("DBParameterGroups", [])]
    return Current(groups[0] if groups else None, int(i.get("BackupRetentionPeriod") or 0))


def group_values(props: dict[str, Any], group: str) -> dict[str, str]:
    """The values set in ``group`` (an absent name means the engine default applies)."""
    rds = client(props)
    if is_cluster(props):
        pages = rds.get_paginator("describe_db_cluster_parameters").paginate(
            DBClusterParameterGroupName=group
        )
    else:
        pages = rds.get_paginator("describe_db_parameters").paginate(DBParameterGroupName=group)
    return {
        p["ParameterName"]: str(p["ParameterValue"])
        for page in pages
        for p in page.get("Parameters", [])
        if p.get("ParameterValue") is not None
    }


def is_default_group(group: str | None) -> bool:
    return group is None or group.startswith("default.")


def prepare_group(props: dict[str, Any], current_group: str | None) -> dict[str, Any]:
    """Make the program's group (a copy of ``current_group`` unless that is a default one) with the
    replication parameters. Returns what restoring needs: ``copied_from`` and ``original_values``
    (the copy's own value of each parameter we set, None where the engine default applied)."""
    managed = props["managed_group"]
    if current_group == managed:
        what = "cluster" if is_cluster(props) else "instance"
        raise AttachError(
            f"{what} {props['identifier']} already has the program's parameter group {managed} attached, "
            "left by an earlier run that did not finish, so its original group is unknown: attach the "
            f"original group again (aws rds modify-db-{what} ... "
            f"--{'db-cluster-' if is_cluster(props) else 'db-'}parameter-group-name <original> "
            "--apply-immediately) and run pulumi up again"
        )
    copied_from = None if is_default_group(current_group) else current_group
    _drop_leftover(props, managed)
    rds = client(props)
    if copied_from is not None:
        how = f"copy of {copied_from}"
        if is_cluster(props):
            rds.copy_db_cluster_parameter_group(
                SourceDBClusterParameterGroupIdentifier=copied_from,
                TargetDBClusterParameterGroupIdentifier=managed,
                TargetDBClusterParameterGroupDescription=DESCRIPTION.format(how=how),
            )
        else:
            rds.copy_db_parameter_group(
                SourceDBParameterGroupIdentifier=copied_from,
                TargetDBParameterGroupIdentifier=managed,
                TargetDBParameterGroupDescription=DESCRIPTION.format(how=how),
            )
        copied = group_values(props, managed)
    else:
        how = "new group, the database had a default one"
        if is_cluster(props):
            rds.create_db_cluster_parameter_group(
                DBClusterParameterGroupName=managed,
                DBParameterGroupFamily=props["family"],
                Description=DESCRIPTION.format(how=how),
            )
        else:
            rds.create_db_parameter_group(
                DBParameterGroupName=managed,
                DBParameterGroupFamily=props["family"],
                Description=DESCRIPTION.format(how=how),
            )
        copied = {}
    set_parameters(props, props["parameters"])
    return {
        "copied_from": copied_from,
        "original_values": {p["name"]: copied.get(p["name"]) for p in props["parameters"]},
    }


def set_parameters(props: dict[str, Any], parameters: list[dict[str, Any]]) -> None:
    rds = client(props)
    for chunk in _chunks(parameters):
        items = [
            {"ParameterName": p["name"], "ParameterValue": str(p["value"]), "ApplyMethod": p["apply_method"]}
            for p in chunk
        ]
        if is_cluster(props):
            rds.modify_db_cluster_parameter_group(
                DBClusterParameterGroupName=props["managed_group"], Parameters=items
            )
        else:
            rds.modify_db_parameter_group(DBParameterGroupName=props["managed_group"], Parameters=items)


def update_parameters(olds: dict[str, Any], news: dict[str, Any]) -> dict[str, str | None]:
    """Apply ``news``'s parameters; a parameter no longer asked for gets its original value back (or the
    engine default). Returns the original values for the new parameter list."""
    originals: dict[str, str | None] = dict(olds.get("original_values") or {})
    wanted = {p["name"] for p in news["parameters"]}
    source = olds.get("copied_from")
    source_values = group_values(news, source) if source and (wanted - set(originals)) else {}
    for name in wanted - set(originals):
        originals[name] = source_values.get(name)
    set_parameters(news, news["parameters"])
    dropped = [p for p in olds.get("parameters") or [] if p["name"] not in wanted]
    back = [{**p, "value": originals[p["name"]]} for p in dropped if originals.get(p["name"]) is not None]
    set_parameters(news, back)
    _reset(news, [p for p in dropped if originals.get(p["name"]) is None])
    return {name: originals.get(name) for name in wanted}


def attach(props: dict[str, Any], current: Current) -> int:
    """Attach the program's group; raise retention to the minimum asked for (never lower it)."""
    retention = max(int(props["backup_retention_days"]), current.backup_retention_days)
    modify(props, props["managed_group"], retention)
    return retention


def restore(props: dict[str, Any], before_logical_replication_off: Callable[[str], None]) -> None:
    """Put back the previous group and retention (unless someone changed the settings since), then delete
    the program's group. ``before_logical_replication_off(what)`` runs first when the previous group
    switches logical replication off; it raises to refuse."""
    current = describe(props)
    managed = props["managed_group"]
    if current.parameter_group == managed:
        previous = props.get("previous_parameter_group") or f"default.{props['family']}"
        if logical_replication_value(props, previous) != "1":
            what = "cluster" if is_cluster(props) else "instance"
            before_logical_replication_off(
                f"restore parameter group {previous} on {what} {props['identifier']}"
            )
        retention = current.backup_retention_days
        if retention == int(props.get("applied_backup_retention_days") or -1):
            retention = int(props.get("previous_backup_retention_days") or retention)
        modify(props, previous, retention)
    _delete_group(props, managed)


def logical_replication_value(props: dict[str, Any], group: str) -> str | None:
    """``rds.logical_replication`` in ``group``; None when unset or unreadable (a default group: 0)."""
    try:
        return group_values(props, group).get("rds.logical_replication")
    except awsclient.AWS_ERRORS:
        return None


def modify(props: dict[str, Any], group: str, retention: int) -> None:
    rds = client(props)
    if is_cluster(props):
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


def _reset(props: dict[str, Any], parameters: list[dict[str, Any]]) -> None:
    rds = client(props)
    for chunk in _chunks(parameters):
        items = [{"ParameterName": p["name"], "ApplyMethod": p["apply_method"]} for p in chunk]
        if is_cluster(props):
            rds.reset_db_cluster_parameter_group(
                DBClusterParameterGroupName=props["managed_group"], Parameters=items
            )
        else:
            rds.reset_db_parameter_group(DBParameterGroupName=props["managed_group"], Parameters=items)


_NOT_FOUND = (
    "DBParameterGroupNotFound",
    "DBParameterGroupNotFoundFault",
    "DBClusterParameterGroupNotFound",
    "DBClusterParameterGroupNotFoundFault",
)
_IN_USE = ("InvalidDBParameterGroupState", "InvalidDBParameterGroupStateFault")


def _drop_leftover(props: dict[str, Any], group: str) -> None:
    # A group of this name that is not attached here (checked by the caller) is left from an interrupted run.
    _delete_group(props, group, leave_in_use=False)


def _delete_group(props: dict[str, Any], group: str, leave_in_use: bool = True) -> None:
    rds = client(props)
    try:
        if is_cluster(props):
            rds.delete_db_cluster_parameter_group(DBClusterParameterGroupName=group)
        else:
            rds.delete_db_parameter_group(DBParameterGroupName=group)
    except awsclient.AWS_ERRORS as e:
        code = awsclient.error_code(e)
        if code in _NOT_FOUND or (leave_in_use and code in _IN_USE):
            return  # gone already; or still attached (switched to since, or not let go yet): costs nothing
        raise AttachError(f"cannot delete parameter group {group}: {awsclient.explain(e)}") from None


def _chunks(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]
