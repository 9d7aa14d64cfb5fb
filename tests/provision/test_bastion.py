"""The providers' admin connection through the program's own SSH tunnel (``replicator:bastion``), against
a real sshd."""

from __future__ import annotations

import os
from typing import Any

import pytest

from replicator.localpg import free_port
from replicator.provision import adminconn
from replicator.provision.adminsession import AccessError
from replicator.provision.dynamic import ReplicationUserProvider
from tests.conftest import Database
from tests.provision.test_adminconn import admin
from tests.ssh.conftest import _fresh_tunnels, sshd  # noqa: F401  (fixtures)
from tests.ssh.sshd import Sshd


def _bastion(server: Sshd, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1", "port": float(server.port), "username": server.username,
        "private-key-file": str(server.user_key), "known-hosts": server.known_hosts.read_text(), **extra,
    }


def test_the_user_is_created_through_the_bastion(sshd: Sshd, source_db: Database) -> None:  # noqa: F811
    props = {
        **admin(port=source_db.cluster.port, publicly_accessible=False, bastion=_bastion(sshd)),
        "database": source_db.name,
        "user": f"via_bastion_{os.getpid()}",
        "replication_right": "attribute",
        "schemas": ["public"],
        "table_owners": [],
        "password_version": 1.0,
    }
    before = sshd.forwards_to(source_db.cluster.port)
    provider = ReplicationUserProvider()
    created = provider.create(props)
    assert source_db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 1
    assert sshd.forwards_to(source_db.cluster.port) > before  # it went through the bastion
    # The resource still names the database as configured, never the forward.
    assert created.id == f"127.0.0.1:{source_db.cluster.port}/{source_db.name}/{props['user']}"
    provider.delete(created.id, created.outs)  # type: ignore[arg-type]
    assert source_db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 0


def test_a_database_the_bastion_cannot_reach_is_named_as_hop_2(sshd: Sshd) -> None:  # noqa: F811
    dead = free_port()
    with pytest.raises(
        AccessError, match=rf"replicator:bastion: ssh-tunnel hop 2 .*127.0.0.1:{dead}.*could not connect"
    ):
        adminconn.admin_connection(admin(port=dead, bastion=_bastion(sshd)))


def test_a_bastion_with_another_host_key_is_refused(sshd: Sshd, tmp_path: Any) -> None:  # noqa: F811
    from tests.ssh.sshd import keygen, public_line

    impostor = " ".join(public_line(keygen(tmp_path / "impostor")).split()[:2])
    with pytest.raises(AccessError, match="host key does not match"):
        adminconn.admin_connection(
            admin(bastion=_bastion(sshd, **{"known-hosts": f"[127.0.0.1]:{sshd.port} {impostor}"}))
        )
