"""Connections through a real sshd: sharing, identity, host keys, user keys, passphrases, failures by hop."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
import yaml

from replicator import ssh
from replicator.config import ConfigFile, ExtractorConfig, load_connection
from replicator.connect import ConnectError, connect
from replicator.errors import ConfigError
from replicator.job import Job
from replicator.localpg import free_port
from tests.conftest import Database
from tests.ssh.conftest import Sshd, keygen, public_line
from tests.support import run_cli, write


def _config(db: Database, path: Path, tunnel: dict[str, object], **extra: object) -> Path:
    return db.write_config(path, **{"ssh-tunnel": tunnel, **extra})


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_connections_share_one_tunnel_and_go_through_the_bastion(
    sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    cfg = load_connection(_config(source_db, tmp_path / "s.yaml", sshd.tunnel()), "source").value
    before = sshd.forwards_to(source_db.cluster.port)
    with (
        connect(cfg, "source") as a,
        connect(cfg, "source") as b,
        connect(cfg, "source", replication=True) as r,
    ):
        assert a.execute("SELECT current_database()").fetchone() == (source_db.name,)
        assert b.execute("SELECT 1").fetchone() == (1,)
        r.execute("IDENTIFY_SYSTEM")  # a replication connection, through the same tunnel
        tunnel = ssh.tunnel_for(cfg)
        # libpq dialled the local forward, not the database.
        assert (a.info.hostaddr, a.info.port) == ("127.0.0.1", tunnel.local_port)
        assert tunnel.local_port != source_db.cluster.port
    assert tunnel.connections_opened == 1  # one SSH connection ...
    assert tunnel.channels_opened == 3  # ... carrying every database connection
    assert sshd.forwards_to(source_db.cluster.port) - before == 3


def test_job_names_never_use_the_local_forward(sshd: Sshd, source_db: Database, tmp_path: Path) -> None:
    """Without the source's identity (pg_control_system() revoked), jobs are named as configured."""
    plain = load_connection(source_db.write_config(tmp_path / "plain.yaml"), "source")
    tunnelled = load_connection(_config(source_db, tmp_path / "s.yaml", sshd.tunnel()), "source")
    with connect(tunnelled.value, "source"):
        pass  # the forward exists now: nothing may have picked up its port
    jobs = [
        Job(source=s, destination=s, filter=None, extractor=ConfigFile(ExtractorConfig()))
        for s in (plain, tunnelled)
    ]
    assert (
        jobs[0].legacy_job_id
        == jobs[1].legacy_job_id
        == f"127.0.0.1:{source_db.cluster.port}/{source_db.name}"
    )
    assert jobs[1].job_id == jobs[1].legacy_job_id
    assert str(ssh.tunnel_for(tunnelled.value).local_port) not in jobs[1].job_id


def test_lost_ssh_connection_is_reopened_behind_the_same_port(
    sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    cfg = load_connection(_config(source_db, tmp_path / "s.yaml", sshd.tunnel()), "source").value
    conn = connect(cfg, "source")
    tunnel = ssh.tunnel_for(cfg)
    port = tunnel.local_port
    tunnel.drop_connection()  # as a network failure would
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")  # the forwarded socket was closed with the SSH connection
    with connect(cfg, "source") as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    assert tunnel.connections_opened == 2 and tunnel.local_port == port


# -- host keys -------------------------------------------------------------------------------------


def _snapshot(source: Path, dest: Database, tmp_path: Path) -> list[str | Path]:
    return [
        "run",
        "snapshot",
        "--no-progress",
        "--source",
        source,
        "--destination",
        dest.write_config(tmp_path / "d.yaml"),
    ]


def _untouched(dest: Database) -> None:
    assert dest.fetchone("SELECT count(*) FROM pg_namespace WHERE nspname = '_replicator'") == 0
    assert dest.fetchone("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own, to see that nothing is written to ~/.ssh."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


def test_mismatching_host_key_is_refused_and_nothing_is_written(
    sshd: Sshd,
    source_db: Database,
    dest_db: Database,
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    impostor = keygen(tmp_path / "impostor")
    known = write(
        tmp_path / "known_hosts", f"[127.0.0.1]:{sshd.port} {' '.join(public_line(impostor).split()[:2])}\n"
    )
    before = known.read_bytes()
    src = _config(source_db, tmp_path / "source.yaml", sshd.tunnel(**{"known-hosts-file": str(known)}))
    code, err = _run(capsys, *_snapshot(src, dest_db, tmp_path))
    assert code == 2
    assert f"source.yaml:{_line_of(src, 'known-hosts-file')}:" in err
    assert "host key does not match" in err and str(known) in err
    assert "ssh-ed25519 SHA256:" in err  # both fingerprints, to compare with the administrator's
    assert known.read_bytes() == before
    assert not (home / ".ssh").exists()
    _untouched(dest_db)


def test_unknown_host_is_refused_like_a_mismatching_one(
    sshd: Sshd,
    source_db: Database,
    dest_db: Database,
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    known = write(tmp_path / "known_hosts", "# nothing known yet\n")
    src = _config(source_db, tmp_path / "source.yaml", sshd.tunnel(**{"known-hosts-file": str(known)}))
    code, err = _run(capsys, *_snapshot(src, dest_db, tmp_path))
    assert code == 2
    assert "not in known_hosts" in err and "host key" in err and str(known) in err
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in err
    assert known.read_text() == "# nothing known yet\n"
    assert not (home / ".ssh").exists()
    _untouched(dest_db)


def test_missing_known_hosts_file_is_a_config_error(
    sshd: Sshd, source_db: Database, tmp_path: Path, home: Path
) -> None:
    src = _config(
        source_db,
        tmp_path / "source.yaml",
        {k: v for k, v in sshd.tunnel().items() if k != "known-hosts-file"},
    )
    with pytest.raises(ConfigError) as err:
        load_connection(src, "source")
    assert (
        f"source.yaml:{_line_of(src, 'ssh-tunnel')}: ssh-tunnel.known-hosts-file: file not found: "
        f"{home}/.ssh/known_hosts"
        in str(err.value)
    )


def test_strict_host_key_checking_false_accepts_an_unknown_host_and_warns_at_every_start(
    sshd: Sshd,
    source_db: Database,
    dest_db: Database,
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    tunnel = sshd.tunnel(**{"strict-host-key-checking": False})
    del tunnel["known-hosts-file"]  # ~/.ssh/known_hosts does not even exist
    src = _config(source_db, tmp_path / "source.yaml", tunnel)
    for _ in range(2):
        code, err = _run(capsys, *_snapshot(src, dest_db, tmp_path))
        assert code == 0
        assert (
            f"source.yaml:{_line_of(src, 'strict-host-key-checking')}: ssh-tunnel.strict-host-key-checking "
            "is false"
            in err
        )
        assert "accepting the unknown host key ssh-ed25519 SHA256:" in err
        ssh.close_all()
    assert not (home / ".ssh").exists()


def test_a_changed_host_key_is_refused_even_when_not_strict(
    sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor")
    known = write(
        tmp_path / "known_hosts", f"[127.0.0.1]:{sshd.port} {' '.join(public_line(impostor).split()[:2])}\n"
    )
    src = _config(
        source_db,
        tmp_path / "s.yaml",
        sshd.tunnel(**{"known-hosts-file": str(known), "strict-host-key-checking": False}),
    )
    with pytest.raises(ssh.TunnelRefused, match="host key does not match"):
        connect(load_connection(src, "source").value, "source")


def test_hashed_known_hosts_entries_are_understood(sshd: Sshd, source_db: Database, tmp_path: Path) -> None:
    import subprocess

    known = write(tmp_path / "known_hosts", sshd.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(known)], check=True, capture_output=True)
    assert "127.0.0.1" not in known.read_text()  # hashed
    src = _config(source_db, tmp_path / "s.yaml", sshd.tunnel(**{"known-hosts-file": str(known)}))
    with connect(load_connection(src, "source").value, "source") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- user keys -------------------------------------------------------------------------------------


def test_a_key_the_bastion_does_not_accept_is_refused_with_its_line(
    sshd: Sshd, source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = keygen(tmp_path / "stranger")
    src = _config(source_db, tmp_path / "source.yaml", sshd.tunnel(**{"private-key-file": str(stranger)}))
    code, err = _run(capsys, *_snapshot(src, dest_db, tmp_path))
    assert code == 2
    assert f"source.yaml:{_line_of(src, 'private-key-file')}:" in err
    assert "hop 1" in err and "the bastion refused our key" in err and f"user {sshd.username!r}" in err
    _untouched(dest_db)


def test_a_key_with_a_passphrase(
    sshd: Sshd, source_db: Database, dest_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    passphrase = "correct horse battery staple"
    key = keygen(tmp_path / "locked", passphrase=passphrase)
    sshd.authorized_keys.write_text(sshd.authorized_keys.read_text() + public_line(key) + "\n")
    source_db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10)")
    monkeypatch.setenv("BASTION_KEY_PASSPHRASE", passphrase)
    tunnel = sshd.tunnel(
        **{"private-key-file": str(key), "private-key-passphrase": "${BASTION_KEY_PASSPHRASE}"}
    )
    src = _config(source_db, tmp_path / "source.yaml", tunnel)
    code = run_cli("--log-level", "DEBUG", *_snapshot(src, dest_db, tmp_path))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert dest_db.fetchone("SELECT count(*) FROM t") == 10
    assert passphrase not in out.err + out.out

    # The same key without its passphrase, or with a wrong one: a config error on the passphrase's line.
    ssh.close_all()
    del tunnel["private-key-passphrase"]
    code, err = _run(
        capsys, *_snapshot(_config(source_db, tmp_path / "source.yaml", tunnel), dest_db, tmp_path)
    )
    assert code == 2 and "is encrypted: set private-key-passphrase" in err
    monkeypatch.setenv("BASTION_KEY_PASSPHRASE", "not-the-passphrase")
    tunnel["private-key-passphrase"] = "${BASTION_KEY_PASSPHRASE}"
    src = _config(source_db, tmp_path / "source.yaml", tunnel)
    code, err = _run(capsys, *_snapshot(src, dest_db, tmp_path))
    assert code == 2
    assert f"source.yaml:{_line_of(src, 'private-key-passphrase')}: ssh-tunnel.private-key-passphrase: " \
           f"private-key-passphrase does not decrypt private-key-file {key}" in err
    assert "not-the-passphrase" not in err


@pytest.mark.parametrize(
    ("kind", "fmt"), [("rsa", "PEM"), ("ecdsa", "PKCS8"), ("rsa", "PKCS8"), ("ecdsa", "RFC4716")]
)
def test_encrypted_keys_of_each_type_and_format(
    sshd: Sshd, source_db: Database, tmp_path: Path, kind: str, fmt: str
) -> None:
    key = keygen(tmp_path / "key", passphrase="pass-1234", kind=kind, fmt=fmt)
    sshd.authorized_keys.write_text(sshd.authorized_keys.read_text() + public_line(key) + "\n")
    tunnel = sshd.tunnel(**{"private-key-file": str(key), "private-key-passphrase": "pass-1234"})
    with connect(
        load_connection(_config(source_db, tmp_path / "s.yaml", tunnel), "source").value, "source"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not a key at all\n", "is not a private key in OpenSSH or PEM format"),
        (None, "that is a public key: give the private one"),
    ],
)
def test_a_bad_key_file_is_a_config_error(
    sshd: Sshd, source_db: Database, tmp_path: Path, content: str | None, expected: str
) -> None:
    bad = write(tmp_path / "bad_key", content if content is not None else public_line(sshd.user_key) + "\n")
    src = _config(source_db, tmp_path / "source.yaml", sshd.tunnel(**{"private-key-file": str(bad)}))
    with pytest.raises(ConfigError) as err:
        load_connection(src, "source")
    assert (
        f"source.yaml:{_line_of(src, 'private-key-file')}: ssh-tunnel.private-key-file: private-key-file "
        f"{bad}"
        in str(err.value)
    )
    assert expected in str(err.value)


def test_a_key_file_others_can_read_is_warned_about(
    sshd: Sshd, source_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = write(tmp_path / "shared_key", sshd.user_key.read_text())
    key.chmod(0o644)
    src = _config(source_db, tmp_path / "source.yaml", sshd.tunnel(**{"private-key-file": str(key)}))
    load_connection(src, "source")
    assert f"private-key-file {key} can be read by other users of this machine (mode 644)" in caplog.text
    caplog.clear()
    key.chmod(0o600)
    load_connection(src, "source")
    assert "can be read by other users" not in caplog.text


def test_private_key_from_the_environment(
    sshd: Sshd, source_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "BASTION_KEY", sshd.user_key.read_text().replace("\n", "\\n")
    )  # one line, as often stored
    tunnel = {k: v for k, v in sshd.tunnel().items() if k != "private-key-file"}
    src = _config(source_db, tmp_path / "s.yaml", {**tunnel, "private-key": "${BASTION_KEY}"})
    with connect(load_connection(src, "source").value, "source") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_secret_tunnel_values_are_not_echoed_in_config_errors(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tunnel = {k: v for k, v in sshd.tunnel().items() if k != "private-key-file"}
    tunnel["private-key"] = 987654321  # not text: pydantic's message would quote the value
    src = write(tmp_path / "source.yaml", yaml.safe_dump({
        "type": "POSTGRESQL", "host": "db.internal", "database": "d", "username": "u", "ssh-tunnel": tunnel}))
    code, err = _run(capsys, "status", "--destination", src)
    assert code == 2 and "ssh-tunnel.private-key: input should be a valid string" in err
    assert "987654321" not in err


# -- unreachable hops ------------------------------------------------------------------------------


def test_unreachable_bastion_is_retried_then_named_as_hop_1(
    source_db: Database, sshd: Sshd, tmp_path: Path
) -> None:
    dead = free_port()
    known = write(tmp_path / "known_hosts", sshd.known_hosts.read_text().replace(str(sshd.port), str(dead)))
    src = _config(source_db, tmp_path / "s.yaml", sshd.tunnel(port=dead, **{"known-hosts-file": str(known)}),
                  **{"max-retries": 2, "retry-wait-duration-ms": 100})
    with pytest.raises(ConnectError) as err:
        connect(load_connection(src, "source").value, "source")
    text = str(err.value)
    assert (
        f"ssh-tunnel hop 1 (this machine -> bastion 127.0.0.1:{dead}): cannot connect: Connection refused"
        in text
    )


def test_database_unreachable_from_the_bastion_is_named_as_hop_2(
    sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    dead = free_port()
    src = _config(
        source_db,
        tmp_path / "s.yaml",
        sshd.tunnel(),
        port=dead,
        **{"max-retries": 1, "retry-wait-duration-ms": 100},
    )
    with pytest.raises(ConnectError) as err:
        connect(load_connection(src, "source").value, "source")
    text = str(err.value)
    assert (
        f"ssh-tunnel hop 2 (bastion 127.0.0.1 -> database 127.0.0.1:{dead}): the bastion could not connect"
        in text
    )


def test_connect_timeout_applies_to_a_bastion_that_never_answers(
    source_db: Database, sshd: Sshd, tmp_path: Path
) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never sends an SSH banner
        port = silent.getsockname()[1]
        src = _config(source_db, tmp_path / "s.yaml",
                      sshd.tunnel(port=port, **{"connect-timeout-s": 1}), **{"max-retries": 0})
        started = time.monotonic()
        with pytest.raises(ConnectError, match="hop 1"):
            connect(load_connection(src, "source").value, "source")
        assert time.monotonic() - started < 10


def test_keepalive_and_timeout_defaults(sshd: Sshd, source_db: Database, tmp_path: Path) -> None:
    settings = load_connection(
        _config(source_db, tmp_path / "s.yaml", sshd.tunnel()), "source"
    ).value.ssh_tunnel
    assert settings is not None
    assert (settings.keepalive_interval_s, settings.connect_timeout_s) == (15, 10)
    assert settings.strict_host_key_checking is True


def _line_of(path: Path, key: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip().startswith(f"{key}:"):
            return number
    raise AssertionError(f"{key} not in {path}")


class _FreezableProxy:
    """A TCP relay to ``port`` that can stop relaying while keeping every connection open: a bastion
    (or the network to it) that went silent without closing anything."""

    def __init__(self, port: int):
        import socket
        import threading

        self.target = port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, src: object, dst: object) -> None:
        try:
            while data := src.recv(65536):  # type: ignore[attr-defined]
                while self.frozen.is_set():
                    time.sleep(0.05)
                dst.sendall(data)  # type: ignore[attr-defined]
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_a_bastion_that_goes_silent_is_dropped_after_three_keepalives(
    sshd: Sshd, source_db: Database, tmp_path: Path
) -> None:
    proxy = _FreezableProxy(sshd.port)
    try:
        known = write(
            tmp_path / "known_hosts", sshd.known_hosts.read_text().replace(str(sshd.port), str(proxy.port))
        )
        tunnel_cfg = sshd.tunnel(
            port=proxy.port, **{"known-hosts-file": str(known), "keepalive-interval-s": 1}
        )
        cfg = load_connection(_config(source_db, tmp_path / "s.yaml", tunnel_cfg), "source").value
        conn = connect(cfg, "source")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.frozen.set()  # nothing arrives any more, nothing is closed
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # would wait for ever on a silent connection
        assert time.monotonic() - started < 10
        proxy.frozen.clear()
        with connect(cfg, "source") as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
        assert ssh.tunnel_for(cfg).connections_opened == 2
    finally:
        proxy.close()
