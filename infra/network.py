"""Network access: security-group ingress from each allowlisted CIDR, and network-ACL entries when asked."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_aws as aws

from replicator import awsclient
from stack_config import AllowedCidr, NetworkAcl, StackConfigError

_EPHEMERAL_PORTS = (1024, 65535)  # where replies go: NACLs are stateless, so they need their own rule
_MAX_RULE_NUMBER = 32766


def describe_acl_entries(acl_id: str, region: str, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """The ACL's current entries (``describe_network_acls``), to choose rule numbers that are free."""
    try:
        acls = awsclient.client("ec2", region, endpoint_url).describe_network_acls(NetworkAclIds=[acl_id])
    except (awsclient.AwsError, *awsclient.AWS_ERRORS) as e:
        detail = str(e) if isinstance(e, awsclient.AwsError) else awsclient.explain(e)
        raise StackConfigError(
            f"replicator:networkAcl.id: cannot read network ACL {acl_id} to choose free rule numbers: "
            f"{detail} (the caller needs ec2:DescribeNetworkAcls)"
        ) from None
    found = acls.get("NetworkAcls") or []
    if not found:
        raise StackConfigError(f"replicator:networkAcl.id: no network ACL {acl_id} in {region}")
    return list(found[0].get("Entries") or [])


def rule_numbers(
    entries: Sequence[Mapping[str, Any]],
    cidrs: Sequence[str],
    egress: bool,
    ports: tuple[int, int],
    first: int,
) -> dict[str, int]:
    """A rule number per CIDR for one direction: stable across runs, never one someone else uses.

    An entry that is exactly the rule we would create (same direction, CIDR, TCP ports, allow) at or
    above ``first`` is ours from an earlier run: it keeps its number, so adding or removing another
    CIDR renumbers (and so replaces) nothing. Every other CIDR takes the lowest number from ``first``
    up that no entry uses: a VPC's default ACL already holds rule 100 both ways.
    """
    same_direction = [e for e in entries if bool(e.get("Egress")) == egress]
    used = {int(e["RuleNumber"]) for e in same_direction}
    chosen: dict[str, int] = {}
    for cidr in cidrs:
        for e in same_direction:
            number = int(e["RuleNumber"])
            if number >= first and number not in chosen.values() and _is_our_rule(e, cidr, ports):
                chosen[cidr] = number
                break
    number = first
    for cidr in cidrs:
        if cidr in chosen:
            continue
        while number in used or number in chosen.values():
            number += 1
        if number > _MAX_RULE_NUMBER:
            raise StackConfigError(
                f"replicator:networkAcl: no free rule number from {first} to {_MAX_RULE_NUMBER} for {cidr}"
            )
        chosen[cidr] = number
    return chosen


def _is_our_rule(entry: Mapping[str, Any], cidr: str, ports: tuple[int, int]) -> bool:
    block = entry.get("CidrBlock") or entry.get("Ipv6CidrBlock")
    port_range = entry.get("PortRange") or {}
    return (
        block == cidr
        and entry.get("RuleAction") == "allow"
        and str(entry.get("Protocol")) == "6"
        and (int(port_range.get("From", -1)), int(port_range.get("To", -1))) == ports
    )


class NetworkAccess(pulumi.ComponentResource):
    """Lets the replicator's addresses reach the database port.

    With no security groups given, one is created in ``vpc_id`` (the caller attaches it to the
    database it creates). Each (group, CIDR) pair becomes its own ingress rule with a description,
    so adding or removing an address touches only that rule.
    """

    security_group_ids: list[pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        port: int,
        allowlist: list[AllowedCidr],
        security_group_ids: list[str] | None = None,
        vpc_id: str | None = None,
        network_acl: NetworkAcl | None = None,
        acl_entries: Sequence[Mapping[str, Any]] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:NetworkAccess", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if security_group_ids:
            self.security_group_ids = [pulumi.Output.from_input(g) for g in security_group_ids]
        else:
            group = aws.ec2.SecurityGroup(
                f"{name}-db",
                description="PostgreSQL source for replicator",
                vpc_id=vpc_id,
                opts=child,
            )
            self.security_group_ids = [group.id]
        self.ingress_rules: list[aws.vpc.SecurityGroupIngressRule] = []
        for g, group_id in enumerate(self.security_group_ids):
            for allowed in allowlist:
                v6 = ipaddress.ip_network(allowed.cidr).version == 6
                self.ingress_rules.append(
                    aws.vpc.SecurityGroupIngressRule(
                        f"{name}-sg{g}-{_slug(allowed.cidr)}",
                        security_group_id=group_id,
                        ip_protocol="tcp",
                        from_port=port,
                        to_port=port,
                        cidr_ipv4=None if v6 else allowed.cidr,
                        cidr_ipv6=allowed.cidr if v6 else None,
                        description=allowed.description,
                        opts=child,
                    )
                )
        self.acl_rules: list[aws.ec2.NetworkAclRule] = []
        if network_acl is not None:
            cidrs = sorted(a.cidr for a in allowlist)
            # Resources are keyed by CIDR and numbers stay put; a replaced rule is deleted first, so
            # its number is free again for the new one.
            acl_opts = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True))
            for egress, (low, high) in ((False, (int(port), int(port))), (True, _EPHEMERAL_PORTS)):
                numbers = rule_numbers(acl_entries, cidrs, egress, (low, high), network_acl.first_rule_number)
                for allowed in allowlist:
                    v6 = ipaddress.ip_network(allowed.cidr).version == 6
                    self.acl_rules.append(
                        aws.ec2.NetworkAclRule(
                            f"{name}-acl-{'out' if egress else 'in'}-{_slug(allowed.cidr)}",
                            network_acl_id=network_acl.id,
                            rule_number=numbers[allowed.cidr],
                            egress=egress,
                            protocol="tcp",
                            rule_action="allow",
                            cidr_block=None if v6 else allowed.cidr,
                            ipv6_cidr_block=allowed.cidr if v6 else None,
                            from_port=low,
                            to_port=high,
                            opts=acl_opts,
                        )
                    )
        self.register_outputs({"security_group_ids": self.security_group_ids})


def _slug(cidr: str) -> str:
    return cidr.replace("/", "-").replace(":", "-").replace(".", "-")
