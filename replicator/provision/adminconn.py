"""The provisioning program's admin connection to the source, and why it may not be able to open one.

A database that is not publicly accessible answers only inside its VPC. The program must connect
to it (as the admin, to create the replication user), so it runs inside the VPC, or connects
through a local tunnel (SSM port forwarding, SSH through a bastion) given as ``connect_host`` /
``connect_port``, or through its own SSH tunnel (``replicator:bastion``, see ``bastion.py``). When the port
does not answer, the error says which of these applies, in the
seconds a TCP connect takes rather than after a driver timeout with a generic message.
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg

from replicator.provision import bastion
from replicator.provision.adminsession import AccessError, AdminSession

REACH_TIMEOUT_S = 10.0
PRIVATE_DATABASES = "infra/README.md, section 'Private databases'"


def target(props: dict[str, Any]) -> tuple[str, int]:
    """Where to connect: the tunnel's local end when one is configured, else the database endpoint."""
    if props.get("connect_host"):
        return str(props["connect_host"]), int(props.get("connect_port") or props["port"])
    return str(props["host"]), int(props["port"])


def ensure_reachable(props: dict[str, Any]) -> None:
    """Refuse with the reason when nothing answers on the database port."""
    host, port = target(props)
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
        return
    except OSError as e:
        reason = str(e) or type(e).__name__
    if props.get("connect_host"):
        raise AccessError(
            f"the tunnel to the database does not answer at {host}:{port} ({reason}): start the port "
            f"forwarding (SSM or SSH) to {props['host']}:{int(props['port'])} first, then run pulumi again "
            f"({PRIVATE_DATABASES})"
        )
    if props.get("publicly_accessible") is False:
        raise AccessError(
            f"cannot reach {host}:{port} from this machine ({reason}). The database is not publicly "
            "accessible, so only machines inside its VPC (or connected to it by peering or VPN) reach it: "
            "run pulumi there, or through SSM port forwarding or an SSH tunnel via a bastion with "
            "replicator:adminAccess: {via: tunnel, host: 127.0.0.1, port: <local port>} "
            f"({PRIVATE_DATABASES})"
        )
    raise AccessError(
        f"cannot reach {host}:{port} from this machine ({reason}): check that its address is in "
        "replicator:allowlist (security group and network ACL) and that a route to the database exists"
    )


def _address(host: str, port: int) -> str:
    """``host`` as a numeric address (libpq's hostaddr takes no names)."""
    return str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])


def admin_connection(props: dict[str, Any], dbname: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit admin connection to ``dbname`` (default: the configured database)."""
    route = bastion.admin_route(props)  # replicator:bastion: the program's own SSH tunnel, hops tested
    if route is None:
        ensure_reachable(props)
        host, port = target(props)
        route = {"host": host, "port": port}
        if props.get("connect_host"):
            # Through a tunnel, libpq connects to its local end (hostaddr) but checks the server's
            # certificate against the endpoint's name (host): sslMode verify-full keeps verifying.
            route = {"host": str(props["host"]), "hostaddr": _address(host, port), "port": port}
    return psycopg.connect(
        **route,
        dbname=dbname or props["database"],
        user=props["admin_user"],
        password=props["admin_password"],
        sslmode=props.get("sslmode") or "prefer",
        connect_timeout=15,
        application_name="replicator-provision",
        autocommit=True,
    )


def admin_session(props: dict[str, Any], dbname: str | None = None) -> AdminSession:
    """An admin session on ``dbname`` (see ``admin_connection``) that reopens its connection when a step
    lost it. Connected now: a wrong address or password fails here, before any step."""
    session = AdminSession(lambda: admin_connection(props, dbname))
    session.conn  # noqa: B018  (opens it)
    return session
