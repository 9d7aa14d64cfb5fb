"""Adopting an RDS instance or Aurora cluster: its parameter group (copied, not replaced), its retention,
and destroy, which refuses to switch logical replication off under live slots. boto3 against moto,
slots on a real PostgreSQL server of their own (slots are cluster-wide: other tests' must not count).

moto's limits, where they matter: attached groups always read back ``in-sync``; no parameter is
validated (``rds.py`` does that); engine defaults are not implemented, so a ``default.*`` group
reads back empty (as it would hold only defaults on AWS); ``reset_db_parameter_group`` does not exist
(the one path that calls it, a dropped parameter whose original was the engine default, is not run here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, LocalCluster, start_cluster
from replicator.provision import attach
from replicator.provision.adminsession import AccessError
from replicator.provision.dynamic import RdsAttachmentProvider
from tests.conftest import AwsEndpoint

PARAMS = [
    {"name": "rds.logical_replication", "value": "1", "apply_method": "pending-reboot"},
    {"name": "max_replication_slots", "value": "10", "apply_method": "pending-reboot"},
    {"name": "wal_sender_timeout", "value": "0", "apply_method": "immediate"},
]
# What a DBA put in the group the database runs with: lost at the next reboot if the group were replaced.
CUSTOM = {
    "shared_preload_libraries": "pg_stat_statements,pg_cron",
    "rds.force_ssl": "1",
    "work_mem": "65536",
    "wal_sender_timeout": "30000",
}


@pytest.fixture(scope="module")
def quiet_cluster(cluster_root: Path) -> Iterator[LocalCluster]:
    """A server of its own, so that the slots the guard sees are exactly this test's."""
    cluster = start_cluster(cluster_root / "attach-slots")
    try:
        for name in ("app", "other"):
            cluster.create_database(name)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def no_slots(quiet_cluster: LocalCluster) -> Iterator[LocalCluster]:
    yield quiet_cluster
    for db in ("app", "other"):
        with psycopg.connect(quiet_cluster.conninfo(db), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = current_database() AND NOT active"
            )


def props(
    aws: AwsEndpoint,
    cluster: LocalCluster | None = None,
    kind: str = "instance",
    identifier: str = "adopted",
    family: str = "postgres16",
    **extra: Any,
) -> dict[str, Any]:
    # As the engine hands them over: numbers arrive as floats.
    return {
        "kind": kind,
        "identifier": identifier,
        "managed_group": f"{identifier}-replicator-{family}",
        "family": family,
        "parameters": PARAMS,
        "backup_retention_days": 7.0,
        "region": aws.region,
        "endpoint_url": aws.url,
        # the admin connection the destroy-time slot check uses (port 1: nothing there)
        "host": "127.0.0.1",
        "port": float(cluster.port if cluster else 1),
        "database": "app",
        "admin_user": SUPERUSER,
        "admin_password": SUPERUSER_PASSWORD,
        "sslmode": "prefer",
        "connect_host": None,
        "connect_port": None,
        "publicly_accessible": False,
        "drop_inactive_slots": False,
        **extra,
    }


def instance(aws: AwsEndpoint, retention: int = 1, group: dict[str, str] | None = None) -> None:
    rds = aws.client("rds")
    extra = {}
    if group is not None:
        rds.create_db_parameter_group(
            DBParameterGroupName="custom",
            DBParameterGroupFamily="postgres16",
            Description="the DBA's settings",
        )
        rds.modify_db_parameter_group(
            DBParameterGroupName="custom",
            Parameters=[
                {"ParameterName": k, "ParameterValue": v, "ApplyMethod": "pending-reboot"}
                for k, v in group.items()
            ],
        )
        extra["DBParameterGroupName"] = "custom"
    rds.create_db_instance(
        DBInstanceIdentifier="adopted",
        Engine="postgres",
        EngineVersion="16.4",
        DBInstanceClass="db.t4g.micro",
        AllocatedStorage=20,
        MasterUsername="postgres",
        MasterUserPassword="x" * 12,
        BackupRetentionPeriod=retention,
        **extra,
    )


def attached(aws: AwsEndpoint) -> tuple[str, int]:
    db = aws.client("rds").describe_db_instances(DBInstanceIdentifier="adopted")["DBInstances"][0]
    return db["DBParameterGroups"][0]["DBParameterGroupName"], db["BackupRetentionPeriod"]


def values(aws: AwsEndpoint, group: str, cluster: bool = False) -> dict[str, str]:
    return attach.group_values(
        {"kind": "cluster" if cluster else "instance", "region": aws.region, "endpoint_url": aws.url}, group
    )


def group_exists(aws: AwsEndpoint, group: str) -> bool:
    groups = aws.client("rds").describe_db_parameter_groups()["DBParameterGroups"]
    return group in {g["DBParameterGroupName"] for g in groups}


def test_a_custom_group_is_copied_not_replaced(aws: AwsEndpoint, no_slots: LocalCluster) -> None:
    instance(aws, group=CUSTOM)
    provider = RdsAttachmentProvider()
    created = provider.create(props(aws, no_slots))
    outs: dict[str, Any] = created.outs  # type: ignore[assignment]
    group, retention = attached(aws)
    assert (group, retention) == ("adopted-replicator-postgres16", 7)
    # Everything the DBA set survives (shared_preload_libraries, rds.force_ssl, memory); ours are added.
    assert values(aws, group) == {
        **CUSTOM,
        "rds.logical_replication": "1",
        "max_replication_slots": "10",
        "wal_sender_timeout": "0",
    }
    assert values(aws, "custom") == CUSTOM  # the original is left as it was
    assert (outs["copied_from"], outs["previous_parameter_group"]) == ("custom", "custom")
    assert outs["original_values"] == {
        "rds.logical_replication": None,
        "max_replication_slots": None,
        "wal_sender_timeout": "30000",
    }

    provider.delete(
        created.id, outs
    )  # the custom group has no rds.logical_replication=1: slots checked (none)
    assert attached(aws) == ("custom", 1)
    assert not group_exists(aws, "adopted-replicator-postgres16")


def test_a_default_group_gets_a_fresh_one(aws: AwsEndpoint, no_slots: LocalCluster) -> None:
    instance(aws)
    provider = RdsAttachmentProvider()
    created = provider.create(props(aws, no_slots))
    outs: dict[str, Any] = created.outs  # type: ignore[assignment]
    assert attached(aws) == ("adopted-replicator-postgres16", 7)
    assert outs["copied_from"] is None and outs["previous_parameter_group"] == "default.postgres16"
    assert values(aws, "adopted-replicator-postgres16") == {
        "rds.logical_replication": "1",
        "max_replication_slots": "10",
        "wal_sender_timeout": "0",
    }
    provider.delete(created.id, outs)
    assert attached(aws) == ("default.postgres16", 1)


def test_an_aurora_cluster_group_is_copied(aws: AwsEndpoint) -> None:
    rds = aws.client("rds")
    rds.create_db_cluster_parameter_group(
        DBClusterParameterGroupName="custom-c", Description="d", DBParameterGroupFamily="aurora-postgresql15"
    )
    rds.modify_db_cluster_parameter_group(
        DBClusterParameterGroupName="custom-c",
        Parameters=[
            {"ParameterName": "rds.force_ssl", "ParameterValue": "1", "ApplyMethod": "pending-reboot"},
            # logical replication already on: destroy then switches nothing off and needs no slot check
            {
                "ParameterName": "rds.logical_replication",
                "ParameterValue": "1",
                "ApplyMethod": "pending-reboot",
            },
        ],
    )
    rds.create_db_cluster(
        DBClusterIdentifier="aurora",
        Engine="aurora-postgresql",
        EngineVersion="15.4",
        MasterUsername="postgres",
        MasterUserPassword="x" * 12,
        BackupRetentionPeriod=1,
        DBClusterParameterGroupName="custom-c",
    )
    provider = RdsAttachmentProvider()
    p = props(aws, kind="cluster", identifier="aurora", family="aurora-postgresql15")
    created = provider.create(p)
    c = rds.describe_db_clusters(DBClusterIdentifier="aurora")["DBClusters"][0]
    assert (c["DBClusterParameterGroup"], c["BackupRetentionPeriod"]) == (
        "aurora-replicator-aurora-postgresql15",
        7,
    )
    assert values(aws, "aurora-replicator-aurora-postgresql15", cluster=True) == {
        "rds.force_ssl": "1",
        "rds.logical_replication": "1",
        "max_replication_slots": "10",
        "wal_sender_timeout": "0",
    }
    provider.delete(created.id, created.outs)  # type: ignore[arg-type]  # port 1: it must not even connect
    c = rds.describe_db_clusters(DBClusterIdentifier="aurora")["DBClusters"][0]
    assert (c["DBClusterParameterGroup"], c["BackupRetentionPeriod"]) == ("custom-c", 1)


def test_a_longer_retention_is_never_lowered(aws: AwsEndpoint) -> None:
    instance(aws, retention=14)
    created = RdsAttachmentProvider().create(props(aws))
    assert created.outs["applied_backup_retention_days"] == 14  # type: ignore[index]
    assert attached(aws)[1] == 14


def test_a_group_someone_attached_since_is_left_alone(aws: AwsEndpoint) -> None:
    instance(aws)
    provider = RdsAttachmentProvider()
    created = provider.create(props(aws))
    rds = aws.client("rds")
    rds.create_db_parameter_group(
        DBParameterGroupName="theirs", DBParameterGroupFamily="postgres16", Description="d"
    )
    rds.modify_db_instance(
        DBInstanceIdentifier="adopted", DBParameterGroupName="theirs", ApplyImmediately=True
    )
    provider.delete(created.id, created.outs)  # type: ignore[arg-type]
    assert attached(aws) == ("theirs", 7)


def test_a_leftover_of_an_interrupted_run_is_refused(aws: AwsEndpoint) -> None:
    instance(aws)
    created = RdsAttachmentProvider().create(props(aws))
    assert created.outs["previous_parameter_group"] == "default.postgres16"  # type: ignore[index]
    # The state was lost (an interrupted `pulumi up`): the database runs our group, its original is unknown.
    with pytest.raises(attach.AttachError, match="attach the original group again"):
        RdsAttachmentProvider().create(props(aws))


def test_update_sets_new_values_and_gives_back_dropped_ones(aws: AwsEndpoint) -> None:
    instance(aws, group=CUSTOM)
    provider = RdsAttachmentProvider()
    olds: dict[str, Any] = provider.create(props(aws)).outs  # type: ignore[assignment]
    news = props(
        aws,
        parameters=[
            *PARAMS[:2],
            {"name": "max_wal_senders", "value": "12", "apply_method": "pending-reboot"},
        ],
    )
    assert provider.diff("x", olds, news).changes
    outs: dict[str, Any] = provider.update("x", olds, news).outs  # type: ignore[assignment]
    got = values(aws, "adopted-replicator-postgres16")
    assert got["max_wal_senders"] == "12"
    assert got["wal_sender_timeout"] == "30000"  # no longer ours: the copied group's own value is back
    assert outs["original_values"] == {
        "rds.logical_replication": None,
        "max_replication_slots": None,
        "max_wal_senders": None,
    }
    assert outs["copied_from"] == "custom" and outs["previous_parameter_group"] == "custom"


# -- destroy versus logical slots ------------------------------------------------------------------


def make_slot(cluster: LocalCluster, db: str, name: str) -> None:
    with psycopg.connect(cluster.conninfo(db), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (name,))


def slots(cluster: LocalCluster) -> list[str]:
    with psycopg.connect(cluster.conninfo("app"), autocommit=True) as conn:
        return [
            r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots ORDER BY 1").fetchall()
        ]


@contextmanager
def consuming(cluster: LocalCluster, db: str, slot: str) -> Iterator[None]:
    """A walsender streaming from ``slot``: the slot is active while this lasts."""
    conn = psycopg.connect(cluster.conninfo(db, replication="database"), autocommit=True)
    try:
        conn.pgconn.send_query(f"START_REPLICATION SLOT {slot} LOGICAL 0/0".encode())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with psycopg.connect(cluster.conninfo(db), autocommit=True) as probe:
                row = probe.execute(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
                ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.05)
        yield
    finally:
        conn.close()


def test_destroy_refuses_while_logical_slots_exist(aws: AwsEndpoint, no_slots: LocalCluster) -> None:
    instance(aws)
    provider = RdsAttachmentProvider()
    outs: dict[str, Any] = provider.create(props(aws, no_slots)).outs  # type: ignore[assignment]
    make_slot(no_slots, "app", "cdc_main")
    make_slot(no_slots, "other", "cdc_other")
    # The old group switches rds.logical_replication off at the next reboot; with slots left the server
    # would not start. Refused, naming every slot and the way out.
    with pytest.raises(AccessError) as refused:
        provider.delete("x", outs)
    message = str(refused.value)
    assert "restore parameter group default.postgres16 on instance adopted" in message
    assert (
        "cdc_main (database app, inactive)" in message and "cdc_other (database other, inactive)" in message
    )
    assert "dropInactiveSlotsOnDestroy" in message
    assert attached(aws)[0] == "adopted-replicator-postgres16"  # nothing was changed
    # Asked to, it drops the inactive slots (each from its own database), then restores.
    provider.delete("x", {**outs, "drop_inactive_slots": True})
    assert slots(no_slots) == []
    assert attached(aws) == ("default.postgres16", 1)


def test_an_active_slot_always_refuses(aws: AwsEndpoint, no_slots: LocalCluster) -> None:
    instance(aws)
    provider = RdsAttachmentProvider()
    outs: dict[str, Any] = provider.create(props(aws, no_slots, drop_inactive_slots=True)).outs  # type: ignore[assignment]
    make_slot(no_slots, "app", "busy")
    make_slot(no_slots, "app", "idle")
    with consuming(no_slots, "app", "busy"):
        with pytest.raises(AccessError, match=r"busy \(database app, active, pid \d+\).*stop the consumers"):
            provider.delete("x", outs)
        assert sorted(slots(no_slots)) == ["busy", "idle"]  # nothing dropped while one is in use
    assert attached(aws)[0] == "adopted-replicator-postgres16"


def test_an_unreachable_database_refuses_with_the_reason(aws: AwsEndpoint) -> None:
    instance(aws)
    provider = RdsAttachmentProvider()
    outs: dict[str, Any] = provider.create(props(aws)).outs  # type: ignore[assignment]  # port 1: nothing there
    with pytest.raises(AccessError, match="must check the database for logical slots, and cannot connect"):
        provider.delete("x", outs)
    assert attached(aws)[0] == "adopted-replicator-postgres16"
