"""Replication access: the dynamic resource's inputs, and the secret the replicator will read."""

from __future__ import annotations

import json

import pytest

from tests.infra.conftest import BASE, RecordingMocks, run_program

USER = "pulumi-python:dynamic/replicator:ReplicationUser"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ACL_RULE = "aws:ec2/networkAclRule:NetworkAclRule"


def test_replication_user_inputs(mocks: RecordingMocks) -> None:
    run_program(
        {**BASE, "replicationUser": "cdc", "schemas": ["public", "sales"], "tableOwners": ["app"],
         "heartbeatTable": "replicator.heartbeat", "publication": "cdc_pub",
         "publicationTables": ["public.items", "sales.orders"], "passwordVersion": 3},
        mocks,
    )
    user = mocks.one(USER)
    assert {k: v for k, v in user.inputs.items() if k != "__provider"} == {
        "host": "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com", "port": 5432, "database": "orders",
        "admin_user": "postgres", "admin_password": "admin-secret-value", "sslmode": "require",
        "user": "cdc", "replication_right": "rds_replication", "schemas": ["public", "sales"],
        "table_owners": ["app"], "heartbeat_table": "replicator.heartbeat", "publication": "cdc_pub",
        "publication_tables": ["public.items", "sales.orders"], "password_version": 3,
        "publicly_accessible": False,
    }
    assert {"admin_password", "__provider"} <= user.secret_keys
    # The provider returns the generated password as an output: only this option keeps it out of the
    # state file and the CLI in clear (it is not an input, so no input secrecy can cover it).
    assert {"password", "admin_password"} <= set(mocks.request(USER).additional_secret_outputs)


def test_publication_left_alone_without_a_table_list(mocks: RecordingMocks) -> None:
    out = run_program(BASE, mocks)
    assert "publication" not in mocks.one(USER).inputs  # not managed by the program...
    assert out["publication"] == "replicator_pub"  # ...but still handed to the replicator


def test_secret_holds_the_rds_shaped_json(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "secretName": "replicator/orders"}, mocks)
    secret = mocks.one("aws:secretsmanager/secret:Secret")
    assert secret.inputs["name"] == "replicator/orders"
    version = mocks.one("aws:secretsmanager/secretVersion:SecretVersion")
    assert version.inputs["secretId"] == out["secretArn"]
    assert "secretString" in version.secret_keys
    assert json.loads(version.inputs["secretString"]) == {
        "username": "replicator", "password": "generated-by-the-provider", "engine": "postgres",
        "host": "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com", "port": 5432, "dbname": "orders",
        "dbInstanceIdentifier": "orders-db",
    }


def test_aurora_secret_names_the_cluster(mocks: RecordingMocks) -> None:
    run_program({**BASE, "engine": "aurora-postgresql", "engineVersion": "16.1", "identifier": "aur"}, mocks)
    fields = json.loads(mocks.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"])
    assert fields["dbClusterIdentifier"] == "aur" and "dbInstanceIdentifier" not in fields


def test_replication_user_waits_for_the_network_rules(mocks: RecordingMocks) -> None:
    run_program({**BASE, "networkAcl": {"id": "acl-42"}}, mocks, acl_entries=[])
    rules = {r.name for r in mocks.of_type(INGRESS)} | {r.name for r in mocks.of_type(ACL_RULE)}
    assert len(rules) == 6  # 2 CIDRs: 2 ingress rules, 2 NACL rules each way
    # It connects through them: created before them, its first connection would time out.
    access = mocks.requests["orders-db-replication"]
    assert rules <= access.dependencies


def test_tunnel_connects_to_the_local_end_and_hands_over_the_endpoint(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "adminAccess": {"via": "tunnel", "host": "127.0.0.1", "port": 15432}}, mocks)
    user = mocks.one(USER).inputs
    assert (user["connect_host"], user["connect_port"]) == ("127.0.0.1", 15432)
    assert user["host"] == out["host"] == "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com"
    secret = json.loads(mocks.one("aws:secretsmanager/secretVersion:SecretVersion").inputs["secretString"])
    assert secret["host"] == out["host"]  # the replicator connects to the endpoint, not to the tunnel


def test_secret_recovery_window_is_configurable(mocks: RecordingMocks) -> None:
    run_program({**BASE, "secretName": "replicator/orders", "secretRecoveryWindowDays": 0}, mocks)
    assert mocks.one("aws:secretsmanager/secret:Secret").inputs["recoveryWindowInDays"] == 0
    mocks.resources.clear()
    run_program(BASE, mocks)
    assert mocks.one("aws:secretsmanager/secret:Secret").inputs["recoveryWindowInDays"] == 30



@pytest.mark.parametrize("setting", [None, False, True])
def test_ddl_capture_is_asked_of_the_replication_user_only_when_set(
    mocks: RecordingMocks, setting: bool | None
) -> None:
    run_program(BASE if setting is None else {**BASE, "ddlCapture": setting}, mocks)
    inputs = mocks.one(USER).inputs
    if setting:
        assert inputs["ddl_capture"] is True
    else:  # absent: stacks made before the setting see no change
        assert "ddl_capture" not in inputs
