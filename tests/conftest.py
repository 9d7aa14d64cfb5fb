"""Fixtures: real throwaway PostgreSQL clusters (never mocks) and per-test databases."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

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
