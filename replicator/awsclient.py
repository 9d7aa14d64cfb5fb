"""boto3 clients for the credential store, the checks and the provisioning helpers.

The endpoint comes from boto3's own configuration, so ``AWS_ENDPOINT_URL`` (or a service-specific
``AWS_ENDPOINT_URL_<SERVICE>``) points every client at LocalStack or moto without code changes.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from replicator.errors import ReplicatorError

_CONFIG = botocore.config.Config(
    connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}
)


class AwsError(ReplicatorError):
    """An AWS call failed in a way the user has to fix (credentials, permissions, a missing resource)."""


def client(service: str, region: str | None, endpoint_url: str | None = None) -> Any:
    """A boto3 client; ``region`` None falls back to boto3's own (AWS_REGION, profile)."""
    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise AwsError(
            f"no AWS region for {service}: give one in the config (credential-store.region or aws-region) "
            "or set AWS_REGION"
        )
    return session.client(service, endpoint_url=endpoint_url, config=_CONFIG)


def endpoint_of(aws_client: Any) -> str:
    """Where a client sends its requests (for messages: AWS itself or an emulator)."""
    return str(aws_client.meta.endpoint_url)


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "") or None
    return None


def explain(exc: BaseException) -> str:
    """One line saying what went wrong with an AWS call, without a traceback."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or run where an instance or task role provides them"
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        where = os.environ.get("AWS_ENDPOINT_URL")
        more = f" (AWS_ENDPOINT_URL={where})" if where else ""
        return f"cannot reach the AWS endpoint {exc.kwargs.get('endpoint_url', '')}{more}"
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


AWS_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
)
