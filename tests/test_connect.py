from pathlib import Path

import pytest

from replicator.config import load_connection
from replicator.connect import ConnectError, connect
from tests.conftest import Database


def test_connects_with_password(source_db: Database, tmp_path: Path) -> None:
    cfg = load_connection(source_db.write_config(tmp_path / "s.yaml"), "source").value
    with connect(cfg, "source") as conn:
        assert conn.execute("select current_database()").fetchone() == (source_db.name,)


def test_wrong_password_is_refused_without_retry_and_without_echoing_it(
    source_db: Database, tmp_path: Path
) -> None:
    path = source_db.write_config(tmp_path / "s.yaml", password="not-the-password", **{"max-retries": 5})
    cfg = load_connection(path, "source").value
    with pytest.raises(ConnectError) as err:
        connect(cfg, "source")
    text = str(err.value)
    assert "password authentication failed" in text
    assert "not-the-password" not in text
    assert f"127.0.0.1:{source_db.cluster.port}/{source_db.name}" in text
