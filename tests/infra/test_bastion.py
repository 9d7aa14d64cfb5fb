"""Stack config ``replicator:bastion``: validated before anything is declared, handed to the providers as
a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from stack_config import StackConfigError, parse_stack_config

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD
from tests.conftest import AwsEndpoint, Database
from tests.infra.conftest import BASE, RecordingMocks, run_program
from tests.infra.moto_backed import MotoBackedMocks
from tests.ssh.conftest import _fresh_tunnels, sshd  # noqa: F401  (fixtures)
from tests.ssh.sshd import Sshd, keygen, public_line

USER = "pulumi-python:dynamic/replicator:ReplicationUser"
KNOWN = (
    "[bastion.example.com]:2222"
    " ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
)


def _bastion(key: Path, **extra: object) -> dict[str, object]:
    return {"host": "bastion.example.com", "port": 2222, "username": "ec2-user", "privateKeyFile": str(key),
            "knownHosts": KNOWN, **extra}


def _private(**extra: object) -> dict[str, object]:
    """BASE without adminAccess: the bastion is how the program gets in."""
    return {**{k: v for k, v in BASE.items() if k != "adminAccess"}, **extra}


def test_bastion_reaches_the_providers_as_a_secret(tmp_path: Path, mocks: RecordingMocks) -> None:
    key = keygen(tmp_path / "key", passphrase="bastion-passphrase-1")
    run_program(_private(bastion=_bastion(key, privateKeyPassphrase="bastion-passphrase-1")), mocks)
    user = mocks.one(USER)
    assert user.inputs["bastion"] == {
        "host": "bastion.example.com",
        "port": 2222,
        "username": "ec2-user",
        "private-key-file": str(key),
        "private-key-passphrase": "bastion-passphrase-1",
        "strict-host-key-checking": True,
        "known-hosts": KNOWN,
    }
    # Dynamic-provider inputs and outputs are stored in the state: both must be secrets there.
    assert "bastion" in user.secret_keys
    assert "bastion" in mocks.request(USER).additional_secret_outputs


def test_adopted_private_instance_gets_the_bastion_too(tmp_path: Path, mocks: RecordingMocks) -> None:
    key = keygen(tmp_path / "key")
    mocks.lookups["aws:rds/getInstance:getInstance"] = {
        "address": "orders-db.abcdefghij.eu-west-1.rds.amazonaws.com", "port": 5432, "engine": "postgres",
        "engineVersion": "16.4", "vpcSecurityGroups": ["sg-1"], "publiclyAccessible": False,
        "dbParameterGroups": ["default.postgres16"], "backupRetentionPeriod": 7,
    }
    run_program(_private(source="adopt", bastion=_bastion(key)), mocks)
    attachment = mocks.one("pulumi-python:dynamic/replicator:RdsAttachment")
    assert "bastion" in attachment.secret_keys
    assert (
        "bastion" in mocks.request("pulumi-python:dynamic/replicator:RdsAttachment").additional_secret_outputs
    )


def test_a_private_database_may_be_reached_through_the_bastion(tmp_path: Path) -> None:
    cfg = parse_stack_config(
        {f"replicator:{k}": v for k, v in _private(bastion=_bastion(keygen(tmp_path / "k"))).items()}
    )
    assert cfg.bastion is not None and cfg.admin_access is None


@pytest.mark.parametrize(
    ("bastion", "message"),
    [
        ({"adminAccess": {"via": "vpc"}}, "bastion and adminAccess both say how"),
        ({"privateKeyFile": None}, "give the bastion key as privateKeyFile or privateKey"),
        (
            {"privateKeyFile": "/no/such/key"},
            r"replicator:bastion: privateKeyFile: file not found: /no/such/key",
        ),
        ({"knownHostsFile": "/tmp/x"}, "give knownHostsFile or knownHosts"),
    ],
)
def test_wrong_bastion_settings_name_the_key(
    tmp_path: Path, bastion: dict[str, object], message: str
) -> None:
    admin = bastion.pop("adminAccess", None)
    config = _private(bastion={**_bastion(keygen(tmp_path / "k")), **bastion})
    if admin:
        config["adminAccess"] = admin
    with pytest.raises(StackConfigError, match=message):
        parse_stack_config({f"replicator:{k}": v for k, v in config.items()})


def test_a_wrong_passphrase_is_refused_without_echoing_it(tmp_path: Path) -> None:
    key = keygen(tmp_path / "key", passphrase="the-right-one")
    config = _private(bastion=_bastion(key, privateKeyPassphrase="the-wrong-one"))
    with pytest.raises(StackConfigError) as e:
        parse_stack_config({f"replicator:{k}": v for k, v in config.items()})
    assert "replicator:bastion: privateKeyPassphrase: privateKeyPassphrase does not decrypt" in str(e.value)
    assert "the-wrong-one" not in str(e.value)


def test_a_private_key_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    config = _private(
        bastion={**_bastion(tmp_path / "unused"), "privateKeyFile": None, "privateKey": 987654321}
    )
    with pytest.raises(StackConfigError) as e:
        parse_stack_config({f"replicator:{k}": v for k, v in config.items()})
    assert "bastion.privateKey" in str(e.value) and "987654321" not in str(e.value)


def test_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    key = keygen(tmp_path / "key")
    pub = tmp_path / "key.pub"
    assert pub.read_text().strip() == public_line(key)
    with pytest.raises(StackConfigError, match="that is a public key"):
        parse_stack_config({f"replicator:{k}": v for k, v in _private(bastion=_bastion(pub)).items()})


def test_pulumi_up_creates_the_user_through_the_bastion(
    aws: AwsEndpoint, source_db: Database, rds_replication: str, sshd: Sshd, tmp_path: Path  # noqa: F811
) -> None:
    """End to end under moto-backed mocks: the stack config's bastion is the only way in, and it is used."""
    from tests.infra.test_end_to_end import network

    vpc, subnets = network(aws)
    port = source_db.cluster.port
    config = {
        "aws:region": aws.region, "engine": "postgres", "engineVersion": "15.4", "identifier": "via-bastion",
        "databaseName": source_db.name, "adminUsername": SUPERUSER, "adminPassword": SUPERUSER_PASSWORD,
        "sslMode": "prefer", "port": port, "vpcId": vpc, "subnetIds": subnets,
        "replicationUser": f"cdc_{source_db.name}", "slots": {f"slot_{source_db.name}": "pgoutput"},
        "bastion": {"host": "127.0.0.1", "port": sshd.port, "username": sshd.username,
                    "privateKeyFile": str(sshd.user_key), "knownHostsFile": str(sshd.known_hosts)},
    }
    before = sshd.forwards_to(port)
    run_program(config, MotoBackedMocks(aws=aws, dns=("127.0.0.1", port)))
    assert (
        source_db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (f"cdc_{source_db.name}",))
        == 1
    )
    assert sshd.forwards_to(port) > before


def test_the_stack_outputs_hand_the_bastion_over_without_its_secrets(
    tmp_path: Path, mocks: RecordingMocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicator reaches the private database the way the program did, but the key and its
    passphrase stay in the stack's secrets: the outputs (printed by `pulumi stack output`) omit them."""
    import json

    from replicator import handoff as replicator_handoff
    from replicator.config import load_connection

    key = keygen(tmp_path / "key", passphrase="bastion-passphrase-1")
    out = run_program(_private(bastion=_bastion(key, privateKeyPassphrase="bastion-passphrase-1")), mocks)
    assert out["sshTunnel"] == {
        "host": "bastion.example.com", "port": 2222, "username": "ec2-user", "private-key-file": str(key),
        "strict-host-key-checking": True, "known-hosts": KNOWN, "private-key-encrypted": True,
    }
    assert "bastion-passphrase-1" not in json.dumps(out)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(out))
    target = tmp_path / "source.yaml"
    replicator_handoff.handoff(str(outputs), str(target))
    assert "${REPLICATOR_SSH_KEY_PASSPHRASE}" in target.read_text()
    monkeypatch.setenv("REPLICATOR_SSH_KEY_PASSPHRASE", "bastion-passphrase-1")
    cfg = load_connection(target, "source").value  # the key file decrypts with the passphrase
    assert cfg.ssh_tunnel is not None
    assert (cfg.ssh_tunnel.host, cfg.ssh_tunnel.port, cfg.ssh_tunnel.username) == (
        "bastion.example.com", 2222, "ec2-user"
    )
    assert (tmp_path / "source.yaml.known_hosts").read_text() == KNOWN + "\n"
