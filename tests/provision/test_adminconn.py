"""The provisioning program's admin connection: through a tunnel when asked, and why it fails when it does."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, free_port
from replicator.provision import adminconn
from replicator.provision.adminsession import AccessError
from replicator.provision.dynamic import ReplicationUserProvider
from tests.conftest import Database


def admin(host: str = "127.0.0.1", port: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "host": host,
        "port": float(port or free_port()),
        "database": "postgres",
        "admin_user": SUPERUSER,
        "admin_password": SUPERUSER_PASSWORD,
        "sslmode": "prefer",
        "connect_host": None,
        "connect_port": None,
        "publicly_accessible": None,
        **extra,
    }


def test_a_private_database_out_of_reach_says_how_to_get_in() -> None:
    started = time.monotonic()
    with pytest.raises(AccessError) as e:
        adminconn.admin_connection(admin(publicly_accessible=False))
    message = str(e.value)
    assert "not publicly accessible" in message and "inside its VPC" in message
    assert "SSM port forwarding or an SSH tunnel via a bastion" in message and "adminAccess" in message
    assert "infra/README.md" in message
    assert time.monotonic() - started < adminconn.REACH_TIMEOUT_S  # a refused port answers at once


def test_a_tunnel_that_is_not_up_is_named() -> None:
    port = free_port()
    props = admin(
        host="orders.abc.eu-west-1.rds.amazonaws.com",
        port=5432,
        connect_host="127.0.0.1",
        connect_port=float(port),
        publicly_accessible=False,
    )
    with pytest.raises(
        AccessError,
        match=rf"the tunnel to the database does not answer at 127.0.0.1:{port}.*"
        r"start the port forwarding.*orders.abc.eu-west-1.rds.amazonaws.com:5432",
    ):
        adminconn.admin_connection(props)


def test_a_public_database_out_of_reach_points_at_the_allowlist() -> None:
    with pytest.raises(AccessError, match="replicator:allowlist"):
        adminconn.admin_connection(admin(publicly_accessible=True))


def test_the_user_is_created_through_the_tunnel(source_db: Database) -> None:
    # The endpoint name resolves only inside the VPC; the program connects to the tunnel's local end and
    # the resource (and the secret) still name the endpoint.
    props = {
        **admin(
            host="orders.abcdefghij.eu-west-1.rds.amazonaws.com",
            port=5432,
            connect_host="127.0.0.1",
            connect_port=float(source_db.cluster.port),
            publicly_accessible=False,
        ),
        "database": source_db.name,
        "user": f"tunnelled_{os.getpid()}",
        "replication_right": "attribute",
        "schemas": ["public"],
        "table_owners": [],
        "password_version": 1.0,
    }
    provider = ReplicationUserProvider()
    created = provider.create(props)
    assert (
        created.id == f"orders.abcdefghij.eu-west-1.rds.amazonaws.com:5432/{source_db.name}/{props['user']}"
    )
    assert source_db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 1
    # Another local port next time is not another user: no replacement, the password is kept.
    moved = {**created.outs, "connect_port": float(source_db.cluster.port)}  # type: ignore[dict-item]
    diff = provider.diff(created.id, {**created.outs, "connect_port": 15432.0}, moved)  # type: ignore[dict-item]
    assert diff.replaces == []
    provider.delete(created.id, created.outs)  # type: ignore[arg-type]
    assert source_db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 0


@pytest.fixture(scope="module")
def ssl_server(cluster_root: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.test_connect_ssl import ssl_cluster

    yield from ssl_cluster(cluster_root, tmp_path_factory, "adminconn-ssl")


@pytest.mark.parametrize("local_end", ["127.0.0.1", "localhost"])
def test_verify_full_through_a_tunnel_checks_the_endpoint_name(
    ssl_server: Any, monkeypatch: pytest.MonkeyPatch, local_end: str
) -> None:
    """adminAccess {via: tunnel}: the certificate names the endpoint, not the tunnel's local end, so
    sslMode verify-full must check it against the endpoint's name (it used to check 127.0.0.1 and
    fail), and still refuse a certificate that does not name the endpoint."""
    cluster, pki = ssl_server
    monkeypatch.setenv("PGSSLROOTCERT", str(pki.ca))
    tunnel = {"connect_host": local_end, "connect_port": float(cluster.port), "publicly_accessible": False}
    # The test server's certificate names "localhost": here, the endpoint.
    with adminconn.admin_connection(admin(host="localhost", port=5432, sslmode="verify-full", **tunnel)) as c:
        row = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    endpoint = "orders.abcdefghij.eu-west-1.rds.amazonaws.com"
    with pytest.raises(Exception, match="does not match host name"):
        adminconn.admin_connection(admin(host=endpoint, port=5432, sslmode="verify-full", **tunnel))
