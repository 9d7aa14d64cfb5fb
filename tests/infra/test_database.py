"""Creating versus adopting the source, for both engines: what gets the group, the retention, the rules."""

from __future__ import annotations

from typing import Any

import pytest

from stack_config import StackConfigError
from tests.infra.conftest import BASE, RecordingMocks, run_program

AURORA = {**BASE, "engine": "aurora-postgresql", "engineVersion": "15.4", "identifier": "orders-aurora"}

INSTANCE_LOOKUP = {
    "aws:rds/getInstance:getInstance": {
        "address": "legacy.c9akciq32.eu-west-1.rds.amazonaws.com",
        "port": 5433,
        "engine": "postgres",
        "engineVersion": "16.2",
        "vpcSecurityGroups": ["sg-aaa", "sg-bbb"],
        "dbInstanceIdentifier": "legacy",
    }
}
CLUSTER_LOOKUP = {
    "aws:rds/getCluster:getCluster": {
        "endpoint": "legacy-aurora.cluster-c9akciq32.eu-west-1.rds.amazonaws.com",
        "port": 5432,
        "engine": "aurora-postgresql",
        "engineVersion": "15.4",
        "vpcSecurityGroupIds": ["sg-ccc"],
        "clusterIdentifier": "legacy-aurora",
    }
}


def group_name(mocks: RecordingMocks, typ: str) -> str:
    return f"{mocks.one(typ).name}-pg"  # the name fake_state gives a group


def test_create_postgres_instance(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "subnetIds": ["subnet-1", "subnet-2"], "backupRetentionDays": 5}, mocks)
    db = mocks.one("aws:rds/instance:Instance").inputs
    assert db["identifier"] == "orders-db" and db["engine"] == "postgres"
    # The major only ("16.4" in the config picks the family): AWS upgrades the minor by itself, and a
    # pinned "16.4" would then be a difference Pulumi tries to undo (a downgrade AWS refuses).
    assert db["engineVersion"] == "16" and db["autoMinorVersionUpgrade"] is True
    assert db["parameterGroupName"] == group_name(mocks, "aws:rds/parameterGroup:ParameterGroup")
    assert db["backupRetentionPeriod"] == 5
    assert db["vpcSecurityGroupIds"] == ["sg-0123456789abcdef0"]  # the group NetworkAccess created
    assert db["dbSubnetGroupName"] == mocks.one("aws:rds/subnetGroup:SubnetGroup").name + "-sng"
    assert mocks.one("aws:rds/subnetGroup:SubnetGroup").inputs["subnetIds"] == ["subnet-1", "subnet-2"]
    assert db["storageEncrypted"] is True and db["publiclyAccessible"] is False and db["applyImmediately"] is True
    assert "password" in mocks.one("aws:rds/instance:Instance").secret_keys
    assert out["host"] == "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com"
    assert out["dbInstanceIdentifier"] == "orders-db" and "dbClusterIdentifier" not in out
    assert mocks.of_type("pulumi-python:dynamic/replicator:RdsAttachment") == []
    assert mocks.invokes == []


def test_create_aurora_cluster(mocks: RecordingMocks) -> None:
    out = run_program(AURORA, mocks)
    cluster = mocks.one("aws:rds/cluster:Cluster").inputs
    assert cluster["clusterIdentifier"] == "orders-aurora" and cluster["engine"] == "aurora-postgresql"
    assert cluster["dbClusterParameterGroupName"] == group_name(
        mocks, "aws:rds/clusterParameterGroup:ClusterParameterGroup"
    )
    assert cluster["backupRetentionPeriod"] == 7
    assert cluster["vpcSecurityGroupIds"] == ["sg-0123456789abcdef0"]
    assert "masterPassword" in mocks.one("aws:rds/cluster:Cluster").secret_keys
    writer = mocks.one("aws:rds/clusterInstance:ClusterInstance").inputs
    assert writer["clusterIdentifier"] == "orders-aurora" and writer["engine"] == "aurora-postgresql"
    assert writer["identifier"] == "orders-aurora-1"
    assert "engineVersion" not in writer  # the instance follows its cluster
    assert "engineVersion" in mocks.request("aws:rds/cluster:Cluster").ignore_changes
    assert mocks.of_type("aws:rds/instance:Instance") == []
    assert out["host"] == "orders-aurora.cluster-abcdefghij.eu-west-1.rds.amazonaws.com"
    assert out["dbClusterIdentifier"] == "orders-aurora" and "dbInstanceIdentifier" not in out


def test_aurora_user_waits_for_the_writer(mocks: RecordingMocks) -> None:
    # The cluster endpoint answers only once the writer instance exists; created against the cluster
    # alone, the replication user's first `pulumi up` fails to connect.
    out = run_program(AURORA, mocks)
    user = mocks.requests["orders-aurora-replication-user"]
    assert "orders-aurora-writer" in user.property_dependencies["host"]
    assert "orders-aurora-writer" in user.dependencies
    names = [r.name for r in mocks.resources]
    assert names.index("orders-aurora-writer") < names.index("orders-aurora-replication-user")
    assert out["host"] == "orders-aurora.cluster-abcdefghij.eu-west-1.rds.amazonaws.com"


def test_a_private_database_needs_a_way_in() -> None:
    config = {k: v for k, v in BASE.items() if k != "adminAccess"}
    expected = r"not be publicly accessible.*adminAccess: \{via: vpc\}.*via: tunnel"
    with pytest.raises(StackConfigError, match=expected):
        run_program(config, RecordingMocks())
    mocks = RecordingMocks()
    run_program({**config, "publiclyAccessible": True}, mocks)
    assert mocks.one("aws:rds/instance:Instance").inputs["publiclyAccessible"] is True
    # An adopted private instance: the lookup says so.
    private = {k: {**v, "publiclyAccessible": False} for k, v in INSTANCE_LOOKUP.items()}
    with pytest.raises(StackConfigError, match="legacy is not publicly accessible"):
        run_program({**config, "source": "adopt", "identifier": "legacy"}, RecordingMocks(lookups=private))


def test_adopt_postgres_instance(mocks: RecordingMocks) -> None:
    mocks.lookups = INSTANCE_LOOKUP
    out = run_program({**BASE, "source": "adopt", "identifier": "legacy", "backupRetentionDays": 3}, mocks)
    assert mocks.invokes == [("aws:rds/getInstance:getInstance", {"dbInstanceIdentifier": "legacy"})]
    assert mocks.of_type("aws:rds/instance:Instance") == []  # not ours: nothing that could replace it
    assert mocks.of_type("aws:ec2/securityGroup:SecurityGroup") == []
    attach = mocks.one("pulumi-python:dynamic/replicator:RdsAttachment").inputs
    assert {k: attach[k] for k in ("kind", "identifier", "family", "backup_retention_days", "region")} == {
        "kind": "instance", "identifier": "legacy", "family": "postgres16", "backup_retention_days": 3,
        "region": "eu-west-1",
    }
    # The attachment makes the group itself (a copy of the current one: see tests/provision/test_attach.py).
    assert attach["managed_group"] == "legacy-replicator-postgres16"
    assert [p["name"] for p in attach["parameters"]] == [
        "rds.logical_replication", "max_replication_slots", "max_wal_senders", "wal_sender_timeout",
        "max_slot_wal_keep_size",
    ]
    assert mocks.of_type("aws:rds/parameterGroup:ParameterGroup") == []
    # What the destroy-time slot check connects with; the password stays secret.
    assert (attach["host"], attach["port"], attach["admin_user"]) == (
        "legacy.c9akciq32.eu-west-1.rds.amazonaws.com", 5433, "postgres")
    assert attach["drop_inactive_slots"] is False
    assert "admin_password" in mocks.one("pulumi-python:dynamic/replicator:RdsAttachment").secret_keys
    attach_request = mocks.request("pulumi-python:dynamic/replicator:RdsAttachment")
    assert "admin_password" in attach_request.additional_secret_outputs
    rules = mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert sorted((r.inputs["securityGroupId"], r.inputs["cidrIpv4"], r.inputs["fromPort"]) for r in rules) == [
        ("sg-aaa", "198.51.100.0/24", 5433), ("sg-aaa", "203.0.113.7/32", 5433),
        ("sg-bbb", "198.51.100.0/24", 5433), ("sg-bbb", "203.0.113.7/32", 5433),
    ]
    assert (out["host"], out["port"]) == ("legacy.c9akciq32.eu-west-1.rds.amazonaws.com", 5433)
    user = mocks.one("pulumi-python:dynamic/replicator:ReplicationUser").inputs
    assert (user["host"], user["port"], user["replication_right"]) == (out["host"], 5433, "rds_replication")


def test_adopt_aurora_cluster(mocks: RecordingMocks) -> None:
    mocks.lookups = CLUSTER_LOOKUP
    out = run_program({**AURORA, "source": "adopt", "identifier": "legacy-aurora"}, mocks)
    attach = mocks.one("pulumi-python:dynamic/replicator:RdsAttachment").inputs
    assert (attach["kind"], attach["identifier"], attach["family"]) == ("cluster", "legacy-aurora", "aurora-postgresql15")
    assert attach["managed_group"] == "legacy-aurora-replicator-aurora-postgresql15"
    assert "max_slot_wal_keep_size" not in [p["name"] for p in attach["parameters"]]
    assert mocks.of_type("aws:rds/cluster:Cluster") == [] and mocks.of_type("aws:rds/clusterInstance:ClusterInstance") == []
    assert {r.inputs["securityGroupId"] for r in mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")} == {"sg-ccc"}
    assert out["dbClusterIdentifier"] == "legacy-aurora"


def test_adopt_with_explicit_security_groups(mocks: RecordingMocks) -> None:
    mocks.lookups = INSTANCE_LOOKUP
    run_program({**BASE, "source": "adopt", "identifier": "legacy", "securityGroupIds": ["sg-mine"]}, mocks)
    rules = mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert {r.inputs["securityGroupId"] for r in rules} == {"sg-mine"}


@pytest.mark.parametrize(
    ("config", "lookups", "message"),
    [
        ({**BASE, "source": "adopt", "identifier": "legacy", "engineVersion": "15"}, INSTANCE_LOOKUP,
         r"legacy runs postgres 16.2, but the stack config says postgres 15.*family must be postgres16"),
        ({**AURORA, "source": "adopt", "identifier": "legacy-aurora", "engine": "postgres"}, CLUSTER_LOOKUP,
         r"unexpected invoke aws:rds/getInstance"),
    ],
)
def test_adopt_refuses_a_mismatched_engine(config: dict[str, Any], lookups: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        run_program(config, RecordingMocks(lookups=lookups))


def test_adopted_aurora_refuses_instance_level_parameters() -> None:
    with pytest.raises(StackConfigError, match="max_worker_processes are instance-level parameters"):
        run_program({**AURORA, "source": "adopt", "identifier": "legacy-aurora",
                     "extraParameters": {"max_worker_processes": 16}}, RecordingMocks(lookups=CLUSTER_LOOKUP))


def test_self_hosted(mocks: RecordingMocks) -> None:
    out = run_program(
        {**BASE, "source": "self-hosted", "identifier": None, "host": "10.0.0.5", "port": 5444,
         "securityGroupIds": ["sg-ec2"], "publicationTables": "*"},
        mocks,
    )
    assert [r.typ for r in mocks.resources if r.typ.startswith("aws:rds")] == []
    user = mocks.one("pulumi-python:dynamic/replicator:ReplicationUser").inputs
    assert (user["host"], user["port"], user["replication_right"], user["sslmode"]) == ("10.0.0.5", 5444, "attribute", "prefer")
    assert user["publication_tables"] == "*"
    assert {r.inputs["fromPort"] for r in mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")} == {5444}
    assert "dbInstanceIdentifier" not in out and "dbClusterIdentifier" not in out
    assert out["sslMode"] == "prefer"


def test_self_hosted_allowlist_needs_a_group() -> None:
    with pytest.raises(StackConfigError, match="securityGroupIds"):
        run_program({**BASE, "source": "self-hosted", "identifier": None, "host": "10.0.0.5"}, RecordingMocks())
