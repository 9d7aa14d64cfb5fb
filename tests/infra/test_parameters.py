"""Logical-replication parameter groups: family, values and apply methods, per engine."""

from __future__ import annotations

import pulumi
import pytest

from parameters import LogicalReplicationParameters
from replicator.provision import rds
from tests.infra.conftest import BASE, RecordingMocks, run_program

EXPECTED = [
    {"name": "rds.logical_replication", "value": "1", "applyMethod": "pending-reboot"},
    {"name": "max_replication_slots", "value": "10", "applyMethod": "pending-reboot"},
    {"name": "max_wal_senders", "value": "10", "applyMethod": "pending-reboot"},
    {"name": "wal_sender_timeout", "value": "0", "applyMethod": "immediate"},
]


# The default bound on a created instance: half its disk (20 GB) at most, in MB.
KEEP_10_GB = {"name": "max_slot_wal_keep_size", "value": "10240", "applyMethod": "immediate"}
DB_GROUP = "aws:rds/parameterGroup:ParameterGroup"
CLUSTER_GROUP = "aws:rds/clusterParameterGroup:ClusterParameterGroup"


def keep_size(mocks: RecordingMocks) -> str | None:
    params = {p["name"]: p["value"] for p in mocks.one(DB_GROUP).inputs["parameters"]}
    return params.get("max_slot_wal_keep_size")


def test_postgres_instance_gets_a_db_parameter_group(mocks: RecordingMocks) -> None:
    run_program(BASE, mocks)
    group = mocks.one(DB_GROUP)
    assert group.inputs["family"] == "postgres16"
    assert group.inputs["parameters"] == [*EXPECTED, KEEP_10_GB]
    assert mocks.of_type(CLUSTER_GROUP) == []


def test_aurora_cluster_gets_a_cluster_parameter_group(mocks: RecordingMocks) -> None:
    run_program({**BASE, "engine": "aurora-postgresql", "engineVersion": "15.4"}, mocks)
    group = mocks.one(CLUSTER_GROUP)
    assert group.inputs["family"] == "aurora-postgresql15"
    assert group.inputs["parameters"] == EXPECTED  # no max_slot_wal_keep_size: Aurora does not document it
    assert mocks.of_type(DB_GROUP) == []  # nothing instance-level asked for: Aurora's default DB group
    assert "dbParameterGroupName" not in mocks.one("aws:rds/clusterInstance:ClusterInstance").inputs


def test_aurora_instance_level_parameters_go_to_a_group_on_the_writer(mocks: RecordingMocks) -> None:
    extras = {"logical_decoding_work_mem": "262144", "max_worker_processes": 16}
    aurora = {**BASE, "engine": "aurora-postgresql", "engineVersion": "15.4"}
    run_program({**aurora, "extraParameters": extras}, mocks)
    # A cluster parameter group does not apply instance-level parameters (AWS ignores or refuses them there).
    cluster = mocks.one(CLUSTER_GROUP)
    assert cluster.inputs["parameters"] == EXPECTED
    instance = mocks.one(DB_GROUP)
    assert instance.inputs["family"] == "aurora-postgresql15"
    assert {p["name"]: p["value"] for p in instance.inputs["parameters"]} == {
        "logical_decoding_work_mem": "262144", "max_worker_processes": "16"
    }
    writer = mocks.one("aws:rds/clusterInstance:ClusterInstance").inputs
    assert writer["dbParameterGroupName"] == f"{instance.name}-pg"


def test_wal_keep_size_defaults_and_bounds(mocks: RecordingMocks) -> None:
    run_program({**BASE, "allocatedStorageGb": 500}, mocks)
    assert keep_size(mocks) == str(100 * 1024)  # twice the 50 GB WAL budget, below half the disk
    mocks.resources.clear()
    run_program({**BASE, "allocatedStorageGb": 500, "maxSlotWalKeepSizeGb": 200}, mocks)
    assert keep_size(mocks) == str(200 * 1024)
    mocks.resources.clear()
    run_program({**BASE, "maxSlotWalKeepSizeGb": -1}, mocks)  # unbounded, on purpose
    assert keep_size(mocks) is None


def test_wal_keep_size_needs_postgresql_13(mocks: RecordingMocks) -> None:
    run_program({**BASE, "engineVersion": "12"}, mocks)
    assert keep_size(mocks) is None  # no default where the parameter does not exist
    with pytest.raises(Exception, match="keep_size exists from PostgreSQL 13 on; this is PostgreSQL 12"):
        run_program({**BASE, "engineVersion": "12", "maxSlotWalKeepSizeGb": 5}, RecordingMocks())
    with pytest.raises(Exception, match="max_slot_wal_keep_size exists from PostgreSQL 13 on"):
        run_program({**BASE, "engineVersion": "12.17", "extraParameters": {"max_slot_wal_keep_size": "4096"}},
                    RecordingMocks())


def test_slot_and_sender_counts_and_extras(mocks: RecordingMocks) -> None:
    config = {
        **BASE, "maxReplicationSlots": 25, "maxWalSenders": 30,
        "extraParameters": {"logical_decoding_work_mem": "262144", "max_worker_processes": 16},
    }
    run_program(config, mocks)
    params = {p["name"]: p for p in mocks.one("aws:rds/parameterGroup:ParameterGroup").inputs["parameters"]}
    assert params["max_replication_slots"]["value"] == "25"
    assert params["max_wal_senders"]["value"] == "30"
    # dynamic parameters apply at once; static ones only on reboot (AWS refuses anything else)
    assert params["logical_decoding_work_mem"] == {
        "name": "logical_decoding_work_mem", "value": "262144", "applyMethod": "immediate"
    }
    assert params["max_worker_processes"]["applyMethod"] == "pending-reboot"


def test_self_hosted_source_has_no_parameter_group(mocks: RecordingMocks) -> None:
    run_program({**BASE, "source": "self-hosted", "host": "10.0.0.5", "identifier": None, "allowlist": []}, mocks)
    assert mocks.of_type("aws:rds/parameterGroup:ParameterGroup") == []


def test_component_refuses_what_aws_would() -> None:
    pulumi.runtime.set_mocks(RecordingMocks(), project="p", stack="s", preview=False)
    with pytest.raises(rds.ParameterError, match="static parameter"):
        LogicalReplicationParameters(
            "x", "postgres", "16", [rds.Parameter("rds.logical_replication", "1", "immediate")]
        )
    with pytest.raises(rds.ParameterError, match="no supported parameter-group family"):
        LogicalReplicationParameters("y", "postgres", "10.4", [])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([rds.Parameter("rds.logical_replication", "2", "pending-reboot")], "between 0 and 1"),
        ([rds.Parameter("max_wal_senders", "many", "pending-reboot")], "must be an integer"),
        ([rds.Parameter("wal_sender_timeout", "0", "later")], "immediate or pending-reboot"),
        ([rds.Parameter("wal_level", "logical", "pending-reboot")], "unknown RDS parameter 'wal_level'"),
        ([rds.Parameter("wal_sender_timeout", "0", "immediate")] * 2, "set twice"),
    ],
)
def test_parameter_validation(params: list[rds.Parameter], message: str) -> None:
    with pytest.raises(rds.ParameterError, match=message):
        rds.validate_parameters("postgres", params)


def test_endpoint_parsing() -> None:
    assert rds.parse_endpoint("orders.c9akciq32.eu-west-1.rds.amazonaws.com") == rds.RdsEndpoint(
        "orders", "eu-west-1", "instance"
    )
    assert rds.parse_endpoint("aur.cluster-ro-c9akciq32.us-east-2.rds.amazonaws.com") == rds.RdsEndpoint(
        "aur", "us-east-2", "cluster"
    )
    assert rds.parse_endpoint("db.example.com") is None
    assert rds.parse_endpoint("127.0.0.1") is None
