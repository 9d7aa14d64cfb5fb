"""Network access: security-group ingress from each allowlisted CIDR, and network-ACL entries when asked."""

from __future__ import annotations

import ipaddress

import pulumi
import pulumi_aws as aws
from stack_config import AllowedCidr, NetworkAcl

_EPHEMERAL_PORTS = (1024, 65535)  # where replies go: NACLs are stateless, so they need their own rule


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
        port: pulumi.Input[int],
        allowlist: list[AllowedCidr],
        security_group_ids: list[str] | None = None,
        vpc_id: str | None = None,
        network_acl: NetworkAcl | None = None,
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
            for n, allowed in enumerate(allowlist):
                for egress, (low, high) in ((False, (port, port)), (True, _EPHEMERAL_PORTS)):
                    v6 = ipaddress.ip_network(allowed.cidr).version == 6
                    self.acl_rules.append(
                        aws.ec2.NetworkAclRule(
                            f"{name}-acl-{'out' if egress else 'in'}-{_slug(allowed.cidr)}",
                            network_acl_id=network_acl.id,
                            rule_number=network_acl.first_rule_number + n,
                            egress=egress,
                            protocol="tcp",
                            rule_action="allow",
                            cidr_block=None if v6 else allowed.cidr,
                            ipv6_cidr_block=allowed.cidr if v6 else None,
                            from_port=low,
                            to_port=high,
                            opts=child,
                        )
                    )
        self.register_outputs({"security_group_ids": self.security_group_ids})


def _slug(cidr: str) -> str:
    return cidr.replace("/", "-").replace(":", "-").replace(".", "-")
