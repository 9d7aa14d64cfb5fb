"""`replicator handoff` with ``replicator:bastion``: the config it writes goes in through the same bastion,
against a real sshd and a real server; the bastion's key never travels in the stack outputs."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from replicator.config import load_connection
from replicator.connect import connect
from replicator.errors import ConfigError
from replicator.handoff import SSH_KEY_VARIABLE, handoff
from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD
from tests.conftest import AwsEndpoint, Database
from tests.ssh.conftest import _fresh_tunnels, sshd  # noqa: F401  (fixtures)
from tests.ssh.sshd import Sshd
from tests.test_credentials import put_secret


def _outputs(tmp_path: Path, aws: AwsEndpoint, db: Database, tunnel: dict[str, Any]) -> Path:
    arn = put_secret(aws, f"handoff-{db.name}", {"username": SUPERUSER, "password": SUPERUSER_PASSWORD})
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({
        "host": "127.0.0.1", "port": db.cluster.port, "database": db.name, "secretArn": arn,
        "region": aws.region, "slots": {"s": "pgoutput"}, "publication": "p", "sslMode": "prefer",
        "sshTunnel": tunnel,
    }))
    return path


def _tunnel(server: Sshd, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "username": server.username,
            "strict-host-key-checking": True, **extra}


def test_the_handed_off_config_goes_in_through_the_bastion(
    sshd: Sshd, aws: AwsEndpoint, source_db: Database, tmp_path: Path  # noqa: F811
) -> None:
    """Key file and known_hosts lines as the stack config gave them: the host key lands beside the
    config (which points at it), and a connection made from the config crosses the bastion."""
    outputs = _outputs(tmp_path, aws, source_db, _tunnel(
        sshd, **{"private-key-file": str(sshd.user_key), "known-hosts": sshd.known_hosts.read_text()}
    ))
    target = tmp_path / "source.yaml"
    handoff(str(outputs), str(target))
    hosts = tmp_path / "source.yaml.known_hosts"
    assert hosts.read_text() == sshd.known_hosts.read_text().strip() + "\n"
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o600
    cfg = load_connection(target, "source").value
    assert cfg.ssh_tunnel is not None and cfg.ssh_tunnel.known_hosts_file == hosts.resolve()
    before = sshd.forwards_to(source_db.cluster.port)
    with connect(cfg, "source") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (SUPERUSER,)
    assert sshd.forwards_to(source_db.cluster.port) > before  # it went through the bastion
    # Written again only with --force, and then both files.
    with pytest.raises(ConfigError, match="exists already"):
        handoff(str(outputs), str(target))
    hosts.unlink()
    with pytest.raises(ConfigError, match="source.yaml: exists already"):
        handoff(str(outputs), str(target))
    assert not hosts.exists()  # refused before anything was written


def test_an_inline_key_is_read_from_the_environment_where_the_replicator_runs(
    sshd: Sshd, aws: AwsEndpoint, source_db: Database, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stack held the key as a secret: the outputs carry no key, the config names a variable."""
    tunnel = _tunnel(sshd, **{"known-hosts-file": str(sshd.known_hosts)})
    outputs = _outputs(tmp_path, aws, source_db, tunnel)
    text = handoff(str(outputs))
    assert "${" + SSH_KEY_VARIABLE + "}" in text and "BEGIN" not in text
    target = tmp_path / "source.yaml"
    handoff(str(outputs), str(target))
    monkeypatch.delenv(SSH_KEY_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match=SSH_KEY_VARIABLE):
        load_connection(target, "source")
    monkeypatch.setenv(SSH_KEY_VARIABLE, sshd.user_key.read_text())
    with connect(load_connection(target, "source").value, "source") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_known_hosts_lines_are_printed_as_a_comment_without_an_output_file(tmp_path: Path) -> None:
    line = "[bastion.example.com]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9o"
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({
        "host": "db.example.com", "port": 5432, "database": "d", "region": "eu-west-1",
        "secretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbCdEf",
        "sshTunnel": {"host": "bastion.example.com", "port": 2222, "username": "ec2-user",
                      "private-key-file": "~/.ssh/bastion", "known-hosts": line},
    }))
    text = handoff(str(path))
    assert f"#   {line}\n" in text and "known-hosts-file" not in text
