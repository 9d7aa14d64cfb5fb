import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from replicator.config import load_connection
from replicator.connect import ConnectError, connect
from tests.conftest import Database
from tests.support import PortForward, run_cli


def test_connects_with_password(source_db: Database, tmp_path: Path) -> None:
    cfg = load_connection(source_db.write_config(tmp_path / "s.yaml"), "source").value
    with connect(cfg, "source") as conn:
        assert conn.execute("select current_database()").fetchone() == (source_db.name,)


def test_wrong_password_is_refused_without_retry_and_without_echoing_it(source_db: Database, tmp_path: Path) -> None:
    path = source_db.write_config(tmp_path / "s.yaml", password="not-the-password", **{"max-retries": 5})
    cfg = load_connection(path, "source").value
    with pytest.raises(ConnectError) as err:
        connect(cfg, "source")
    text = str(err.value)
    assert "password authentication failed" in text
    assert "not-the-password" not in text
    assert f"127.0.0.1:{source_db.cluster.port}/{source_db.name}" in text


@pytest.fixture
def counted(source_db: Database) -> Iterator[PortForward]:
    """The source server behind a forwarder that counts connection attempts."""
    fwd = PortForward(source_db.cluster.port)
    yield fwd
    fwd.close()


@pytest.fixture
def role(source_db: Database) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    source_db.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'right-password'")
    yield name
    source_db.execute(f"DROP ROLE {name}")


def _log_count(db: Database, text: str) -> int:
    return db.cluster.logfile.read_text().count(text)


@pytest.mark.parametrize(
    "case, overrides, cause",
    [
        ("wrong password", {"password": "wrong-password"}, "wrong username or password"),
        ("unknown database", {"database": "no_such_db_{u}"}, "unknown database or user"),
        ("unknown user", {"username": "no_such_user_{u}"}, "wrong username or password"),
        ("ssl required", {"ssl": {"ssl-mode": "require"}}, "SSL is required by ssl-mode but the server has SSL off"),
    ],
)
def test_permanent_failures_are_tried_once_and_say_why(
    case: str, overrides: dict[str, object], cause: str, source_db: Database, role: str, counted: PortForward, tmp_path: Path
) -> None:
    u = uuid.uuid4().hex[:8]
    values = {k: v.format(u=u) if isinstance(v, str) else v for k, v in overrides.items()}
    config = {"port": counted.port, "username": role, "password": "right-password", "max-retries": 5,
              "retry-wait-duration-ms": 100, **values}
    cfg = load_connection(source_db.write_config(tmp_path / "s.yaml", **config), "source").value
    with pytest.raises(ConnectError) as err:
        connect(cfg, "source")
    assert counted.connections == 1, f"{case}: {counted.connections} attempts"
    assert err.value.permanent
    assert f"{cause}; not retried" in str(err.value)
    if case == "wrong password":
        assert _log_count(source_db, f'password authentication failed for user "{role}"') == 1
    if case == "ssl required":
        assert "turn ssl on at the server, or set ssl.ssl-mode: prefer" in str(err.value)
        assert "root-cert" not in str(err.value)  # not a certificate problem


def test_a_refused_connection_is_still_retried(source_db: Database, tmp_path: Path) -> None:
    from replicator.localpg import free_port

    cfg = load_connection(source_db.write_config(tmp_path / "s.yaml", port=free_port(), **{"max-retries": 2,
                          "retry-wait-duration-ms": 50}), "source").value
    attempts = []
    real = psycopg.connect

    def counting(*a: object, **kw: object) -> psycopg.Connection[object]:
        attempts.append(1)
        return real(*a, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(psycopg, "connect", counting)
        with pytest.raises(ConnectError) as err:
            connect(cfg, "source")
    assert len(attempts) == 3 and not err.value.permanent


def test_the_cli_fails_at_once_on_a_wrong_password(
    source_db: Database, dest_db: Database, role: str, counted: PortForward, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = source_db.write_config(tmp_path / "s.yaml", port=counted.port, username=role, password="wrong-password",
                                    **{"max-retries": 10, "retry-wait-duration-ms": 100})
    code = run_cli("run", "snapshot", "--no-progress", "--source", source,
                   "--destination", dest_db.write_config(tmp_path / "d.yaml"))
    assert code == 1 and counted.connections == 1
    assert "wrong username or password; not retried" in capsys.readouterr().err
    assert _log_count(source_db, f'password authentication failed for user "{role}"') == 1
