"""Destination = source is refused by identity, not spelling; checkpoints follow the source's identity.

Every test here reproduces issue 9 item 1 (and the "lock bypassed by spelling" finding) on real
servers: on the code before replicator/identity.py existed, the refused runs emptied the source.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.config import load_connection, load_extractor
from replicator.job import Job
from replicator.localpg import SUPERUSER_PASSWORD, LocalCluster, _as_postgres, free_port, start_cluster
from replicator.snapshot.runner import run_snapshot
from tests.conftest import Database
from tests.support import PortForward, checksum, run_cli, spawn_cli, write

ROWS = "CREATE TABLE victim (id integer PRIMARY KEY, v text); INSERT INTO victim SELECT g, 'v' || g FROM generate_series(1, 500) g"
NO_HEARTBEAT = "realtime:\n  heartbeat:\n    enable: false\n"


@pytest.fixture
def forward(source_db: Database) -> Iterator[PortForward]:
    fwd = PortForward(source_db.cluster.port)
    yield fwd
    fwd.close()


def _same_db_configs(source_db: Database, tmp_path: Path, dest_host: str, dest_port: int | None = None, **src_extra: object) -> tuple[Path, Path]:
    source = source_db.write_config(tmp_path / "source.yaml", **src_extra)
    dest_extra: dict[str, object] = {"host": dest_host}
    if dest_port is not None:
        dest_extra["port"] = dest_port
    destination = source_db.write_config(tmp_path / "destination.yaml", **dest_extra)
    return source, destination


def _assert_source_untouched(source_db: Database, slot: str | None = None) -> None:
    assert source_db.fetchone("SELECT count(*) FROM victim") == 500
    assert source_db.fetchone("SELECT to_regnamespace('_replicator')") is None
    if slot:
        assert source_db.fetchone("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == 0
        assert source_db.fetchone("SELECT count(*) FROM pg_publication") == 0


@pytest.mark.parametrize("mode", ["snapshot", "delta-snapshot", "realtime", "full"])
def test_same_database_spelt_localhost_is_refused_in_every_mode(
    mode: str, source_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(ROWS)
    slot = f"slot_{source_db.name}"
    source, destination = _same_db_configs(
        source_db, tmp_path, "localhost", **{"replication-slots": {slot: ["pgoutput"]}, "publication": f"{slot}_pub"}
    )
    extractor = write(tmp_path / "extractor.yaml", NO_HEARTBEAT)
    code = run_cli("run", mode, "--no-progress", "--once", "--fresh", "--source", source, "--destination", destination,
                   "--extractor", extractor) if mode != "snapshot" else run_cli(
        "run", mode, "--no-progress", "--fresh", "--source", source, "--destination", destination)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "are the same database" in err and f"{source}:" in err and f"{destination}:" in err
    _assert_source_untouched(source_db, slot)


def test_same_database_through_another_port_or_a_socket_is_refused(
    source_db: Database, tmp_path: Path, forward: PortForward, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(ROWS)
    for host, port in (("127.0.0.1", forward.port), (str(source_db.cluster.socket_dir), None)):
        source, destination = _same_db_configs(source_db, tmp_path, host, port)
        assert run_cli("run", "snapshot", "--no-progress", "--source", source, "--destination", destination) == 2
        assert "are the same database" in capsys.readouterr().err
        _assert_source_untouched(source_db)


def test_check_refuses_the_same_database(source_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source_db.execute(ROWS)
    source, destination = _same_db_configs(source_db, tmp_path, "localhost")
    assert run_cli("check", "--source", source, "--destination", destination) == 2
    assert "are the same database" in capsys.readouterr().err


def test_another_database_on_the_same_server_is_a_valid_destination(source_db: Database, tmp_path: Path) -> None:
    source_db.execute(ROWS)
    other = Database(source_db.cluster, f"{source_db.name}_copy")
    source_db.cluster.create_database(other.name)
    source = source_db.write_config(tmp_path / "source.yaml")
    destination = other.write_config(tmp_path / "destination.yaml", host="localhost")
    assert run_cli("run", "snapshot", "--no-progress", "--source", source, "--destination", destination) == 0
    assert checksum(other, "public", "victim") == checksum(source_db, "public", "victim")


@pytest.fixture
def physical_copy(cluster_root: Path) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """A small server and a physical copy of it (pg_basebackup): same system identifier, same OIDs."""
    original = start_cluster(cluster_root / f"orig-{os.getpid()}-{time.monotonic_ns()}")
    copy: LocalCluster | None = None
    try:
        original.create_database("shop")
        with Database(original, "shop").connect() as conn:
            conn.execute(ROWS)
        root = Path(str(original.root) + "-copy")
        root.mkdir()
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            import shutil

            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(original.bindir / "pg_basebackup"), "-D", str(root / "data"), "-h", "127.0.0.1",
                          "-p", str(original.port), "-U", "postgres", "-X", "fetch", "--no-sync"]),
            check=True, capture_output=True, env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
        )
        (root / "sock").mkdir()
        if os.geteuid() == 0:
            shutil.chown(root / "sock", "postgres", "postgres")
        copy = LocalCluster(root=root, port=free_port(), bindir=original.bindir)
        copy.start()
        yield original, copy
    finally:
        if copy is not None:
            copy.destroy()
        original.destroy()


def test_a_physical_copy_of_the_source_is_a_valid_destination(
    physical_copy: tuple[LocalCluster, LocalCluster], tmp_path: Path
) -> None:
    original, copy = physical_copy
    src, dst = Database(original, "shop"), Database(copy, "shop")
    query = "SELECT system_identifier FROM pg_control_system()"
    assert src.fetchone(query) == dst.fetchone(query)  # what a system_identifier-only check would refuse
    src.execute("UPDATE victim SET v = 'changed' WHERE id <= 10")
    source = src.write_config(tmp_path / "source.yaml")
    destination = dst.write_config(tmp_path / "destination.yaml")
    assert run_cli("run", "snapshot", "--no-progress", "--source", source, "--destination", destination) == 0
    assert checksum(dst, "public", "victim") == checksum(src, "public", "victim")


def test_checkpoints_do_not_depend_on_how_the_host_is_spelt(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(ROWS)
    destination = dest_db.write_config(tmp_path / "destination.yaml")
    first = source_db.write_config(tmp_path / "source.yaml")
    assert run_cli("run", "snapshot", "--no-progress", "--source", first, "--destination", destination) == 0
    dest_db.execute("INSERT INTO victim VALUES (1000, 'written at the destination since')")
    capsys.readouterr()
    respelt = source_db.write_config(tmp_path / "source-localhost.yaml", host="localhost")
    assert run_cli("run", "snapshot", "--no-progress", "--source", respelt, "--destination", destination) == 0
    assert "1 already done earlier" in capsys.readouterr().out
    assert dest_db.fetchone("SELECT count(*) FROM victim") == 501  # not emptied and copied again


def test_progress_recorded_under_the_spelt_host_is_adopted(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A destination written by an earlier version (job = host:port/database) keeps its progress."""
    source_db.execute(ROWS)
    source = source_db.write_config(tmp_path / "source.yaml")
    destination = dest_db.write_config(tmp_path / "destination.yaml")
    legacy = Job(load_connection(source, "source"), load_connection(destination, "destination"), None, load_extractor(None))
    run_snapshot(legacy)  # what the earlier version recorded: the key as spelt
    assert dest_db.fetchone("SELECT job FROM _replicator.snapshot_tables") == legacy.legacy_job_id
    capsys.readouterr()
    assert run_cli("run", "snapshot", "--no-progress", "--source", source, "--destination", destination) == 0
    assert "1 already done earlier" in capsys.readouterr().out
    sysid = source_db.fetchone("SELECT system_identifier::text FROM pg_control_system()")
    assert dest_db.fetchone("SELECT job FROM _replicator.snapshot_tables") == f"{sysid}/{source_db.name}"


def test_a_second_run_spelling_the_host_differently_finds_the_job_lock(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(ROWS)
    destination = dest_db.write_config(tmp_path / "destination.yaml")
    extractor = write(tmp_path / "extractor.yaml", "delta-snapshot:\n  interval-s: 600\n")
    child = spawn_cli("run", "delta-snapshot", "--no-progress", "--source", source_db.write_config(tmp_path / "s1.yaml"),
                      "--destination", destination, "--extractor", extractor)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert "pass 1 complete" in line, (line, child.stderr.read() if child.poll() is not None else "")
        dest_db.execute("INSERT INTO victim VALUES (1000, 'only at the destination')")
        respelt = source_db.write_config(tmp_path / "s2.yaml", host="localhost")
        code = run_cli("run", "snapshot", "--no-progress", "--source", respelt, "--destination", destination)
        assert code == 1
        assert "another replicator run" in capsys.readouterr().err
        assert dest_db.fetchone("SELECT count(*) FROM victim") == 501
    finally:
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=60)
