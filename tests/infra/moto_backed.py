"""Pulumi mocks that do the work for real: AWS resources in moto, the dynamic providers against PostgreSQL.

What the AWS provider plugin would do for each resource the program declares is done here with
the matching boto3 call on the moto endpoint, from the very inputs the program passed; dynamic
resources are unpickled and driven (check, then create) exactly as Pulumi's provider host does.
moto's RDS instances have no server behind them, so ``dns`` plays DNS: it points their
endpoints at a local PostgreSQL.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

import dill
import pulumi

from tests.conftest import AwsEndpoint
from tests.infra.conftest import RecordingMocks, unwrap


def autoname(name: str) -> str:
    """Pulumi's physical name for a resource without an explicit one."""
    return f"{name}-{secrets.token_hex(4)[:7]}"


@dataclass
class MotoBackedMocks(RecordingMocks):
    aws: AwsEndpoint | None = None
    dns: tuple[str, int] = ("127.0.0.1", 5432)
    created: dict[str, str] = field(default_factory=dict)  # logical name -> physical id

    def __post_init__(self) -> None:
        self.on_resource = self._create

    def _create(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]] | None:
        assert self.aws is not None
        inputs = unwrap(dict(args.inputs))
        handler = _HANDLERS.get(args.typ)
        if handler is None and args.typ.startswith("pulumi-python:dynamic/"):
            handler = _dynamic
        if handler is None:
            return None  # component resources
        rid, state = handler(self, args.name, inputs)
        self.created[args.name] = rid
        return rid, state

    def rds(self) -> Any:
        assert self.aws is not None
        return self.aws.client("rds")

    def ec2(self) -> Any:
        assert self.aws is not None
        return self.aws.client("ec2")


def _parameters(inputs: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {
            "ParameterName": p["name"],
            "ParameterValue": p["value"],
            "ApplyMethod": p.get("applyMethod", "immediate"),
        }
        for p in inputs.get("parameters", [])
    ]


def _parameter_group(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    physical = inputs.get("name") or autoname(name)
    m.rds().create_db_parameter_group(
        DBParameterGroupName=physical,
        DBParameterGroupFamily=inputs["family"],
        Description=inputs["description"],
    )
    if inputs.get("parameters"):
        m.rds().modify_db_parameter_group(DBParameterGroupName=physical, Parameters=_parameters(inputs))
    return physical, {**inputs, "name": physical}


def _cluster_parameter_group(
    m: MotoBackedMocks, name: str, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    physical = inputs.get("name") or autoname(name)
    m.rds().create_db_cluster_parameter_group(
        DBClusterParameterGroupName=physical,
        DBParameterGroupFamily=inputs["family"],
        Description=inputs["description"],
    )
    if inputs.get("parameters"):
        m.rds().modify_db_cluster_parameter_group(
            DBClusterParameterGroupName=physical, Parameters=_parameters(inputs)
        )
    return physical, {**inputs, "name": physical}


def _security_group(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    group_id = m.ec2().create_security_group(
        GroupName=inputs.get("name") or autoname(name),
        Description=inputs["description"],
        VpcId=inputs["vpcId"],
    )["GroupId"]
    return group_id, {**inputs, "id": group_id}


def _ingress_rule(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ranges = (
        {"IpRanges": [{"CidrIp": inputs["cidrIpv4"], "Description": inputs.get("description", "")}]}
        if inputs.get("cidrIpv4")
        else {"Ipv6Ranges": [{"CidrIpv6": inputs["cidrIpv6"], "Description": inputs.get("description", "")}]}
    )
    rules = m.ec2().authorize_security_group_ingress(
        GroupId=inputs["securityGroupId"],
        IpPermissions=[{"IpProtocol": inputs["ipProtocol"], "FromPort": int(inputs["fromPort"]),
                        "ToPort": int(inputs["toPort"]), **ranges}],
    )["SecurityGroupRules"]
    return rules[0]["SecurityGroupRuleId"], inputs


def _acl_rule(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    m.ec2().create_network_acl_entry(
        NetworkAclId=inputs["networkAclId"],
        RuleNumber=int(inputs["ruleNumber"]),
        Egress=bool(inputs["egress"]),
        Protocol={"tcp": "6"}.get(inputs["protocol"], inputs["protocol"]),
        RuleAction=inputs["ruleAction"],
        CidrBlock=inputs["cidrBlock"],
        PortRange={"From": int(inputs["fromPort"]), "To": int(inputs["toPort"])},
    )
    return f"{inputs['networkAclId']}-{int(inputs['ruleNumber'])}", inputs


def _subnet_group(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    physical = inputs.get("name") or autoname(name)
    m.rds().create_db_subnet_group(
        DBSubnetGroupName=physical,
        DBSubnetGroupDescription="Managed by Pulumi",
        SubnetIds=inputs["subnetIds"],
    )
    return physical, {**inputs, "name": physical}


def _instance(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    optional = {"DBSubnetGroupName": inputs.get("dbSubnetGroupName")}
    m.rds().create_db_instance(
        DBInstanceIdentifier=inputs["identifier"],
        Engine=inputs["engine"],
        EngineVersion=inputs["engineVersion"],
        DBInstanceClass=inputs["instanceClass"],
        AllocatedStorage=int(inputs["allocatedStorage"]),
        DBName=inputs["dbName"],
        MasterUsername=inputs["username"],
        MasterUserPassword=inputs["password"],
        DBParameterGroupName=inputs["parameterGroupName"],
        BackupRetentionPeriod=int(inputs["backupRetentionPeriod"]),
        VpcSecurityGroupIds=inputs["vpcSecurityGroupIds"],
        Port=int(inputs["port"]),
        StorageEncrypted=bool(inputs.get("storageEncrypted")),
        **{k: v for k, v in optional.items() if v},
    )
    host, port = m.dns
    return inputs["identifier"], {**inputs, "address": host, "port": port, "endpoint": f"{host}:{port}"}


def _cluster(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    optional = {"DBSubnetGroupName": inputs.get("dbSubnetGroupName")}
    m.rds().create_db_cluster(
        DBClusterIdentifier=inputs["clusterIdentifier"],
        Engine=inputs["engine"],
        EngineVersion=inputs["engineVersion"],
        DatabaseName=inputs["databaseName"],
        MasterUsername=inputs["masterUsername"],
        MasterUserPassword=inputs["masterPassword"],
        DBClusterParameterGroupName=inputs["dbClusterParameterGroupName"],
        BackupRetentionPeriod=int(inputs["backupRetentionPeriod"]),
        VpcSecurityGroupIds=inputs["vpcSecurityGroupIds"],
        Port=int(inputs["port"]),
        StorageEncrypted=bool(inputs.get("storageEncrypted")),
        **{k: v for k, v in optional.items() if v},
    )
    host, port = m.dns
    return inputs["clusterIdentifier"], {**inputs, "endpoint": host, "port": port}


def _cluster_instance(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    m.rds().create_db_instance(
        DBInstanceIdentifier=inputs["identifier"], DBClusterIdentifier=inputs["clusterIdentifier"],
        Engine=inputs["engine"], DBInstanceClass=inputs["instanceClass"],
    )
    return inputs["identifier"], inputs


def _secret(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert m.aws is not None
    arn = m.aws.client("secretsmanager").create_secret(
        Name=inputs.get("name") or autoname(name), Description=inputs.get("description", "")
    )["ARN"]
    return arn, {**inputs, "arn": arn}


def _secret_version(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert m.aws is not None
    version = m.aws.client("secretsmanager").put_secret_value(
        SecretId=inputs["secretId"], SecretString=inputs["secretString"]
    )["VersionId"]
    return f"{inputs['secretId']}|{version}", inputs


def _dynamic(m: MotoBackedMocks, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What Pulumi's dynamic-provider host does on `pulumi up`: unpickle the provider, check, create."""
    provider = dill.loads(base64.b64decode(inputs.pop("__provider")))
    checked = provider.check({}, inputs)
    assert not checked.failures, [(f.property, f.reason) for f in checked.failures]
    created = provider.create(checked.inputs)
    return created.id, dict(created.outs or {})


_HANDLERS = {
    "aws:rds/parameterGroup:ParameterGroup": _parameter_group,
    "aws:rds/clusterParameterGroup:ClusterParameterGroup": _cluster_parameter_group,
    "aws:ec2/securityGroup:SecurityGroup": _security_group,
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": _ingress_rule,
    "aws:ec2/networkAclRule:NetworkAclRule": _acl_rule,
    "aws:rds/subnetGroup:SubnetGroup": _subnet_group,
    "aws:rds/instance:Instance": _instance,
    "aws:rds/cluster:Cluster": _cluster,
    "aws:rds/clusterInstance:ClusterInstance": _cluster_instance,
    "aws:secretsmanager/secret:Secret": _secret,
    "aws:secretsmanager/secretVersion:SecretVersion": _secret_version,
}
