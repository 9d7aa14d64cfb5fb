"""End to end: `pulumi up` (moto + a real PostgreSQL) -> hand-off -> `replicator check` -> a snapshot.

The Pulumi program runs under mocks that create every AWS resource in moto from the program's own
inputs and run the replication-user provider against the local server, so what `check` inspects
and what the snapshot logs in with are exactly what the program declared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from replicator.config import load_connection
from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD
from tests.conftest import AwsEndpoint, Database
from tests.infra.conftest import run_program
from tests.infra.moto_backed import MotoBackedMocks
from tests.support import checksum, run_cli


def network(aws: AwsEndpoint) -> tuple[str, list[str]]:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{aws.region}{z}")["Subnet"]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    return vpc, subnets


def provision(aws: AwsEndpoint, source_db: Database, engine: str, **extra: Any) -> tuple[MotoBackedMocks, dict[str, Any]]:
    vpc, subnets = network(aws)
    port = source_db.cluster.port
    config = {
        "aws:region": aws.region,
        "engine": engine,
        "engineVersion": "15.4",
        "identifier": f"e2e-{engine}",
        "databaseName": source_db.name,
        "adminUsername": SUPERUSER,
        "adminPassword": SUPERUSER_PASSWORD,
        "sslMode": "prefer",  # the local server has no TLS
        "adminAccess": {"via": "vpc"},  # "inside the VPC": the endpoints resolve to a local server
        "port": port,
        "vpcId": vpc,
        "subnetIds": subnets,
        "allowlist": [{"cidr": "127.0.0.1/32", "description": "the replicator host"}],
        "replicationUser": f"cdc_{source_db.name}",
        "slots": {f"slot_{source_db.name}": "pgoutput"},
        "publication": f"pub_{source_db.name}",
        "publicationTables": ["public.items", "public.orders"],
        **extra,
    }
    mocks = MotoBackedMocks(aws=aws, dns=("127.0.0.1", port))
    return mocks, run_program(config, mocks)


@pytest.fixture
def app(source_db: Database) -> Database:
    source_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    source_db.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, item int, qty int, note text)")
    source_db.execute("INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    source_db.execute("INSERT INTO public.orders SELECT g, g % 50 + 1, g % 7, 'n' || g FROM generate_series(1, 500) g")
    return source_db


@pytest.mark.parametrize("engine", ["postgres", "aurora-postgresql"])
def test_provision_check_handoff(
    engine: str, aws: AwsEndpoint, app: Database, rds_replication: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mocks, outputs = provision(aws, app, engine)
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    source_yaml = tmp_path / "source.yaml"
    assert run_cli("handoff", "--stack-outputs", tmp_path / "outputs.json", "--output", source_yaml) == 0
    cfg = load_connection(source_yaml, "source").value
    assert cfg.username is None and cfg.credential_store is not None  # the password lives only in the secret

    assert run_cli("check", "--source", source_yaml) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for line in ("ok    aws         rds.logical_replication", "ok    aws         parameters applied",
                 "ok    aws         backup retention", "ok    aws         security groups",
                 "ok    aws         network acl", "ok    tables      publication coverage",
                 "ok    source      replication right"):
        assert line in out, out
    assert "all checks hold" in out

    # The same stack with a broken allowlist is caught, with the fix named.
    rds_rules = aws.client("ec2").describe_security_group_rules()["SecurityGroupRules"]
    rule = next(r for r in rds_rules if r.get("CidrIpv4") == "127.0.0.1/32")
    aws.client("ec2").revoke_security_group_ingress(GroupId=rule["GroupId"], SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]])
    assert run_cli("check", "--source", source_yaml) == 1
    assert "aws ec2 authorize-security-group-ingress" in capsys.readouterr().out


def test_snapshot_with_the_handed_off_config(
    aws: AwsEndpoint, app: Database, dest_db: Database, rds_replication: str, tmp_path: Path
) -> None:
    _, outputs = provision(aws, app, "postgres")
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    source_yaml = tmp_path / "source.yaml"
    assert run_cli("handoff", "--stack-outputs", tmp_path / "outputs.json", "--output", source_yaml) == 0
    destination = dest_db.write_config(tmp_path / "destination.yaml")
    assert run_cli("run", "snapshot", "--source", source_yaml, "--destination", destination, "--no-progress") == 0
    for table in ("items", "orders"):
        assert checksum(dest_db, "public", table) == checksum(app, "public", table)
    # It logged in as the replication user, with the password only the secret holds.
    secret = json.loads(aws.client("secretsmanager").get_secret_value(SecretId=outputs["secretArn"])["SecretString"])
    assert secret["username"] == f"cdc_{app.name}" and secret["password"] not in yaml.safe_load(source_yaml.read_text()).values()
