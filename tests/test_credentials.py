"""Credentials from AWS Secrets Manager (a moto server reached through AWS_ENDPOINT_URL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from replicator import credentials, logs
from replicator.config import load_connection
from replicator.connect import ConnectError, connect
from replicator.credentials import CredentialError, fetch_credentials
from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, free_port
from tests.conftest import AwsEndpoint, Database


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    credentials.clear_cache()
    yield
    credentials.clear_cache()


def config(tmp_path: Path, store: dict[str, Any], **extra: Any) -> Any:
    data = {"type": "POSTGRESQL", "host": "127.0.0.1", "port": 5432, "database": "d", "credential-store": store, **extra}
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_connection(path, "source").value


def put_secret(aws: AwsEndpoint, name: str, value: Any, binary: bool = False) -> str:
    sm = aws.client("secretsmanager")
    if binary:
        return str(sm.create_secret(Name=name, SecretBinary=b"\x00\x01")["ARN"])
    text = value if isinstance(value, str) else json.dumps(value)
    return str(sm.create_secret(Name=name, SecretString=text)["ARN"])


RDS_SHAPED = {"username": "replicator", "password": "s3cret-Pa55word", "engine": "postgres", "host": "h", "port": 5432}


def test_reads_username_and_password_by_name(aws: AwsEndpoint, tmp_path: Path) -> None:
    put_secret(aws, "replicator/source", RDS_SHAPED)
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "replicator/source", "region": aws.region})
    assert fetch_credentials(cfg) == ("replicator", "s3cret-Pa55word")
    assert logs.mask("password=s3cret-Pa55word") == "password=********"


def test_region_comes_from_the_arn(aws: AwsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = put_secret(aws, "by-arn", RDS_SHAPED)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": arn})
    assert fetch_credentials(cfg)[0] == "replicator"


def test_region_comes_from_an_rds_host(aws: AwsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put_secret(aws, "by-host", RDS_SHAPED)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "by-host"},
                 host=f"orders.c9akciq32.{aws.region}.rds.amazonaws.com")
    assert fetch_credentials(cfg)[0] == "replicator"


def test_no_region_anywhere(aws: AwsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "x"})
    with pytest.raises(CredentialError, match="no AWS region for secretsmanager"):
        fetch_credentials(cfg)


def test_missing_secret(aws: AwsEndpoint, tmp_path: Path) -> None:
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "nope", "region": aws.region})
    with pytest.raises(CredentialError, match=r"secret 'nope' in eu-west-1 \(http://127.0.0.1:\d+\) does not exist"):
        fetch_credentials(cfg)


@pytest.mark.parametrize(
    ("value", "binary", "message"),
    [
        ("user=a password=hunter2-leaked", False, "is not JSON"),
        (["replicator", "hunter2-leaked"], False, "must be a JSON object"),
        ({"username": "replicator", "pass": "hunter2-leaked"}, False, "has no password"),
        ({"username": "", "password": "hunter2-leaked"}, False, "has no username"),
        (None, True, "holds binary data"),
    ],
)
def test_malformed_secret_never_quoted(aws: AwsEndpoint, tmp_path: Path, value: Any, binary: bool, message: str) -> None:
    put_secret(aws, "bad", value, binary=binary)
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "bad", "region": aws.region})
    with pytest.raises(CredentialError, match=message) as e:
        fetch_credentials(cfg)
    assert "hunter2" not in str(e.value)


def test_unreachable_endpoint(aws: AwsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "x", "region": aws.region})
    with pytest.raises(CredentialError, match="cannot reach the AWS endpoint"):
        fetch_credentials(cfg)


def test_no_credentials(aws: AwsEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "x", "region": aws.region})
    with pytest.raises(CredentialError, match="no AWS credentials found"):
        fetch_credentials(cfg)


def test_read_once_then_cached(aws: AwsEndpoint, tmp_path: Path) -> None:
    put_secret(aws, "cached", RDS_SHAPED)
    cfg = config(tmp_path, {"type": "AWS_SECRETS_MANAGER", "secret-id": "cached", "region": aws.region})
    assert fetch_credentials(cfg)[0] == "replicator"
    aws.client("secretsmanager").delete_secret(SecretId="cached", ForceDeleteWithoutRecovery=True)
    assert fetch_credentials(cfg)[0] == "replicator"  # many connections, one read
    credentials.clear_cache()
    with pytest.raises(CredentialError, match="does not exist"):
        fetch_credentials(cfg)


def test_connect_uses_the_secret(aws: AwsEndpoint, source_db: Database, tmp_path: Path) -> None:
    put_secret(aws, "pg", {"username": SUPERUSER, "password": SUPERUSER_PASSWORD})
    path = tmp_path / "source.yaml"
    data = source_db.config()
    del data["username"], data["password"]
    data["credential-store"] = {"type": "AWS_SECRETS_MANAGER", "secret-id": "pg", "region": aws.region}
    path.write_text(yaml.safe_dump(data))
    with connect(load_connection(path, "source").value, "source") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (SUPERUSER,)


def test_a_refused_login_does_not_echo_the_secrets_username(aws: AwsEndpoint, source_db: Database, tmp_path: Path) -> None:
    put_secret(aws, "pg-wrong", {"username": "store-only-user-7f3a", "password": "not-the-password"})
    path = tmp_path / "source.yaml"
    data = source_db.config()
    del data["username"], data["password"]
    data["credential-store"] = {"type": "AWS_SECRETS_MANAGER", "secret-id": "pg-wrong", "region": aws.region}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConnectError) as err:
        connect(load_connection(path, "source").value, "source")
    text = str(err.value)
    assert "password authentication failed for user (from credential-store)" in text
    assert "store-only-user-7f3a" not in text and "not-the-password" not in text


# -- password rotation: the role's password changes before the secret does ----------------------------


@pytest.fixture
def rotating(aws: AwsEndpoint, source_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A login role whose password lives in a secret, a config naming the secret, a count of secret reads."""
    role = f"rotated_{source_db.name}"
    source_db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'first-password-1'")
    put_secret(aws, f"pg-{role}", {"username": role, "password": "first-password-1"})
    data = {k: v for k, v in source_db.config().items() if k not in ("username", "password")}
    # No retries: each attempt is then one login, and the test counts them.
    store = {"type": "AWS_SECRETS_MANAGER", "secret-id": f"pg-{role}", "region": aws.region}
    data.update({"max-retries": 0, "credential-store": store})
    path = tmp_path / "rotating.yaml"
    path.write_text(yaml.safe_dump(data))
    reads: list[str] = []
    original = credentials._read

    def counting_read(client: Any, secret_id: str) -> tuple[str, str]:
        reads.append(secret_id)
        return original(client, secret_id)

    monkeypatch.setattr(credentials, "_read", counting_read)
    yield role, load_connection(path, "source").value, reads
    source_db.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_rotated_password_is_read_again_at_once(
    aws: AwsEndpoint, source_db: Database, rotating: Any
) -> None:
    role, cfg, reads = rotating
    with connect(cfg, "source") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert len(reads) == 1
    # Rotation: the role's password first, then the secret. The cached secret is now stale.
    source_db.execute(f"ALTER ROLE {role} PASSWORD 'second-password-2'")
    aws.client("secretsmanager").put_secret_value(
        SecretId=f"pg-{role}", SecretString=json.dumps({"username": role, "password": "second-password-2"}))
    with connect(cfg, "source") as conn:  # not after CACHE_SECONDS: now
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    assert len(reads) == 2
    with connect(cfg, "source"):
        pass
    assert len(reads) == 2  # cached again


def test_a_wrong_secret_fails_after_one_fresh_read(
    aws: AwsEndpoint, source_db: Database, rotating: Any
) -> None:
    role, cfg, reads = rotating
    source_db.execute(f"ALTER ROLE {role} PASSWORD 'changed-but-not-in-the-secret'")
    with pytest.raises(ConnectError, match="password authentication failed"):
        connect(cfg, "source")
    assert len(reads) == 2  # the first read, and one more: not a loop


def test_without_a_credential_store_nothing_is_read_again(source_db: Database, tmp_path: Path) -> None:
    path = source_db.write_config(tmp_path / "plain.yaml", password="not-the-password", **{"max-retries": 0})
    with pytest.raises(ConnectError, match="password authentication failed"):
        connect(load_connection(path, "source").value, "source")
