"""The shipped Pulumi project and example stacks stay valid as the program changes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack_config import parse_stack_config
from tests.infra.conftest import INFRA, RecordingMocks, run_program

ROOT = INFRA.parent


def stack_values(path: Path) -> dict[str, Any]:
    """A stack file's config as the engine hands it to the program (secure values decrypted: here, dummies)."""
    config = yaml.safe_load(path.read_text())["config"]
    values = {}
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = "decrypted-secret"
        values[key] = value if isinstance(value, str) else json.dumps(value)
    return values


def test_project_file() -> None:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert (ROOT / project["main"] / "__main__.py").is_file()


def test_pulumi_install_can_prepare_the_virtualenv(monkeypatch: pytest.MonkeyPatch) -> None:
    # `pulumi install` creates the virtualenv named in Pulumi.yaml and runs `pip install -r requirements.txt`
    # with the program's directory (`main`) as working directory (pulumi sdk/python/toolchain/pip.go). Read
    # the file with pip's own parser from there: it must install this repository with the [infra] extra.
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement
    from pip._internal.req.req_file import parse_requirements

    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    options = project["runtime"]["options"]
    assert options["virtualenv"] == ".venv" and options["toolchain"] == "pip"
    program_dir = ROOT / project["main"]
    monkeypatch.chdir(program_dir)
    parsed = parse_requirements("requirements.txt", session=PipSession())
    reqs = [install_req_from_parsed_requirement(r) for r in parsed]
    assert len(reqs) == 1 and reqs[0].editable and reqs[0].link is not None
    assert Path(reqs[0].link.file_path) == ROOT and reqs[0].extras == {"infra"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "replicator"
    infra_extra = " ".join(pyproject["project"]["optional-dependencies"]["infra"])
    assert "pulumi>=" in infra_extra and "pulumi-aws>=" in infra_extra


@pytest.mark.parametrize("stack", ["dev", "localstack"])
def test_example_stacks_are_valid(stack: str) -> None:
    cfg = parse_stack_config(stack_values(ROOT / f"Pulumi.{stack}.yaml"), stack)
    assert cfg.replication_user == "replicator"


def test_dev_stack_runs(tmp_path: Path) -> None:
    values = {k: json.loads(v) if v[:1] in "[{" else v for k, v in stack_values(ROOT / "Pulumi.dev.yaml").items()}
    mocks = RecordingMocks()
    out = run_program(values, mocks)
    assert out["dbInstanceIdentifier"] == "orders-db"
    assert mocks.one("aws:rds/parameterGroup:ParameterGroup").inputs["family"] == "postgres16"


def test_localstack_stack_points_every_service_at_localstack() -> None:
    config = yaml.safe_load((ROOT / "Pulumi.localstack.yaml").read_text())["config"]
    for flag in ("aws:skipCredentialsValidation", "aws:skipRequestingAccountId", "aws:s3UsePathStyle"):
        assert config[flag] is True
    endpoints = config["aws:endpoints"][0]
    # Every service the program declares resources in (cloudwatch, sns: the WAL alarms of RDS sources).
    assert {"ec2", "rds", "secretsmanager", "sts", "cloudwatch", "sns"} <= set(endpoints)
    assert set(endpoints.values()) == {"http://localhost:4566"}


def test_localstack_compose_matches_the_stack() -> None:
    compose = yaml.safe_load((ROOT / "localstack" / "docker-compose.yml").read_text())
    services = set(compose["services"]["localstack"]["environment"]["SERVICES"].split(","))
    assert {"ec2", "secretsmanager", "sts", "rds", "cloudwatch", "sns"} <= services
    assert "./init/ready.d:/etc/localstack/init/ready.d:ro" in compose["services"]["localstack"]["volumes"]
    postgres = compose["services"]["postgres"]
    assert "wal_level=logical" in postgres["command"]
    stack = yaml.safe_load((ROOT / "Pulumi.localstack.yaml").read_text())["config"]
    assert postgres["ports"] == [f"127.0.0.1:{stack['replicator:port']}:5432"]
    assert postgres["environment"]["POSTGRES_PASSWORD"] == stack["replicator:adminPassword"]
    assert postgres["environment"]["POSTGRES_DB"] == stack["replicator:databaseName"]
