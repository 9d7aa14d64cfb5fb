"""AWS-layer checks against a moto endpoint, with a real local PostgreSQL behind the "RDS" instance.

Each broken setup is checked, its printed fix is run with the AWS CLI exactly as printed, and the
check is run again: the fix must be exactly what makes it pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replicator.check import Status
from replicator.check.aws import check_aws, locate
from replicator.config.connection import ConnectionConfig
from replicator.localpg import LocalCluster
from replicator.provision import rds
from tests.check.conftest import MotoRds, Source, commands, make_source, run_aws_fix
from tests.conftest import AwsEndpoint, Database


@dataclass
class Stage:
    """An RDS instance (or Aurora cluster) in moto, provisioned the way the Pulumi program declares it."""

    aws: AwsEndpoint
    identifier: str
    kind: str
    group: str
    security_group: str
    subnets: list[str]

    def config(self) -> dict[str, Any]:
        key = "db-cluster-identifier" if self.kind == "cluster" else "db-instance-identifier"
        return {key: self.identifier, "aws-region": self.aws.region}


def stage(aws: AwsEndpoint, kind: str = "instance", allow: str = "127.0.0.1/32", retention: int = 7,
          logical: bool = True) -> Stage:
    ec2, client = aws.client("ec2"), aws.client("rds")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{aws.region}{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    sg = ec2.create_security_group(GroupName="db", Description="PostgreSQL source for replicator", VpcId=vpc)[
        "GroupId"
    ]
    ec2.authorize_security_group_ingress(
        GroupId=sg,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 5432,
                "ToPort": 5432,
                "IpRanges": [{"CidrIp": allow, "Description": "replicator"}],
            }
        ],
    )
    client.create_db_subnet_group(
        DBSubnetGroupName="db-subnets", DBSubnetGroupDescription="d", SubnetIds=subnets
    )
    params = [
        {"ParameterName": p.name, "ParameterValue": p.value, "ApplyMethod": p.apply_method}
        for p in rds.required_parameters(10, 10)
    ]
    if kind == "cluster":
        group = "logical-aurora"
        client.create_db_cluster_parameter_group(
            DBClusterParameterGroupName=group,
            Description="d",
            DBParameterGroupFamily=rds.parameter_family("aurora-postgresql", "15.4"),
        )
        if logical:
            client.modify_db_cluster_parameter_group(DBClusterParameterGroupName=group, Parameters=params)
        client.create_db_cluster(
            DBClusterIdentifier="src-aurora", Engine="aurora-postgresql", EngineVersion="15.4",
            MasterUsername="postgres", MasterUserPassword="x" * 12, DBClusterParameterGroupName=group,
            DBSubnetGroupName="db-subnets", VpcSecurityGroupIds=[sg], BackupRetentionPeriod=retention,
        )
        client.create_db_instance(DBInstanceIdentifier="src-aurora-1", DBClusterIdentifier="src-aurora",
                                  Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
        return Stage(aws, "src-aurora", "cluster", group, sg, subnets)
    group = "logical"
    client.create_db_parameter_group(DBParameterGroupName=group, Description="d",
                                     DBParameterGroupFamily=rds.parameter_family("postgres", "16.4"))
    if logical:
        client.modify_db_parameter_group(DBParameterGroupName=group, Parameters=params)
    attach = {"DBParameterGroupName": group} if logical else {}  # else the engine's default group
    client.create_db_instance(
        DBInstanceIdentifier="src", Engine="postgres", EngineVersion="16.4", DBInstanceClass="db.t4g.micro",
        AllocatedStorage=20, MasterUsername="postgres", MasterUserPassword="x" * 12,
        DBSubnetGroupName="db-subnets", VpcSecurityGroupIds=[sg], BackupRetentionPeriod=retention, **attach,
    )
    return Stage(aws, "src", "instance", group, sg, subnets)


AWS_CHECKS = [
    "rds",
    "rds.logical_replication",
    "parameters applied",
    "backup retention",
    "security groups",
    "network acl",
]


def aws_statuses(report: Any) -> dict[str, Status]:
    return {r.name: r.status for r in report.results if r.layer == "aws"}


def test_healthy_rds_instance(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws)
    report = source.check(**st.config())
    assert report.ok, report.render()
    assert {n: aws_statuses(report)[n] for n in AWS_CHECKS} == {n: Status.OK for n in AWS_CHECKS}
    assert report.find("security groups").detail == (
        f"{st.security_group} allows 127.0.0.1 (as the server sees us) on port 5432 via 127.0.0.1/32 "
        "(replicator)"
    )


def test_parameter_group_pending_reboot(source: Source, aws: AwsEndpoint, moto_rds: MotoRds) -> None:
    st = stage(aws)
    moto_rds.set_apply_status("src", "pending-reboot")
    report = source.check(**st.config())
    result = report.find("parameters applied")
    assert result.status is Status.FAIL and report.exit_code == 1
    assert result.detail == "src: parameter group changes are pending a reboot (not in effect yet)"
    assert result.fix == "aws rds reboot-db-instance --db-instance-identifier src --region eu-west-1"
    run_aws_fix(result.fix, aws)
    assert source.check(**st.config()).ok


def test_aurora_member_pending_reboot(source: Source, aws: AwsEndpoint, moto_rds: MotoRds) -> None:
    st = stage(aws, kind="cluster")
    assert source.check(**st.config()).ok
    moto_rds.set_apply_status("src-aurora-1", "pending-reboot")
    result = source.check(**st.config()).find("parameters applied")
    assert result.status is Status.FAIL
    assert result.fix == "aws rds reboot-db-instance --db-instance-identifier src-aurora-1 --region eu-west-1"
    run_aws_fix(result.fix, aws)
    assert source.check(**st.config()).ok


def test_retention_one_day(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws, retention=1)
    result = source.check(**st.config()).find("backup retention")
    assert (result.status, result.detail) == (Status.FAIL, "1 day(s); at least 3 needed")
    assert result.fix == (
        "aws rds modify-db-instance --db-instance-identifier src --backup-retention-period 3 "
        "--apply-immediately "
        "--region eu-west-1"
    )
    run_aws_fix(result.fix, aws)
    assert source.check(**st.config()).ok


def test_aurora_retention_one_day(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws, kind="cluster", retention=1)
    result = source.check(**st.config()).find("backup retention")
    assert result.status is Status.FAIL and (result.fix or "").startswith(
        "aws rds modify-db-cluster --db-cluster-identifier src-aurora"
    )
    run_aws_fix(result.fix or "", aws)
    assert source.check(**st.config()).find("backup retention").status is Status.OK


def test_cidr_missing(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws, allow="10.20.0.0/16")
    result = source.check(**st.config()).find("security groups")
    assert result.status is Status.FAIL
    assert (
        result.detail
        == f"no rule in {st.security_group} allows 127.0.0.1 (as the server sees us) on port 5432"
    )
    assert commands(result.fix) == [
        f"aws ec2 authorize-security-group-ingress --group-id {st.security_group} --ip-permissions "
        "'IpProtocol=tcp,FromPort=5432,ToPort=5432,IpRanges=[{CidrIp=127.0.0.1/32,Description=replicator}]' "
        "--region eu-west-1"
    ]
    assert "replicator:allowlist" in (result.fix or "")
    run_aws_fix(result.fix or "", aws)
    assert source.check(**st.config()).ok


def test_client_ip_given_on_the_command_line(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws)
    result = source.check(client_ip="198.51.100.9", **st.config()).find("security groups")
    assert result.status is Status.FAIL and "198.51.100.9 (--client-ip)" in result.detail


def test_logical_replication_off_in_a_default_group(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws, logical=False)
    report = source.check(**st.config())
    result = report.find("rds.logical_replication")
    assert result.status is Status.FAIL
    assert (
        result.detail
        == "not set (engine default 0) in parameter group default.postgres16; logical replication needs 1"
    )
    assert commands(result.fix) == [
        "aws rds create-db-parameter-group --db-parameter-group-name replicator-postgres16 "
        "--db-parameter-group-family postgres16 --description 'logical replication for replicator' --region "
        "eu-west-1",
        "aws rds modify-db-instance --db-instance-identifier src --db-parameter-group-name "
        "replicator-postgres16 "
        "--apply-immediately --region eu-west-1",
        "aws rds modify-db-parameter-group --db-parameter-group-name replicator-postgres16 --parameters "
        "ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot --region "
        "eu-west-1",
        "aws rds reboot-db-instance --db-instance-identifier src --region eu-west-1",
    ]
    timeout = report.find("wal_sender_timeout")
    assert (timeout.status, report.exit_code) == (Status.WARN, 1)  # a warning alone would not fail the run
    run_aws_fix(result.fix or "", aws)
    assert source.check(**st.config()).find("rds.logical_replication").status is Status.OK


def test_wal_level_fix_names_the_group_and_the_reboot(
    replica_cluster: LocalCluster, tmp_path: Path, aws: AwsEndpoint
) -> None:
    replica_cluster.create_database("onrds")
    src = make_source(Database(replica_cluster, "onrds"), tmp_path)
    st = stage(aws)
    result = src.check(**st.config()).find("wal_level")
    assert result.status is Status.FAIL
    assert commands(result.fix) == [
        "aws rds modify-db-parameter-group --db-parameter-group-name logical --parameters "
        "ParameterName=rds.logical_replication,ParameterValue=1,ApplyMethod=pending-reboot --region "
        "eu-west-1",
        "aws rds reboot-db-instance --db-instance-identifier src --region eu-west-1",
    ]


def test_network_acl_denies_the_replicator(source: Source, aws: AwsEndpoint) -> None:
    st = stage(aws)
    ec2 = aws.client("ec2")
    vpc = ec2.describe_subnets(SubnetIds=st.subnets)["Subnets"][0]["VpcId"]
    acl = ec2.create_network_acl(VpcId=vpc)["NetworkAcl"]["NetworkAclId"]
    for egress in (False, True):
        ec2.create_network_acl_entry(
            NetworkAclId=acl,
            RuleNumber=50,
            Protocol="6",
            RuleAction="deny",
            Egress=egress,
            CidrBlock="127.0.0.0/8",
            PortRange={"From": 0, "To": 65535},
        )
        ec2.create_network_acl_entry(
            NetworkAclId=acl,
            RuleNumber=100,
            Protocol="-1",
            RuleAction="allow",
            Egress=egress,
            CidrBlock="0.0.0.0/0",
        )
    for current in ec2.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": st.subnets}]
    )["NetworkAcls"]:
        for assoc in current["Associations"]:
            if assoc["SubnetId"] in st.subnets:
                ec2.replace_network_acl_association(
                    AssociationId=assoc["NetworkAclAssociationId"], NetworkAclId=acl
                )
    result = source.check(**st.config()).find("network acl")
    assert result.status is Status.FAIL
    assert result.detail == (
        f"{acl}: inbound to port 5432 from 127.0.0.1: rule 50 denies it; "
        f"{acl}: outbound replies to ports 1024-65535 from 127.0.0.1: rule 50 denies it"
    )
    assert commands(result.fix) == [
        f"aws ec2 create-network-acl-entry --network-acl-id {acl} --ingress --rule-number 49 --protocol tcp "
        "--port-range From=5432,To=5432 --cidr-block 127.0.0.1/32 --rule-action allow --region eu-west-1",
        f"aws ec2 create-network-acl-entry --network-acl-id {acl} --egress --rule-number 49 --protocol tcp "
        "--port-range From=1024,To=65535 --cidr-block 127.0.0.1/32 --rule-action allow --region eu-west-1",
    ]
    run_aws_fix(result.fix or "", aws)
    assert source.check(**st.config()).ok


def test_unknown_instance(source: Source, aws: AwsEndpoint) -> None:
    result = source.check(**{"db-instance-identifier": "nope", "aws-region": aws.region}).find("rds")
    assert (result.status, result.detail) == (Status.FAIL, "no instance nope in eu-west-1")


def test_self_hosted_source_skips_aws(source: Source) -> None:
    assert source.check().find("aws").status is Status.SKIP


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"host": "orders.c9akciq32.eu-west-2.rds.amazonaws.com"}, ("instance", "orders", "eu-west-2")),
        ({"host": "aur.cluster-c9akciq32.us-east-1.rds.amazonaws.com"}, ("cluster", "aur", "us-east-1")),
        (
            {"host": "10.0.0.5", "db-cluster-identifier": "c", "aws-region": "eu-west-1"},
            ("cluster", "c", "eu-west-1"),
        ),
        ({"host": "10.0.0.5"}, None),
    ],
)
def test_locate(config: dict[str, Any], expected: Any) -> None:
    cfg = ConnectionConfig.model_validate({"type": "POSTGRESQL", "database": "d", "username": "u", **config})
    assert locate(cfg) == expected


def test_group_without_logical_replication_values(aws: AwsEndpoint) -> None:
    st = stage(aws)
    aws.client("rds").modify_db_parameter_group(DBParameterGroupName=st.group, Parameters=[
        {"ParameterName": "rds.logical_replication", "ParameterValue": "0", "ApplyMethod": "pending-reboot"},
        {"ParameterName": "max_wal_senders", "ParameterValue": "1", "ApplyMethod": "pending-reboot"},
    ])
    cfg = ConnectionConfig.model_validate({
        "type": "POSTGRESQL", "host": "127.0.0.1", "database": "d", "username": "u", **st.config(),
        "replication-slots": {"a": ["pgoutput"], "b": ["wal2json"]},
    })
    _, results = check_aws(cfg, "127.0.0.1")
    by_name = {r.name: r for r in results}
    assert by_name["rds.logical_replication"].status is Status.FAIL
    assert by_name["max_wal_senders"].detail == "1 in logical; the config has 2 slot(s)"
    assert "wal_sender_timeout" not in by_name  # 0 as the program sets it: nothing to say
