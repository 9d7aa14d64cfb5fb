"""``ssl-mode: verify-full`` through a local forward still verifies the database's real host name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from replicator import ssh
from replicator.config import load_connection
from replicator.connect import ConnectError, connect
from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, LocalCluster
from tests.ssh.conftest import Sshd
from tests.test_connect_ssl import Pki, _config, _ssl_in_use, ssl_cluster


@pytest.fixture(scope="module")
def ssl_setup(
    cluster_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalCluster, Pki]]:
    """The SSL server of test_connect_ssl, a copy of this module's own (the two may share a worker)."""
    yield from ssl_cluster(cluster_root, tmp_path_factory, "ssl-tunnel")


def test_verify_full_through_the_tunnel_checks_the_endpoint_name(
    ssl_setup: tuple[LocalCluster, Pki], sshd: Sshd, tmp_path: Path
) -> None:
    cluster, pki = ssl_setup
    # The certificate names only "localhost"; the forward is 127.0.0.1:<ephemeral>.
    path = _config(
        tmp_path,
        cluster,
        host="localhost",
        ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)},
        **{"ssh-tunnel": sshd.tunnel()},
    )
    cfg = load_connection(path, "source").value
    with connect(cfg, "source") as conn:
        assert _ssl_in_use(conn)
        assert (conn.info.host, conn.info.hostaddr) == ("localhost", "127.0.0.1")
        assert conn.info.port == ssh.tunnel_for(cfg).local_port
    assert any(line.endswith(f"target localhost port {cluster.port}") for line in sshd.forwards())

    # What a forward that names 127.0.0.1 as the host would get: the certificate check fails.
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(
            host="127.0.0.1",
            port=ssh.tunnel_for(cfg).local_port,
            dbname="postgres",
            user=SUPERUSER,
            password=SUPERUSER_PASSWORD,
            sslmode="verify-full",
            sslrootcert=str(pki.ca),
        ).close()


def test_verify_full_through_the_tunnel_still_refuses_a_wrong_name(
    ssl_setup: tuple[LocalCluster, Pki], sshd: Sshd, tmp_path: Path
) -> None:
    cluster, pki = ssl_setup
    path = _config(
        tmp_path,
        cluster,
        host="127.0.0.1",
        ssl={"ssl-mode": "verify-full", "root-cert": str(pki.ca)},
        **{"ssh-tunnel": sshd.tunnel()},
    )
    with pytest.raises(ConnectError, match='does not match host name "127.0.0.1"'):
        connect(load_connection(path, "source").value, "source")
