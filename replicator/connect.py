"""Opening connections from a connection config: libpq parameters, SSL, retries, clear errors."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import tenacity
from psycopg.conninfo import make_conninfo

from replicator.config.connection import ConnectionConfig
from replicator.errors import ReplicatorError
from replicator.retry import first_line, is_transient, retrying

log = logging.getLogger(__name__)


class ConnectError(ReplicatorError):
    """A database could not be reached or refused us, after ``connect``'s own retries.

    Not transient (those retries are spent). ``recoverable``: whether the cause may go away by
    itself (the server was unreachable), so that starting over later may succeed, as opposed
    to a server refusing us (see ``retry``)."""

    transient = False

    def __init__(self, message: str, recoverable: bool):
        super().__init__(message)
        self.recoverable = recoverable


def credentials(cfg: ConnectionConfig) -> tuple[str, str | None]:
    """Username and password, from the file or from the configured credential store."""
    if cfg.credential_store is not None:
        from replicator.credentials import fetch_credentials

        return fetch_credentials(cfg)
    assert cfg.username is not None  # guaranteed by ConnectionConfig validation
    return cfg.username, cfg.password.get_secret_value() if cfg.password else None


def conninfo(cfg: ConnectionConfig, application_name: str, replication: bool = False) -> str:
    """A libpq connection string. It holds the password: never log it."""
    user, password = credentials(cfg)
    params: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "dbname": cfg.database,
        "user": user,
        "password": password,
        "application_name": application_name,
        "connect_timeout": min(cfg.socket_timeout_s, 30) if cfg.socket_timeout_s else 10,
        "keepalives": 1,
        "keepalives_idle": 30,
    }
    if cfg.socket_timeout_s:
        params["tcp_user_timeout"] = cfg.socket_timeout_s * 1000
    if cfg.ssl is not None:
        params["sslmode"] = cfg.ssl.ssl_mode
        if cfg.ssl.root_cert:
            params["sslrootcert"] = str(cfg.ssl.root_cert)
        if cfg.ssl.ssl_cert and cfg.ssl.ssl_key:
            params["sslcert"] = str(cfg.ssl.ssl_cert)
            params["sslkey"] = str(cfg.ssl.ssl_key)
    if replication:
        params["replication"] = "database"
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def describe(cfg: ConnectionConfig) -> str:
    """``host:port/database`` for messages (no credentials)."""
    return f"{cfg.host}:{cfg.port}/{cfg.database}"


def retrying_for(cfg: ConnectionConfig, what: str, **kw: Any) -> tenacity.Retrying:
    """``retry.retrying`` with this server's ``max-retries`` and ``retry-wait-duration-ms``."""
    return retrying(cfg.max_retries + 1, cfg.retry_wait_duration_ms / 1000, what, **kw)


def connect(
    cfg: ConnectionConfig,
    role: str,
    application_name: str = "replicator",
    autocommit: bool = False,
    replication: bool = False,
) -> psycopg.Connection[Any]:
    """Connect with retries; failures become a ConnectError that says which server and why."""
    info = conninfo(cfg, application_name, replication=replication)
    try:
        for attempt in retrying_for(cfg, f"connecting to the {role} {describe(cfg)}"):
            with attempt:
                return psycopg.connect(info, autocommit=autocommit)
    except psycopg.OperationalError as e:
        raise ConnectError(connect_failure_message(cfg, role, e), recoverable=is_transient(e)) from None
    raise AssertionError("unreachable")


def connect_failure_message(cfg: ConnectionConfig, role: str, exc: BaseException) -> str:
    text = first_line(exc)
    hint = ""
    if "certificate" in text or "SSL" in text or "host name" in text:
        hint = (
            "\n  hint: check ssl.root-cert (the CA that signed the server certificate) and that `host` "
            "matches a name in the server certificate (verify-full checks both)"
        )
    elif "password authentication failed" in text:
        hint = "\n  hint: check username and password (or the credential-store secret)"
    elif "Connection refused" in text or "timeout" in text:
        hint = "\n  hint: is the server running, and does a firewall or security group allow this address?"
    user = cfg.username or "(from credential-store)"
    return f"cannot connect to the {role} {describe(cfg)} as {user}: {text}{hint}"
