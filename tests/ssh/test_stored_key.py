"""The tunnel's key from a credential store (Secrets Manager on a moto server): text or JSON with a
passphrase."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator import logs, ssh
from replicator.config import load_connection
from replicator.connect import connect
from tests.conftest import AwsEndpoint, Database
from tests.ssh.conftest import Sshd, keygen, public_line
from tests.test_credentials import put_secret


def _tunnel(sshd: Sshd, secret_id: str) -> dict[str, object]:
    tunnel = {k: v for k, v in sshd.tunnel().items() if k != "private-key-file"}
    return {**tunnel, "credential-store": {"type": "AWS_SECRETS_MANAGER", "secret-id": secret_id}}


def test_key_and_passphrase_from_a_json_secret(
    aws: AwsEndpoint, sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    passphrase = "stored-passphrase-4321"
    key = keygen(tmp_path / "stored", passphrase=passphrase)
    sshd.authorized_keys.write_text(sshd.authorized_keys.read_text() + public_line(key) + "\n")
    arn = put_secret(
        aws, "bastion-key", {"private-key": key.read_text(), "private-key-passphrase": passphrase}
    )
    path = source_db.write_config(tmp_path / "s.yaml", **{"ssh-tunnel": _tunnel(sshd, arn)})
    with connect(load_connection(path, "source").value, "source") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # Read from the store, so registered for masking like a password.
    assert logs.mask(f"x {passphrase} y") == "x ******** y"
    body = key.read_text().splitlines()[1]
    assert body not in logs.mask(body)


def test_key_as_plain_text_secret(aws: AwsEndpoint, sshd: Sshd, source_db: Database, tmp_path: Path) -> None:
    put_secret(aws, "bastion-key-text", sshd.user_key.read_text())
    path = source_db.write_config(tmp_path / "s.yaml", **{"ssh-tunnel": _tunnel(sshd, "bastion-key-text")})
    with connect(load_connection(path, "source").value, "source") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_secret_without_a_key_is_refused(
    aws: AwsEndpoint, sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    put_secret(aws, "not-a-key", {"username": "u", "password": "p-123456"})
    path = source_db.write_config(tmp_path / "s.yaml", **{"ssh-tunnel": _tunnel(sshd, "not-a-key")})
    with pytest.raises(ssh.TunnelRefused) as err:
        connect(load_connection(path, "source").value, "source")
    assert 'is JSON without a "private-key" text field' in str(err.value)
    assert err.value.exit_code == 2
    assert "p-123456" not in str(err.value)
