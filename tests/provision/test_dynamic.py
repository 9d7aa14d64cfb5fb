"""The dynamic providers as Pulumi's provider host would drive them: real PostgreSQL, moto for RDS."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from pulumi.dynamic.dynamic import serialize_provider

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD
from replicator.provision.dynamic import ReplicationUserProvider
from tests.conftest import Database

_n = itertools.count()
REPO = Path(__file__).resolve().parents[2]


def user_props(db: Database, **extra: Any) -> dict[str, Any]:
    # As the engine hands them over: numbers arrive as floats.
    return {
        "host": "127.0.0.1",
        "port": float(db.cluster.port),
        "database": db.name,
        "admin_user": SUPERUSER,
        "admin_password": SUPERUSER_PASSWORD,
        "sslmode": "prefer",
        "user": f"prov_{os.getpid()}_{next(_n)}",
        "replication_right": "attribute",
        "schemas": ["public"],
        "table_owners": [],
        "password_version": 1.0,
        **extra,
    }


def login(db: Database, user: str, password: str) -> bool:
    try:
        psycopg.connect(db.cluster.conninfo(db.name, user=user, password=password)).close()
        return True
    except psycopg.OperationalError:
        return False


def test_create_update_rotate_delete(source_db: Database) -> None:
    provider = ReplicationUserProvider()
    props = user_props(source_db)
    assert provider.check({}, props).failures == []
    created = provider.create(props)
    assert created.id == f"127.0.0.1:{source_db.cluster.port}/{source_db.name}/{props['user']}"
    password = created.outs["password"]  # type: ignore[index]
    assert len(password) >= 32 and login(source_db, props["user"], password)

    olds = {**created.outs}  # type: ignore[dict-item]
    news = {**props, "schemas": ["public"], "table_owners": [SUPERUSER]}
    diff = provider.diff(created.id, olds, news)
    assert diff.changes and not diff.replaces
    updated = provider.update(created.id, olds, news)
    assert updated.outs["password"] == password  # type: ignore[index]  # kept unless asked to rotate

    rotated = provider.update(created.id, updated.outs, {**news, "password_version": 2.0})  # type: ignore[arg-type]
    new_password = rotated.outs["password"]  # type: ignore[index]
    assert new_password != password
    assert login(source_db, props["user"], new_password) and not login(source_db, props["user"], password)

    assert provider.read(created.id, rotated.outs).id == created.id  # type: ignore[arg-type]
    provider.delete(created.id, rotated.outs)  # type: ignore[arg-type]
    assert provider.read(created.id, rotated.outs).id is None  # type: ignore[arg-type]
    provider.delete(created.id, rotated.outs)  # type: ignore[arg-type]  # a second delete is harmless


def test_identity_changes_replace_the_user(source_db: Database) -> None:
    provider = ReplicationUserProvider()
    olds = user_props(source_db)
    diff = provider.diff("x", olds, {**olds, "user": "someone_else"})
    assert diff.replaces == ["user"] and diff.delete_before_replace
    assert not provider.diff("x", olds, dict(olds)).changes


def test_check_refuses_bad_input(source_db: Database) -> None:
    failures = ReplicationUserProvider().check({}, user_props(source_db, user="", replication_right="root")).failures
    assert {f.property for f in failures} == {"user", "replication_right"}


def test_provider_unpickles_where_only_installed_modules_exist(tmp_path: Path) -> None:
    # Pulumi's provider host loads the provider in a fresh process whose cwd is not the repository and
    # where infra/ is not importable; the pickled provider must still resolve.
    blob = serialize_provider(ReplicationUserProvider())
    (tmp_path / "provider.b64").write_text(blob)
    code = (
        "import base64, dill, sys; "
        "p = dill.loads(base64.b64decode(open(sys.argv[1]).read())); "
        "print(type(p).__module__, type(p).__name__)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # stands in for `pip install -e .`; infra/ is not on it
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "provider.b64")],
        cwd="/", env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.split() == ["replicator.provision.dynamic", "ReplicationUserProvider"]
