"""Opening connections from a connection config: libpq parameters, SSL, retries, clear errors."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg
import tenacity
from psycopg.conninfo import make_conninfo

from replicator import ssh
from replicator.config.connection import ConnectionConfig
from replicator.errors import ReplicatorError
from replicator.retry import first_line, is_transient, permanent_connect_failure, retrying

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "ConnectError",
    "connect",
    "open_tunnels",
    "permanent_connect_failure",
    "retrying_for",
    "with_retries",
]


class ConnectError(ReplicatorError):
    """A database could not be reached or refused us, after ``connect``'s own retries.

    Not transient: those retries are spent. ``permanent`` when the server refused us (a wrong
    password stays wrong); otherwise ``recoverable``: starting over later may succeed (see
    ``retry.may_recover_later``)."""

    transient = False

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.recoverable = not permanent


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
    # Through an ssh-tunnel: hostaddr=127.0.0.1 and the local forward's port; `host` stays the configured
    # name, so verify-full checks the database's real name.
    params.update(ssh.libpq_params(cfg))
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


def describe(cfg: ConnectionConfig) -> str:
    """``host:port/database`` for messages (no credentials)."""
    return f"{cfg.host}:{cfg.port}/{cfg.database}"


def retrying_for(cfg: ConnectionConfig, what: str, **kw: Any) -> tenacity.Retrying:
    """``retry.retrying`` with this server's ``max-retries`` and ``retry-wait-duration-ms``."""
    return retrying(cfg.max_retries + 1, cfg.retry_wait_duration_ms / 1000, what, **kw)


def with_retries(cfg: ConnectionConfig, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried under the one policy (``retrying_for``)."""
    for attempt in retrying_for(cfg, what):
        with attempt:
            return fn()
    raise AssertionError("unreachable")


def connect(
    cfg: ConnectionConfig,
    role: str,
    application_name: str = "replicator",
    autocommit: bool = False,
    replication: bool = False,
) -> psycopg.Connection[Any]:
    """Connect with retries; failures become a ConnectError that says which server and why."""

    def attempt(info: str) -> psycopg.Connection[Any]:
        ssh.ensure(cfg)  # (re)opens the SSH tunnel, if any, so a bastion that went away is retried too
        started = time.monotonic()
        try:
            return psycopg.connect(info, autocommit=autocommit)
        except psycopg.OperationalError:
            # The tunnel closed the socket? Then its reason (which hop failed) beats libpq's "server closed".
            tunnel_failure = ssh.failure_since(cfg, started)
            if tunnel_failure is None:
                raise
            raise tunnel_failure from None

    def attempts() -> psycopg.Connection[Any]:
        info = conninfo(cfg, application_name, replication=replication)  # credentials are read here
        what = f"connecting to the {role} {describe(cfg)}"
        return with_retries(cfg, what, lambda: attempt(info))

    try:
        try:
            return attempts()
        except psycopg.OperationalError as e:
            if not _reread_rotated_credentials(cfg, e):
                raise
            return attempts()
    except psycopg.OperationalError as e:
        raise ConnectError(connect_failure_message(cfg, role, e), permanent=not is_transient(e)) from None
    except ssh.TunnelError as e:
        if not e.transient:
            raise  # a config value is at fault (exit 2, with file:line), or the bastion forbids forwarding
        raise ConnectError(f"cannot connect to the {role} {describe(cfg)}: {e}") from None


def open_tunnels(*configs: tuple[str, ConnectionConfig]) -> None:
    """Open each ``(role, config)``'s SSH tunnel before any database connection, so a refused host key
    or user key stops a run before anything is written anywhere."""
    for role, cfg in configs:
        if cfg.ssh_tunnel is None:
            continue
        try:
            what = f"opening the SSH tunnel to the {role} {describe(cfg)}"
            with_retries(cfg, what, partial(ssh.ensure, cfg))
        except ssh.TunnelError as e:
            if not e.transient:
                raise
            raise ConnectError(f"cannot connect to the {role} {describe(cfg)}: {e}") from None


def _reread_rotated_credentials(cfg: ConnectionConfig, exc: BaseException) -> bool:
    """Password rotation hook: an authentication failure with a credential store re-reads the secret, once."""
    if cfg.credential_store is None:
        return False
    from replicator.credentials import refresh_after_auth_failure

    return refresh_after_auth_failure(cfg, exc)


def connect_failure_message(cfg: ConnectionConfig, role: str, exc: BaseException) -> str:
    text = first_line(exc)
    if cfg.credential_store is not None:
        # The user name came from the secret: libpq's message must not echo it.
        text = re.sub(r'user "[^"]*"', "user (from credential-store)", text)
    hint = ""
    mode = cfg.ssl.ssl_mode if cfg.ssl else "prefer"
    if "server does not support SSL, but SSL was required" in text:
        hint = (
            f"\n  hint: ssl-mode is {mode}, which requires SSL, and this server does not accept SSL "
            "connections: "
            "turn ssl on at the server, or set ssl.ssl-mode: prefer (or disable) for this server"
        )
    elif "no pg_hba.conf entry" in text and "no encryption" in text:
        hint = (
            f"\n  hint: the server admits this connection only over SSL (hostssl lines; rds.force_ssl = 1), "
            "and "
            f"ssl-mode {mode} connected without it: set ssl.ssl-mode: require (or verify-full with "
            "ssl.root-cert)"
        )
    elif "no pg_hba.conf entry" in text:
        hint = "\n  hint: add a pg_hba.conf line (or security rule) admitting this user, database and address"
    elif "certificate" in text or "SSL" in text or "host name" in text:
        hint = (
            "\n  hint: check ssl.root-cert (the CA that signed the server certificate) and that `host` "
            "matches a name in the server certificate (verify-full checks both)"
        )
    elif "password authentication failed" in text:
        hint = "\n  hint: check username and password (or the credential-store secret)"
    elif "does not exist" in text:
        hint = "\n  hint: check `database` and `username` in the config (names are case-sensitive)"
    elif "Connection refused" in text or "timeout" in text:
        hint = "\n  hint: is the server running, and does a firewall or security group allow this address?"
    user = cfg.username or "(from credential-store)"
    cause = permanent_connect_failure(exc)
    verdict = f" ({cause}; not retried)" if cause else ""
    return f"cannot connect to the {role} {describe(cfg)} as {user}{verdict}: {text}{hint}"
