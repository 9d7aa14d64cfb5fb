"""AWS-layer checks for an RDS instance or Aurora cluster: parameter group, reboot, retention, network."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from replicator import awsclient
from replicator.check import fixes
from replicator.check.fixes import RdsTarget, aws
from replicator.check.report import CheckResult, fail, ok, skip, warn
from replicator.config.connection import ConnectionConfig
from replicator.provision import rds

AWS = "aws"
MIN_BACKUP_RETENTION_DAYS = 3
_EPHEMERAL = (1024, 65535)


@dataclass(frozen=True)
class DatabaseFacts:
    """What describe-db-instances / describe-db-clusters says about the source."""

    target: RdsTarget
    port: int
    backup_retention: int
    apply_status: dict[str, str]  # instance id -> parameter group status
    security_group_ids: tuple[str, ...]
    subnet_group: str | None
    subnet_ids: tuple[str, ...]
    publicly_accessible: bool | None


def locate(cfg: ConnectionConfig) -> tuple[str, str, str | None] | None:
    """``(kind, identifier, region)`` from the config's identifiers, else from an RDS host name."""
    endpoint = rds.parse_endpoint(cfg.host)
    region = cfg.aws_region or (endpoint.region if endpoint else None) or (
        cfg.credential_store.region if cfg.credential_store else None
    )
    if cfg.db_cluster_identifier:
        return "cluster", cfg.db_cluster_identifier, region
    if cfg.db_instance_identifier:
        return "instance", cfg.db_instance_identifier, region
    if endpoint:
        return endpoint.kind, endpoint.identifier, region
    return None


def check_aws(
    cfg: ConnectionConfig, client_ip: str | None, ip_origin: str = ""
) -> tuple[RdsTarget | None, list[CheckResult]]:
    """Every AWS-side prerequisite; also returns the target so database fixes can name its group."""
    where = locate(cfg)
    if where is None:
        return None, [
            skip(
                AWS,
                "aws",
                "not an RDS endpoint and no db-instance-identifier / db-cluster-identifier: "
                "AWS checks skipped (self-hosted source)",
            )
        ]
    kind, identifier, region = where
    try:
        client = awsclient.client("rds", region)
        facts = describe(client, kind, identifier)
    except awsclient.AwsError as e:
        return None, [fail(AWS, "rds", str(e), "set aws-region in the source config (or AWS_REGION)")]
    except awsclient.AWS_ERRORS as e:
        code = awsclient.error_code(e)
        if code in ("DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault"):
            return None, [
                fail(
                    AWS,
                    "rds",
                    f"no {kind} {identifier} in {client.meta.region_name}",
                    f"check db-{kind}-identifier and aws-region in the source config",
                )
            ]
        return None, [
            fail(
                AWS,
                "rds",
                f"cannot describe {kind} {identifier}: {awsclient.explain(e)}",
                "the caller needs rds:Describe*, ec2:DescribeSecurityGroups and ec2:DescribeNetworkAcls",
            )
        ]
    results = [ok(AWS, "rds", f"{kind} {identifier} in {facts.target.region}")]
    results.extend(check_parameters(client, facts, cfg))
    results.append(check_apply_status(facts))
    results.append(check_backup_retention(facts))
    if client_ip is None:
        results.append(skip(AWS, "security groups", "the replicator's address is unknown: pass --client-ip"))
        return facts.target, results
    ec2 = awsclient.client("ec2", facts.target.region)
    results.extend(check_security_groups(ec2, facts, client_ip, ip_origin))
    results.extend(check_network_acls(ec2, facts, client_ip))
    return facts.target, results


def describe(client: Any, kind: str, identifier: str) -> DatabaseFacts:
    region = client.meta.region_name
    if kind == "cluster":
        c = client.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"][0]
        members = tuple(m["DBInstanceIdentifier"] for m in c.get("DBClusterMembers", []))
        subnet_group = c.get("DBSubnetGroup")
        subnets: tuple[str, ...] = ()
        if subnet_group:
            groups = client.describe_db_subnet_groups(DBSubnetGroupName=subnet_group)["DBSubnetGroups"]
            subnets = tuple(s["SubnetIdentifier"] for g in groups for s in g.get("Subnets", []))
        target = RdsTarget("cluster", identifier, region, c.get("DBClusterParameterGroup"), members,
                           c.get("Engine", "aurora-postgresql"), c.get("EngineVersion", ""))
        return DatabaseFacts(
            target,
            int(c.get("Port") or 5432),
            int(c.get("BackupRetentionPeriod") or 0),
            {
                m["DBInstanceIdentifier"]: m.get("DBClusterParameterGroupStatus", "in-sync")
                for m in c.get("DBClusterMembers", [])
            },
            tuple(
                g["VpcSecurityGroupId"]
                for g in c.get("VpcSecurityGroups", [])
                if g.get("Status", "active") == "active"
            ),
            subnet_group,
            subnets,
            None,
        )
    i = client.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]
    groups = i.get("DBParameterGroups", [])
    subnet = i.get("DBSubnetGroup") or {}
    target = RdsTarget(
        "instance",
        identifier,
        region,
        groups[0]["DBParameterGroupName"] if groups else None,
        (),
        i.get("Engine", "postgres"),
        i.get("EngineVersion", ""),
    )
    return DatabaseFacts(
        target, int((i.get("Endpoint") or {}).get("Port") or 5432), int(i.get("BackupRetentionPeriod") or 0),
        {identifier: groups[0].get("ParameterApplyStatus", "in-sync")} if groups else {},
        tuple(
            g["VpcSecurityGroupId"]
            for g in i.get("VpcSecurityGroups", [])
            if g.get("Status", "active") == "active"
        ),
        subnet.get("DBSubnetGroupName"),
        tuple(s["SubnetIdentifier"] for s in subnet.get("Subnets", [])),
        i.get("PubliclyAccessible"),
    )


def group_parameters(client: Any, target: RdsTarget) -> dict[str, str]:
    """Name -> value of the parameters set in the attached group (absent: the engine default applies)."""
    assert target.parameter_group
    if target.is_cluster:
        pages = client.get_paginator("describe_db_cluster_parameters").paginate(
            DBClusterParameterGroupName=target.parameter_group)
    else:
        pages = client.get_paginator("describe_db_parameters").paginate(
            DBParameterGroupName=target.parameter_group
        )
    return {
        p["ParameterName"]: str(p["ParameterValue"])
        for page in pages for p in page.get("Parameters", []) if p.get("ParameterValue") is not None
    }


def check_parameters(client: Any, facts: DatabaseFacts, cfg: ConnectionConfig) -> list[CheckResult]:
    target = facts.target
    what = "cluster parameter group" if target.is_cluster else "parameter group"
    if not target.parameter_group:
        return [
            fail(
                AWS,
                "parameter group",
                f"no {what} attached",
                fixes.set_parameters(target, {"rds.logical_replication": "1"}),
            )
        ]
    values = group_parameters(client, target)
    group = target.parameter_group
    results = []
    if values.get("rds.logical_replication") == "1":
        results.append(ok(AWS, "rds.logical_replication", f"1 in {what} {group}"))
    else:
        found = values.get("rds.logical_replication", "not set (engine default 0)")
        results.append(
            fail(
                AWS,
                "rds.logical_replication",
                f"{found} in {what} {group}; logical replication needs 1",
                fixes.set_parameters(target, {"rds.logical_replication": "1"}),
            )
        )
    needed = len(cfg.slots)
    for name in ("max_replication_slots", "max_wal_senders"):
        if name in values and needed and int(values[name]) < needed:
            results.append(fail(AWS, name, f"{values[name]} in {group}; the config has {needed} slot(s)",
                                fixes.set_parameters(target, {name: str(max(needed, 10))})))
    timeout = values.get("wal_sender_timeout")
    if timeout != "0":
        results.append(
            warn(
                AWS,
                "wal_sender_timeout",
                f"{timeout or 'engine default (60s)'} in {group}: an idle stream may be cut during a long "
                "snapshot",
                fixes.set_parameters(target, {"wal_sender_timeout": "0"}),
            )
        )
    return results


def check_apply_status(facts: DatabaseFacts) -> CheckResult:
    pending = sorted(i for i, s in facts.apply_status.items() if s == "pending-reboot")
    applying = sorted(i for i, s in facts.apply_status.items() if s == "applying")
    if pending:
        target = facts.target
        to_reboot = RdsTarget(
            target.kind, target.identifier, target.region, target.parameter_group, tuple(pending)
        )
        return fail(
            AWS,
            "parameters applied",
            f"{', '.join(pending)}: parameter group changes are pending a reboot (not in effect yet)",
            "\n".join(fixes.reboot(to_reboot) if target.is_cluster else fixes.reboot(target)),
        )
    if applying:
        return warn(
            AWS,
            "parameters applied",
            f"{', '.join(applying)}: parameter group changes are being applied",
            "wait a few minutes and run check again",
        )
    return ok(AWS, "parameters applied", "in-sync")


def check_backup_retention(facts: DatabaseFacts) -> CheckResult:
    days = facts.backup_retention
    if days >= MIN_BACKUP_RETENTION_DAYS:
        return ok(AWS, "backup retention", f"{days} days")
    t = facts.target
    if t.is_cluster:
        cmd = aws(
            "rds",
            "modify-db-cluster",
            "--db-cluster-identifier",
            t.identifier,
            "--backup-retention-period",
            str(MIN_BACKUP_RETENTION_DAYS),
            "--apply-immediately",
            "--region",
            t.region,
        )
    else:
        cmd = aws(
            "rds",
            "modify-db-instance",
            "--db-instance-identifier",
            t.identifier,
            "--backup-retention-period",
            str(MIN_BACKUP_RETENTION_DAYS),
            "--apply-immediately",
            "--region",
            t.region,
        )
    return fail(AWS, "backup retention", f"{days} day(s); at least {MIN_BACKUP_RETENTION_DAYS} needed", cmd)


def _contains(cidr: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def _port_ok(perm: dict[str, Any], port: int) -> bool:
    if perm.get("IpProtocol") in ("-1", "all"):
        return True
    if perm.get("IpProtocol") not in ("tcp", "6"):
        return False
    return int(perm.get("FromPort", 0)) <= port <= int(perm.get("ToPort", 65535))


def check_security_groups(ec2: Any, facts: DatabaseFacts, ip: str, ip_origin: str) -> list[CheckResult]:
    t, port = facts.target, facts.port
    results: list[CheckResult] = []
    if facts.publicly_accessible is False and ipaddress.ip_address(ip).is_global and not t.is_cluster:
        results.append(
            fail(
                AWS,
                "public access",
                f"{t.identifier} is not publicly accessible, and {ip} is a public address",
                aws(
                    "rds",
                    "modify-db-instance",
                    "--db-instance-identifier",
                    t.identifier,
                    "--publicly-accessible",
                    "--apply-immediately",
                    "--region",
                    t.region,
                )
                + "\nor run the replicator inside the VPC",
            )
        )
    if not facts.security_group_ids:
        return [*results, skip(AWS, "security groups", "no VPC security groups attached")]
    groups = ec2.describe_security_groups(GroupIds=list(facts.security_group_ids))["SecurityGroups"]
    indirect = False
    for group in groups:
        for perm in group.get("IpPermissions", []):
            if not _port_ok(perm, port):
                continue
            for r in perm.get("IpRanges", []) + perm.get("Ipv6Ranges", []):
                cidr = r.get("CidrIp") or r.get("CidrIpv6")
                if cidr and _contains(cidr, ip):
                    note = f" ({r['Description']})" if r.get("Description") else ""
                    return [
                        *results,
                        ok(
                            AWS,
                            "security groups",
                            f"{group['GroupId']} allows {ip}{ip_origin} on port {port} via {cidr}{note}",
                        ),
                    ]
            indirect = indirect or bool(perm.get("UserIdGroupPairs") or perm.get("PrefixListIds"))
    group_id = facts.security_group_ids[0]
    cidr = f"{ip}/32" if ipaddress.ip_address(ip).version == 4 else f"{ip}/128"
    key = (
        "IpRanges=[{CidrIp=%s,Description=replicator}]"
        if "/32" in cidr
        else "Ipv6Ranges=[{CidrIpv6=%s,Description=replicator}]"
    )
    perms = f"IpProtocol=tcp,FromPort={port},ToPort={port}," + key % cidr
    fix = (aws("ec2", "authorize-security-group-ingress", "--group-id", group_id, "--ip-permissions", perms,
               "--region", t.region)
           + f"\nor add {cidr} to replicator:allowlist in the Pulumi stack config and run `pulumi up`")
    detail = f"no rule in {', '.join(facts.security_group_ids)} allows {ip}{ip_origin} on port {port}"
    if indirect:
        detail += " (rules referring to other security groups or prefix lists were not evaluated)"
    return [*results, fail(AWS, "security groups", detail, fix)]


def _acl_match(entry: dict[str, Any], ip: str, low: int, high: int) -> bool:
    if entry.get("Protocol") not in ("-1", "6"):
        return False
    cidr = entry.get("CidrBlock") or entry.get("Ipv6CidrBlock")
    if not cidr or not _contains(cidr, ip):
        return False
    ports = entry.get("PortRange")
    if entry.get("Protocol") == "-1" or not ports:
        return True
    return int(ports["From"]) <= high and low <= int(ports["To"])


def _first_rule(
    entries: list[dict[str, Any]], egress: bool, ip: str, low: int, high: int
) -> dict[str, Any] | None:
    rules = sorted(
        (e for e in entries if bool(e.get("Egress")) == egress), key=lambda e: int(e["RuleNumber"])
    )
    return next((e for e in rules if _acl_match(e, ip, low, high)), None)


def _covers(entry: dict[str, Any], low: int, high: int) -> bool:
    ports = entry.get("PortRange")
    return (
        entry.get("Protocol") == "-1" or not ports or (int(ports["From"]) <= low and high <= int(ports["To"]))
    )


def _free_rule_number(entries: list[dict[str, Any]], egress: bool, below: int) -> int:
    used = {int(e["RuleNumber"]) for e in entries if bool(e.get("Egress")) == egress}
    n = below - 1
    while n in used and n > 1:
        n -= 1
    return max(n, 1)


def check_network_acls(ec2: Any, facts: DatabaseFacts, ip: str) -> list[CheckResult]:
    if not facts.subnet_ids:
        return [skip(AWS, "network acl", "no subnets known for the database (no DB subnet group)")]
    acls = ec2.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": list(facts.subnet_ids)}]
    )["NetworkAcls"]
    region, port = facts.target.region, facts.port
    cidr = f"{ip}/32" if ipaddress.ip_address(ip).version == 4 else f"{ip}/128"
    problems, steps = [], []
    for acl in acls:
        entries, acl_id = acl.get("Entries", []), acl["NetworkAclId"]
        for egress, (low, high), what in ((False, (port, port), f"inbound to port {port}"),
                                          (True, _EPHEMERAL, "outbound replies to ports 1024-65535")):
            rule = _first_rule(entries, egress, ip, low, high)
            if rule is not None and rule.get("RuleAction") == "allow" and _covers(rule, low, high):
                continue
            number = _free_rule_number(entries, egress, int(rule["RuleNumber"]) if rule else 32767)
            how = (
                f"rule {rule['RuleNumber']} denies it"
                if rule and rule.get("RuleAction") == "deny"
                else "no rule allows it"
            )
            problems.append(f"{acl_id}: {what} from {ip}: {how}")
            steps.append(
                aws(
                    "ec2",
                    "create-network-acl-entry",
                    "--network-acl-id",
                    acl_id,
                    "--egress" if egress else "--ingress",
                    "--rule-number",
                    str(number),
                    "--protocol",
                    "tcp",
                    "--port-range",
                    f"From={low},To={high}",
                    "--cidr-block",
                    cidr,
                    "--rule-action",
                    "allow",
                    "--region",
                    region,
                )
            )
    if problems:
        return [fail(AWS, "network acl", "; ".join(problems), "\n".join(steps))]
    return [
        ok(
            AWS,
            "network acl",
            f"{', '.join(a['NetworkAclId'] for a in acls) or 'no ACL'} lets {ip} through both ways",
        )
    ]


def local_address_towards(host: str, port: int) -> str | None:
    """The address this machine would use to reach ``host`` (a UDP 'connect' sends nothing)."""
    try:
        family = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family[0], socket.SOCK_DGRAM) as s:
            s.connect(family[4])
            return str(s.getsockname()[0])
    except OSError:
        return None
