"""LocalStack's ready.d hooks, run for real with `awslocal` pointing at a moto server."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AwsEndpoint

HOOKS = Path(__file__).resolve().parents[2] / "localstack" / "init" / "ready.d"


@pytest.fixture
def awslocal(aws: AwsEndpoint, tmp_path: Path) -> dict[str, str]:
    """An `awslocal` like LocalStack's (the AWS CLI with the endpoint set), aimed at moto."""
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed; the hooks call it through awslocal")
    shim = tmp_path / "bin" / "awslocal"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec aws --endpoint-url {aws.url} "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "AWS_PAGER": ""}


def run(hook: str, env: dict[str, str]) -> str:
    path = HOOKS / hook
    assert path.stat().st_mode & stat.S_IXUSR, f"{hook} must be executable (LocalStack runs it directly)"
    return subprocess.run(
        [str(path)], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout


def test_services_hook_reports_each_service(awslocal: dict[str, str]) -> None:
    out = run("10-services.sh", awslocal)
    for service in ("ec2", "secretsmanager", "sts", "rds"):
        assert f"replicator: {service} available" in out


def test_services_hook_says_what_is_missing(awslocal: dict[str, str], tmp_path: Path) -> None:
    broken = {**awslocal, "AWS_MAX_ATTEMPTS": "1", "PATH": f"{tmp_path}:{awslocal['PATH']}"}
    (tmp_path / "awslocal").write_text('#!/bin/sh\nexec aws --endpoint-url http://127.0.0.1:9 "$@"\n')
    (tmp_path / "awslocal").chmod(0o755)
    out = run("10-services.sh", broken)
    assert "replicator: ec2 NOT available" in out and "rds is a LocalStack Pro service" in out
    assert "a required service is missing" in out


def test_network_hook_prints_the_ids_a_stack_needs(awslocal: dict[str, str], aws: AwsEndpoint) -> None:
    out = run("20-network.sh", awslocal)
    vpc = aws.client("ec2").describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0][
        "VpcId"
    ]
    assert f"replicator: default VPC {vpc}, subnets: subnet-" in out and "default security group: sg-" in out
