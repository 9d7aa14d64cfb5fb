"""Network access: one described ingress rule per (group, CIDR); NACL entries both ways when asked."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from network import rule_numbers
from stack_config import StackConfigError

from tests.conftest import AwsEndpoint
from tests.infra.conftest import BASE, RecordingMocks, run_program, unwrap

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
ACL_RULE = "aws:ec2/networkAclRule:NetworkAclRule"


def test_security_group_created_in_the_vpc_with_described_rules(mocks: RecordingMocks) -> None:
    run_program({**BASE, "vpcId": "vpc-123", "port": 5544}, mocks)
    group = mocks.one("aws:ec2/securityGroup:SecurityGroup").inputs
    assert group["vpcId"] == "vpc-123"
    rules = sorted((r.inputs for r in mocks.of_type(INGRESS)), key=lambda i: i["cidrIpv4"])
    assert rules == [
        {"securityGroupId": "sg-0123456789abcdef0", "ipProtocol": "tcp", "fromPort": 5544, "toPort": 5544,
         "cidrIpv4": "198.51.100.0/24", "description": "replicator"},
        {"securityGroupId": "sg-0123456789abcdef0", "ipProtocol": "tcp", "fromPort": 5544, "toPort": 5544,
         "cidrIpv4": "203.0.113.7/32", "description": "replicator host"},
    ]
    assert mocks.one("aws:rds/instance:Instance").inputs["port"] == 5544
    assert mocks.of_type(ACL_RULE) == []


def test_ipv6_allowlist_entry(mocks: RecordingMocks) -> None:
    run_program({**BASE, "allowlist": [{"cidr": "2001:db8::/64", "description": "v6 host"}]}, mocks)
    rule = mocks.one(INGRESS).inputs
    assert rule["cidrIpv6"] == "2001:db8::/64" and "cidrIpv4" not in rule


def acl_numbers(mocks: RecordingMocks) -> dict[tuple[str, bool], int]:
    rules = mocks.of_type(ACL_RULE)
    return {(r.inputs["cidrBlock"], r.inputs["egress"]): r.inputs["ruleNumber"] for r in rules}


def test_network_acl_entries_when_asked(mocks: RecordingMocks) -> None:
    run_program({**BASE, "networkAcl": {"id": "acl-42", "firstRuleNumber": 200}}, mocks, acl_entries=[])
    rules = sorted(
        (r.inputs["ruleNumber"], r.inputs["egress"], r.inputs["cidrBlock"], r.inputs["fromPort"], r.inputs["toPort"])
        for r in mocks.of_type(ACL_RULE)
    )
    # NACLs are stateless: inbound to the port, outbound to the ephemeral ports for the replies.
    assert rules == [
        (200, False, "198.51.100.0/24", 5432, 5432), (200, True, "198.51.100.0/24", 1024, 65535),
        (201, False, "203.0.113.7/32", 5432, 5432), (201, True, "203.0.113.7/32", 1024, 65535),
    ]
    assert {(r.inputs["networkAclId"], r.inputs["protocol"], r.inputs["ruleAction"]) for r in mocks.of_type(ACL_RULE)} == {
        ("acl-42", "tcp", "allow")
    }
    # A changed rule (new port, say) is a replacement: with the old one deleted first, its number is free.
    assert all(mocks.requests[r.name].delete_before_replace for r in mocks.of_type(ACL_RULE))


def entry(number: int, cidr: str, egress: bool = False, ports: tuple[int, int] | None = (5432, 5432),
          protocol: str = "6", action: str = "allow") -> dict[str, Any]:
    e: dict[str, Any] = {"RuleNumber": number, "Egress": egress, "CidrBlock": cidr, "Protocol": protocol,
                         "RuleAction": action}
    if ports:
        e["PortRange"] = {"From": ports[0], "To": ports[1]}
    return e


# A VPC's default network ACL: allow everything at 100, deny at 32767, both ways.
DEFAULT_ACL = [entry(100, "0.0.0.0/0", eg, None, "-1") for eg in (False, True)] + [
    entry(32767, "0.0.0.0/0", eg, None, "-1", "deny") for eg in (False, True)
]


def test_rule_numbers_skip_what_the_acl_already_uses() -> None:
    numbers = rule_numbers(DEFAULT_ACL + [entry(101, "10.9.9.9/32")], ["10.0.0.1/32", "10.0.0.2/32"], False,
                           (5432, 5432), 100)
    assert numbers == {"10.0.0.1/32": 102, "10.0.0.2/32": 103}
    # The other direction has its own numbers.
    assert rule_numbers(DEFAULT_ACL, ["10.0.0.1/32"], True, (1024, 65535), 100) == {"10.0.0.1/32": 101}


def test_rule_numbers_stay_put_when_a_cidr_goes_or_comes() -> None:
    ours = [entry(101, "10.0.0.1/32"), entry(102, "10.0.0.2/32"), entry(103, "10.0.0.3/32")]
    # 10.0.0.2 removed: the others keep theirs (a renumbered rule would be replaced, and could collide).
    assert rule_numbers(DEFAULT_ACL + ours, ["10.0.0.1/32", "10.0.0.3/32"], False, (5432, 5432), 100) == {
        "10.0.0.1/32": 101, "10.0.0.3/32": 103,
    }
    # 10.0.0.0 added (sorting first): it takes a free number, nobody moves.
    cidrs = ["10.0.0.0/32", "10.0.0.1/32", "10.0.0.3/32"]
    assert rule_numbers(DEFAULT_ACL + [ours[0], ours[2]], cidrs, False, (5432, 5432), 100) == {
        "10.0.0.0/32": 102, "10.0.0.1/32": 101, "10.0.0.3/32": 103,
    }
    # An entry for the same CIDR that is not exactly our rule (other port, a deny) is not ours.
    other = [entry(101, "10.0.0.1/32", ports=(22, 22)), entry(102, "10.0.0.1/32", action="deny")]
    numbers = rule_numbers(DEFAULT_ACL + other, ["10.0.0.1/32"], False, (5432, 5432), 100)
    assert numbers == {"10.0.0.1/32": 103}


class AclRulesInMoto(RecordingMocks):
    """Declares like the engine would: each NACL rule the program asks for is created in moto."""

    def __init__(self, aws: AwsEndpoint) -> None:
        super().__init__()
        self.aws = aws
        self.on_resource = self._create

    def _create(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]] | None:
        if args.typ != ACL_RULE:
            return None
        i = unwrap(dict(args.inputs))
        self.aws.client("ec2").create_network_acl_entry(
            NetworkAclId=i["networkAclId"], RuleNumber=int(i["ruleNumber"]), Egress=bool(i["egress"]),
            Protocol="6", RuleAction=i["ruleAction"], CidrBlock=i["cidrBlock"],
            PortRange={"From": int(i["fromPort"]), "To": int(i["toPort"])},
        )
        return f"{i['networkAclId']}-{i['ruleNumber']}", i


@pytest.mark.parametrize("kept", ["203.0.113.7/32", "198.51.100.0/24"])
def test_default_acl_of_a_vpc_in_moto(aws: AwsEndpoint, kept: str) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    acls = ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["NetworkAcls"]
    acl = acls[0]["NetworkAclId"]
    # First run: numbers from 100 up, where the default ACL already holds 100 both ways (moto, like AWS,
    # refuses a second rule 100 with NetworkAclEntryAlreadyExists).
    first = AclRulesInMoto(aws)
    run_program({**BASE, "networkAcl": {"id": acl}}, first)
    before = acl_numbers(first)
    assert 100 not in before.values() and len(before) == 4
    # Next run without the other CIDR: the program reads the ACL (its earlier rules still there, the engine
    # deletes the dropped one afterwards) and the kept CIDR keeps its numbers, so nothing is replaced.
    second = RecordingMocks()
    run_program({**BASE, "allowlist": [kept], "networkAcl": {"id": acl}}, second)
    assert acl_numbers(second) == {k: v for k, v in before.items() if k[0] == kept}


def test_an_unreadable_acl_is_refused_before_anything_is_declared(aws: AwsEndpoint) -> None:
    with pytest.raises(StackConfigError, match="cannot read network ACL acl-0000000000000dead"):
        run_program({**BASE, "networkAcl": {"id": "acl-0000000000000dead"}}, RecordingMocks())


def test_no_allowlist_no_rules(mocks: RecordingMocks) -> None:
    run_program({**BASE, "allowlist": []}, mocks)
    assert mocks.of_type(INGRESS) == []
