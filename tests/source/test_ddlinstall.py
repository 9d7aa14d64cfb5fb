"""``replicator install-ddl-capture``: the DDL capture's admin path, against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicator.source import ddlcapture
from tests.conftest import Database
from tests.support import run_cli


def installed(db: Database) -> ddlcapture.CaptureState:
    with db.connect() as conn:
        return ddlcapture.state(conn)


def test_install_then_uninstall_as_a_superuser(
    source_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = source_db.write_config(tmp_path / "admin.yaml")
    assert run_cli("install-ddl-capture", "--source", cfg) == 0
    assert "DDL capture installed in" in capsys.readouterr().out
    assert installed(source_db).installed
    assert run_cli("install-ddl-capture", "--source", cfg) == 0  # again: an upgrade in place
    assert run_cli("install-ddl-capture", "--source", cfg, "--uninstall") == 0
    state = installed(source_db)
    assert not state.installed and state.version is None
    assert source_db.fetchone("SELECT count(*) FROM pg_event_trigger") == 0


def test_a_user_that_may_not_create_event_triggers_is_told_what_to_connect_as(
    source_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = f"plain_{os.getpid()}"
    source_db.execute(f"CREATE ROLE {user} LOGIN PASSWORD 'plain-pw-1'")
    try:
        cfg = source_db.write_config(tmp_path / "plain.yaml", username=user, password="plain-pw-1")
        assert run_cli("install-ddl-capture", "--source", cfg) == 1
        err = capsys.readouterr().err
        assert f"{user} may not create event triggers" in err and "rds_superuser" in err, err
        assert not installed(source_db).installed
        assert source_db.fetchone("SELECT to_regnamespace('_replicator_ddl')") is None  # nothing written
    finally:
        source_db.execute(f"DROP ROLE {user}")
