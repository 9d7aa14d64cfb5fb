"""Network access: one described ingress rule per (group, CIDR); NACL entries both ways when asked."""

from __future__ import annotations

from tests.infra.conftest import BASE, RecordingMocks, run_program

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


def test_network_acl_entries_when_asked(mocks: RecordingMocks) -> None:
    run_program({**BASE, "networkAcl": {"id": "acl-42", "firstRuleNumber": 200}}, mocks)
    rules = sorted(
        (
            r.inputs["ruleNumber"],
            r.inputs["egress"],
            r.inputs["cidrBlock"],
            r.inputs["fromPort"],
            r.inputs["toPort"],
        )
        for r in mocks.of_type(ACL_RULE)
    )
    # NACLs are stateless: inbound to the port, outbound to the ephemeral ports for the replies.
    assert rules == [
        (200, False, "203.0.113.7/32", 5432, 5432), (200, True, "203.0.113.7/32", 1024, 65535),
        (201, False, "198.51.100.0/24", 5432, 5432), (201, True, "198.51.100.0/24", 1024, 65535),
    ]
    assert {
        (r.inputs["networkAclId"], r.inputs["protocol"], r.inputs["ruleAction"])
        for r in mocks.of_type(ACL_RULE)
    } == {("acl-42", "tcp", "allow")}


def test_no_allowlist_no_rules(mocks: RecordingMocks) -> None:
    run_program({**BASE, "allowlist": []}, mocks)
    assert mocks.of_type(INGRESS) == []
