"""Fixtures: real throwaway PostgreSQL clusters (never mocks) and per-test databases."""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from replicator.config.connection import ConnectionConfig
from replicator.destinations.postgres import PostgresDestination, PostgresSession
from replicator.localpg import LocalCluster, start_cluster

_counter = itertools.count()


@dataclass
class Database:
    """One database on a test cluster, with helpers to run SQL and write a connection config."""

    cluster: LocalCluster
    name: str

    @property
    def conninfo(self) -> str:
        return self.cluster.conninfo(self.name)

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True, **kw)

    def execute(self, query: str, params: Any = None) -> None:
        with self.connect() as conn:
            conn.execute(query, params)

    def fetchall(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()

    def fetchone(self, query: str, params: Any = None) -> Any:
        rows = self.fetchall(query, params)
        return rows[0][0] if rows else None

    def config(self, **extra: Any) -> dict[str, Any]:
        return self.cluster.connection_config(self.name, **extra)

    def write_config(self, path: Path, **extra: Any) -> Path:
        path.write_text(yaml.safe_dump(self.config(**extra), sort_keys=False))
        return path

    def destination(self, **extra: Any) -> PostgresDestination:
        """This database as a replication destination (``extra``: connection config keys)."""
        return PostgresDestination(ConnectionConfig.model_validate(self.config(**extra)))

    def session(self, **extra: Any) -> PostgresSession:
        """A destination session on this database; its state store ready for use."""
        session = self.destination(**extra).open_session("replicator-tests")
        session.state.ensure()
        return session


@pytest.fixture(scope="session")
def cluster_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is mode 0700 for root, and the servers run as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="replicator-tests-"))
    os.chmod(root, 0o755)
    yield root


def _cluster(root: Path, name: str, **kw: Any) -> Iterator[LocalCluster]:
    cluster = start_cluster(root / name, **kw)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def source_cluster(cluster_root: Path) -> Iterator[LocalCluster]:
    yield from _cluster(cluster_root, "source")


@pytest.fixture(scope="session")
def dest_cluster(cluster_root: Path) -> Iterator[LocalCluster]:
    yield from _cluster(cluster_root, "dest")


def _fresh_db(cluster: LocalCluster, prefix: str) -> Database:
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    cluster.create_database(name)
    return Database(cluster, name)


@pytest.fixture
def source_db(source_cluster: LocalCluster) -> Database:
    """A fresh, empty source database (on the shared source cluster)."""
    return _fresh_db(source_cluster, "src")


@pytest.fixture
def dest_db(dest_cluster: LocalCluster) -> Database:
    """A fresh, empty destination database (on the shared destination cluster)."""
    return _fresh_db(dest_cluster, "dst")


# -- AWS: a moto server on a loopback port (never the real AWS) -----------------------------------


@dataclass
class AwsEndpoint:
    """The moto server every boto3 client in the test talks to (via AWS_ENDPOINT_URL)."""

    url: str
    region: str = "eu-west-1"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.url)

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One moto server (all services) for the session; it shares its backends with this process."""
    from moto.server import ThreadedMotoServer

    from replicator.localpg import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> AwsEndpoint:
    """A clean moto endpoint, with the environment pointing boto3 at it and dummy credentials."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    endpoint = AwsEndpoint(moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", endpoint.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    endpoint.reset()
    return endpoint


@pytest.fixture
def rds_replication(source_cluster: LocalCluster) -> Iterator[str]:
    """Stands in for RDS's built-in role (NOLOGIN, REPLICATION) on the shared source cluster.

    Roles are cluster-wide, so it is dropped afterwards: other tests must see a plain self-hosted server.
    """
    with psycopg.connect(source_cluster.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE ROLE rds_replication NOLOGIN REPLICATION")
    yield "rds_replication"
    with psycopg.connect(source_cluster.conninfo(), autocommit=True) as conn:
        conn.execute("DROP ROLE rds_replication")
