"""The whole program: its stack outputs, and that they hand off to a config the replicator loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replicator import handoff as replicator_handoff
from replicator.config import load_connection
from tests.infra.conftest import BASE, RecordingMocks, run_program


def test_outputs_for_a_created_instance(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "slots": {"s1": "pgoutput", "s2": "wal2json"}, "publication": "p1"}, mocks)
    assert out == {
        "host": "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com", "port": 5432, "database": "orders",
        "secretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:orders-db-replication-secret-AbCdEf",
        "region": "eu-west-1", "slots": {"s1": "pgoutput", "s2": "wal2json"}, "publication": "p1",
        "sslMode": "require", "engine": "postgres", "replicationUser": "replicator",
        "dbInstanceIdentifier": "orders-db",
        "walAlarmTopicArn": "arn:aws:sns:eu-west-1:123456789012:orders-db-wal-alarms-topic",
        "walAlarmNames": ["replicator-orders-db-slot-lag", "replicator-orders-db-wal-disk",
                          "replicator-orders-db-free-storage"],
    }


def test_wal2json_only_has_no_publication(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "slots": {"s1": "wal2json"}}, mocks)
    assert "publication" not in out


def test_region_is_required() -> None:
    with pytest.raises(Exception, match="no AWS region"):
        run_program({"aws:region": "", **BASE}, RecordingMocks())


@pytest.mark.parametrize("engine", ["postgres", "aurora-postgresql"])
def test_outputs_hand_off_to_a_loadable_source_config(tmp_path: Path, mocks: RecordingMocks, engine: str) -> None:
    out = run_program({**BASE, "engine": engine}, mocks)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(out))
    target = tmp_path / "source.yaml"
    replicator_handoff.handoff(str(outputs), str(target))
    cfg = load_connection(target, "source").value
    assert (cfg.host, cfg.port, cfg.database) == (out["host"], 5432, "orders")
    assert cfg.credential_store is not None and cfg.credential_store.secret_id == out["secretArn"]
    assert cfg.slots == {"replicator_slot": "pgoutput"} and cfg.publication == "replicator_pub"
