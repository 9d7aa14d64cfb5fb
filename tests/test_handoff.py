"""`replicator handoff`: stack outputs JSON -> a source config that the replicator loads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from replicator.cli import main
from replicator.config import load_connection
from replicator.errors import ConfigError
from replicator.handoff import handoff, source_config

OUTPUTS = {
    "host": "orders.c9akciq32.eu-west-1.rds.amazonaws.com",
    "port": 5432,
    "database": "orders",
    "secretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:replicator-AbCdEf",
    "region": "eu-west-1",
    "slots": {"replicator_slot": "pgoutput", "json_slot": "wal2json"},
    "publication": "replicator_pub",
    "sslMode": "require",
    "engine": "postgres",
    "replicationUser": "replicator",
    "dbInstanceIdentifier": "orders",
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_handoff_writes_a_config_the_replicator_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "source.yaml"
    assert main(["handoff", "--stack-outputs", str(write(tmp_path, OUTPUTS)), "--output", str(target)]) == 0
    assert "wrote" in capsys.readouterr().err
    cfg = load_connection(target, "source").value
    assert (cfg.type, cfg.host, cfg.port, cfg.database) == ("POSTGRESQL", OUTPUTS["host"], 5432, "orders")
    assert cfg.credential_store is not None
    assert (cfg.credential_store.type, cfg.credential_store.secret_id, cfg.credential_store.region) == (
        "AWS_SECRETS_MANAGER", OUTPUTS["secretArn"], "eu-west-1"
    )
    assert cfg.slots == {"replicator_slot": "pgoutput", "json_slot": "wal2json"}
    assert cfg.publication == "replicator_pub"
    assert cfg.ssl is not None and cfg.ssl.ssl_mode == "require"
    assert (cfg.aws_region, cfg.db_instance_identifier, cfg.db_cluster_identifier) == ("eu-west-1", "orders", None)
    assert cfg.username is None and cfg.password is None


def test_handoff_from_standard_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = {**OUTPUTS, "dbClusterIdentifier": "aur"}
    del cluster["dbInstanceIdentifier"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(cluster)))
    assert main(["handoff", "--stack-outputs", "-"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Source connection for replicator")
    assert "db-cluster-identifier: aur" in text and "db-instance-identifier" not in text


def test_minimal_outputs() -> None:
    minimal = {k: OUTPUTS[k] for k in ("host", "port", "database", "secretArn", "region")}
    assert source_config(minimal) == {
        "type": "POSTGRESQL", "host": OUTPUTS["host"], "port": 5432, "database": "orders",
        "credential-store": {"type": "AWS_SECRETS_MANAGER", "secret-id": OUTPUTS["secretArn"], "region": "eu-west-1"},
        "aws-region": "eu-west-1",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", r"outputs.json:1: not JSON"),
        ("[1, 2]", r"expected a JSON object of stack outputs"),
        ({"host": "h"}, r"missing output\(s\) port, database, secretArn, region"),
        ({**OUTPUTS, "secretArn": "[secret]"}, r"hidden as \[secret\]; add --show-secrets"),
        ({**OUTPUTS, "port": "five"}, r"output port must be a number"),
        ({**OUTPUTS, "slots": {"Bad-Slot": "pgoutput"}}, r"slot name 'Bad-Slot' is invalid"),
        ({**OUTPUTS, "slots": ["s"]}, r"output slots must map slot names to decoders"),
    ],
)
def test_bad_outputs_are_refused_clearly(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        handoff(str(write(tmp_path, data)), str(tmp_path / "source.yaml"))
    assert not (tmp_path / "source.yaml").exists()  # nothing half-good is written


def test_missing_file_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["handoff", "--stack-outputs", str(tmp_path / "nope.json")]) == 2
    assert "file not found (expected the output of `pulumi stack output --json`)" in capsys.readouterr().err


def test_output_is_written_private_and_never_replaced_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "source.yaml"
    outputs = str(write(tmp_path, OUTPUTS))
    assert main(["handoff", "--stack-outputs", outputs, "--output", str(target)]) == 0
    assert target.stat().st_mode & 0o777 == 0o600

    target.write_text("# hand-edited: keep me\n")
    target.chmod(0o644)
    assert main(["handoff", "--stack-outputs", outputs, "--output", str(target)]) == 2
    assert f"{target}: exists already; add --force to replace it" in capsys.readouterr().err
    assert target.read_text() == "# hand-edited: keep me\n"

    assert main(["handoff", "--stack-outputs", outputs, "--output", str(target), "--force"]) == 0
    assert "credential-store" in target.read_text() and target.stat().st_mode & 0o777 == 0o600
