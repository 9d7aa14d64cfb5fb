"""The typed stack-config reader: what it accepts, and how it tells a user what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from stack_config import StackConfigError, parse_stack_config
from tests.infra.conftest import BASE, pulumi_config


def parse(**changes: Any) -> Any:
    values = {**BASE, **changes}
    return parse_stack_config(pulumi_config({k: v for k, v in values.items() if v is not None}), "dev")


def test_defaults_and_short_forms() -> None:
    cfg = parse()
    assert cfg.source == "create" and cfg.family == "postgres16"
    assert cfg.backup_retention_days == 7 and cfg.max_replication_slots == 10
    assert [(a.cidr, a.description) for a in cfg.allowlist] == [
        ("203.0.113.7/32", "replicator host"), ("198.51.100.0/24", "replicator")
    ]
    assert cfg.slots == {"replicator_slot": "pgoutput"} and cfg.ssl_mode == "require"


def test_values_arrive_as_text_and_are_typed() -> None:
    cfg = parse(backupRetentionDays="14", publiclyAccessible="true", maxWalSenders="12")
    assert (cfg.backup_retention_days, cfg.publicly_accessible, cfg.max_wal_senders) == (14, True, 12)


def test_unknown_key_gets_did_you_mean() -> None:
    with pytest.raises(StackConfigError, match=r"Pulumi.dev.yaml: replicator:backupRetention: unknown key; "
                       r"did you mean replicator:backupRetentionDays\?"):
        parse(backupRetention=3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backupRetentionDays": 1}, r"replicator:backupRetentionDays: input should be greater than or equal to 3"),
        ({"engine": "postgresql"}, r"replicator:engine: input should be 'postgres' or 'aurora-postgresql'"),
        ({"engineVersion": "9.6"}, r"PostgreSQL 9 has no supported parameter-group family"),
        ({"engineVersion": "18"}, r"PostgreSQL 18 has no supported parameter-group family"),
        ({"allowlist": ["10.0.0.1/8"]}, r"replicator:allowlist\[0\].cidr: not a CIDR block"),
        ({"adminPassword": None}, r"replicator:adminPassword: required key is missing"),
        ({"identifier": None}, r"identifier is required when source is create"),
        ({"source": "self-hosted"}, r"host is required when source is self-hosted"),
        ({"publicationTables": "*"}, r"FOR ALL TABLES\) needs a true superuser"),
        ({"extraParameters": {"max_wal_sender": "5"}}, r"unknown RDS parameter 'max_wal_sender'; did you mean 'max_wal_senders'"),
        ({"extraParameters": {"max_wal_senders": "5"}}, r"set by the program"),
        ({"extraParameters": {"aurora.enhanced_logical_replication": "1"}}, r"exists only on aurora-postgresql"),
        ({"maxWalSenders": 1, "slots": {"a": "pgoutput", "b": "wal2json"}}, r"maxWalSenders \(1\) is lower"),
        # The same CIDR twice would declare two resources for one rule (AWS refuses the duplicate).
        ({"allowlist": ["10.0.0.0/24", "203.0.113.7/32", "10.0.0.0/24"]},
         r"allowlist\[2\]: 10.0.0.0/24 is already allowlist\[0\]; list it once"),
        ({"allowlist": ["2001:db8::/64", {"cidr": "2001:0db8:0000::/64", "description": "same"}]},
         r"allowlist\[1\]: 2001:db8::/64 is already allowlist\[0\]"),
        ({"secretRecoveryWindowDays": 3}, r"must be 0 \(delete at once\) or 7 to 30, not 3"),
        ({"adminAccess": {"via": "tunnel"}}, r"via: tunnel needs host and port"),
        ({"adminAccess": {"via": "vpc", "port": 1}}, r"host and port belong to via: tunnel"),
    ],
)
def test_wrong_values_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(StackConfigError, match=message):
        parse(**changes)


def test_password_never_echoed() -> None:
    with pytest.raises(StackConfigError) as e:
        parse(adminPassword=["not", "text"])
    assert "not" not in str(e.value).split("adminPassword")[1].replace("input should", "")


def test_aurora_and_self_hosted() -> None:
    aurora = parse(engine="aurora-postgresql", engineVersion="15.4")
    assert aurora.is_cluster and aurora.family == "aurora-postgresql15"
    hosted = parse(source="self-hosted", host="10.1.2.3", identifier=None, publicationTables="*")
    assert not hosted.is_rds and hosted.ssl_mode == "prefer"
