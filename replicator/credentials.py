"""Credentials from a credential store: AWS Secrets Manager, in the JSON shape RDS writes.

An RDS-managed or Pulumi-written secret holds ``{"username": ..., "password": ..., "host": ...}``;
we need the first two. The endpoint follows boto3's configuration, so ``AWS_ENDPOINT_URL``
points it at LocalStack or moto. The password is registered for masking before anything could log it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from replicator import awsclient, logs
from replicator.config.connection import ConnectionConfig
from replicator.errors import ReplicatorError
from replicator.provision.rds import parse_endpoint

# Every connection asks for credentials (snapshot workers open many); one read per few minutes is
# enough and still picks up a rotated password on the next reconnect.
CACHE_SECONDS = 300.0

_cache: dict[tuple[str, str, str], tuple[float, tuple[str, str]]] = {}
_lock = threading.Lock()


class CredentialError(ReplicatorError):
    """The credential store could not give us a username and password."""


def fetch_credentials(cfg: ConnectionConfig) -> tuple[str, str]:
    """``(username, password)`` from the secret named by ``credential-store``."""
    store = cfg.credential_store
    if store is None:
        raise CredentialError("no credential-store configured")
    secret_id = store.secret_id
    region = store.region or _region_of_arn(secret_id) or cfg.aws_region or _region_of_host(cfg.host)
    try:
        client = awsclient.client("secretsmanager", region)
    except awsclient.AwsError as e:
        raise CredentialError(f"credential-store: {e}") from None
    key = (secret_id, client.meta.region_name, awsclient.endpoint_of(client))
    with _lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
    found = _read(client, secret_id)
    with _lock:
        _cache[key] = (time.monotonic(), found)
    return found


def clear_cache() -> None:
    with _lock:
        _cache.clear()


# libpq's words for a rejected login (psycopg's connection errors carry no SQLSTATE to match instead).
_AUTH_FAILED = ("password authentication failed", "SCRAM authentication", "PAM authentication failed")


def is_authentication_failure(exc: BaseException) -> bool:
    """The server refused the username or password (SQLSTATE 28P01 / 28000, or libpq's message)."""
    state = getattr(exc, "sqlstate", None) or ""
    return state in ("28P01", "28000") or any(m in str(exc) for m in _AUTH_FAILED)


def refresh_after_auth_failure(cfg: ConnectionConfig, exc: BaseException) -> bool:
    """Password rotation: on an authentication failure with a credential store, drop the cached secret.

    The role's password changes before the secret does, and a cached secret would keep the old one
    for up to ``CACHE_SECONDS``. Returns True when the caller should connect once more (the next
    ``fetch_credentials`` reads the secret again); only after that may the failure count as permanent.
    """
    if cfg.credential_store is None or not is_authentication_failure(exc):
        return False
    secret_id = cfg.credential_store.secret_id
    with _lock:
        for key in [k for k in _cache if k[0] == secret_id]:
            del _cache[key]
    return True


def read_secret_text(secret_id: str, region: str | None, what: str) -> str:
    """The text of a secret (e.g. an SSH key for ``ssh-tunnel``); ``what`` names the setting in messages."""
    region = region or _region_of_arn(secret_id)
    try:
        client = awsclient.client("secretsmanager", region)
    except awsclient.AwsError as e:
        raise CredentialError(f"{what}: {e}") from None
    return _secret_string(client, secret_id, what, expected="text")


def _secret_string(
    client: Any,
    secret_id: str,
    what: str = "credential-store",
    expected: str = "JSON with username and password",
) -> str:
    where = f"secret {secret_id!r} in {client.meta.region_name} ({awsclient.endpoint_of(client)})"
    try:
        response = client.get_secret_value(SecretId=secret_id)
    except awsclient.AWS_ERRORS as e:
        code = awsclient.error_code(e)
        if code == "ResourceNotFoundException":
            raise CredentialError(
                f"{what}: {where} does not exist; check {what}.secret-id and region"
            ) from None
        if code in ("AccessDeniedException", "AccessDenied"):
            raise CredentialError(
                f"{what}: not allowed to read {where}: the caller needs secretsmanager:GetSecretValue "
                "on it (and kms:Decrypt on its key)"
            ) from None
        raise CredentialError(f"{what}: cannot read {where}: {awsclient.explain(e)}") from None
    text = response.get("SecretString")
    if text is None:
        raise CredentialError(f"{what}: {where} holds binary data; expected {expected}")
    return str(text)


def _read(client: Any, secret_id: str) -> tuple[str, str]:
    where = f"secret {secret_id!r} in {client.meta.region_name} ({awsclient.endpoint_of(client)})"
    text = _secret_string(client, secret_id)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Never quote the content: it is a secret, however malformed.
        raise CredentialError(
            f"credential-store: {where} is not JSON; expected {{\"username\": ..., \"password\": ...}}"
        ) from None
    if not isinstance(data, dict):
        raise CredentialError(f"credential-store: {where} must be a JSON object with username and password")
    missing = [k for k in ("username", "password") if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        raise CredentialError(
            f"credential-store: {where} has no {' or '.join(missing)} (a non-empty text field)"
        )
    logs.register_secret(data["password"])
    return data["username"], data["password"]


def _region_of_arn(secret_id: str) -> str | None:
    # arn:aws:secretsmanager:eu-west-1:123456789012:secret:name
    parts = secret_id.split(":")
    return parts[3] if len(parts) > 6 and parts[0] == "arn" and parts[3] else None


def _region_of_host(host: str) -> str | None:
    endpoint = parse_endpoint(host)
    return endpoint.region if endpoint else None
