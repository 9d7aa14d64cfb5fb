"""Broken and healthy sources for `replicator check`: real PostgreSQL servers, a moto AWS endpoint."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from replicator.check import Report, check_all
from replicator.config import load_connection, load_extractor, load_filter
from replicator.localpg import LocalCluster, start_cluster
from replicator.provision import accessspec, pgaccess
from tests.conftest import AwsEndpoint, Database

_n = itertools.count()
MOTO_ACCOUNT = "123456789012"


@pytest.fixture(scope="session")
def replica_cluster(cluster_root: Path) -> Iterator[LocalCluster]:
    """A server with wal_level=replica: logical decoding impossible until it is changed and restarted."""
    cluster = start_cluster(cluster_root / "replica", settings={"wal_level": "replica"})
    try:
        yield cluster
    finally:
        cluster.destroy()


@dataclass
class Source:
    """A source database with a replication user made the way the Pulumi program makes it."""

    db: Database
    user: str
    password: str
    tmp: Path

    def config(self, **extra: Any) -> dict[str, Any]:
        cfg = self.db.config(
            username=self.user,
            password=self.password,
            **{"replication-slots": {f"slot_{self.user}": ["pgoutput"]}, "publication": f"pub_{self.user}"},
        )
        cfg.update(extra)
        return {k: v for k, v in cfg.items() if v is not None}

    def write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def check(
        self, filter_: dict[str, Any] | None = None, extractor: dict[str, Any] | None = None,
        destination: dict[str, Any] | None = None, client_ip: str | None = None, **extra: Any,
    ) -> Report:
        return check_all(
            load_connection(self.write("source.yaml", self.config(**extra)), "source"),
            load_connection(self.write("destination.yaml", destination), "destination")
            if destination
            else None,
            load_filter(self.write("filter.yaml", filter_)) if filter_ else None,
            load_extractor(self.write("extractor.yaml", extractor) if extractor else None),
            client_ip,
        )

    def apply_sql(self, fix: str) -> None:
        """Run a fix's SQL as the superuser, exactly as printed (comments and all)."""
        for line in fix.splitlines():
            if line.strip() and not line.startswith(("add ", "or ", "then ")):
                self.db.execute(line)


def make_source(
    db: Database, tmp: Path, right: accessspec.ReplicationRight = "attribute", **spec: Any
) -> Source:
    user = f"cdc_{os.getpid()}_{next(_n)}"
    password = "check-password-123"
    with db.connect() as conn:
        pgaccess.ensure_access(
            conn, accessspec.AccessSpec(user=user, replication_right=right, **spec), password
        )
    return Source(db, user, password, tmp)


def good_tables(db: Database, publication: str) -> None:
    db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    db.execute("CREATE TABLE public.orders (id int PRIMARY KEY, item int, qty int)")
    db.execute(f'CREATE PUBLICATION "{publication}" FOR TABLE public.items, public.orders')


@pytest.fixture
def source(source_db: Database, tmp_path: Path) -> Iterator[Source]:
    """A healthy source: wal_level=logical, a user with every right, keyed tables, a full publication."""
    src = make_source(source_db, tmp_path)
    good_tables(source_db, f"pub_{src.user}")
    source_db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{src.user}"')
    yield src
    drop_slots(source_db)


def drop_slots(db: Database) -> None:
    db.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = "
        "current_database()"
    )


def run_aws_fix(fix: str, aws: AwsEndpoint) -> None:
    """Run a fix's AWS CLI commands against the moto endpoint, as a user would paste them."""
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed, so its printed fix cannot be run here")
    env = {**os.environ, "AWS_ENDPOINT_URL": aws.url, "AWS_PAGER": ""}
    for line in fix.splitlines():
        if line.startswith("aws "):
            subprocess.run(shlex.split(line), env=env, check=True, capture_output=True, text=True)


# -- states moto cannot produce, set in its in-process backend (ThreadedMotoServer shares it) -------


@dataclass
class MotoRds:
    """Reach into moto's RDS backend for what its API cannot express (it always reports in-sync)."""

    region: str

    @property
    def backend(self) -> Any:
        from moto.rds.models import rds_backends

        return rds_backends[MOTO_ACCOUNT][self.region]

    def set_apply_status(self, instance: str, status: str) -> None:
        self.backend.databases[instance]._replicator_apply_status = status


@pytest.fixture
def moto_rds(aws: AwsEndpoint, monkeypatch: pytest.MonkeyPatch) -> MotoRds:
    """Lets a test put an instance into pending-reboot; a reboot (as on AWS) brings it back in-sync."""
    from moto.rds.models import DBCluster, DBInstance, RDSBackend

    status_list = DBInstance.db_parameter_group_status_list.fget  # type: ignore[attr-defined]
    members = DBCluster.db_cluster_members.fget  # type: ignore[attr-defined]
    reboot = RDSBackend.reboot_db_instance

    def instance_status(self: Any) -> Any:
        groups = status_list(self)
        for g in groups:
            g.ParameterApplyStatus = getattr(self, "_replicator_apply_status", "in-sync")
        return groups

    def cluster_members(self: Any) -> Any:
        out = members(self)
        for m in out:
            db = self.backend.databases.get(m["DBInstanceIdentifier"])
            m["DBClusterParameterGroupStatus"] = getattr(db, "_replicator_apply_status", "in-sync")
        return out

    def rebooted(self: Any, db_instance_identifier: str, *args: Any, **kw: Any) -> Any:
        db = self.databases.get(db_instance_identifier)
        if db is not None:
            db._replicator_apply_status = "in-sync"
        return reboot(self, db_instance_identifier, *args, **kw)

    monkeypatch.setattr(DBInstance, "db_parameter_group_status_list", property(instance_status))
    monkeypatch.setattr(DBCluster, "db_cluster_members", property(cluster_members))
    monkeypatch.setattr(RDSBackend, "reboot_db_instance", rebooted)
    return MotoRds(aws.region)


def commands(fix: str | None) -> list[str]:
    return [line for line in (fix or "").splitlines() if line.startswith("aws ")]
