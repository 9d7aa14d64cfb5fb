"""Snapshot, full and realtime with source and destination behind a bastion; sshd's log shows the forwards."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.realtime.conftest import WORKLOAD_SCHEMA, Env, _drop_slots, random_workload
from tests.ssh.conftest import Sshd
from tests.support import checksum, run_cli, spawn_cli


@dataclass
class TunnelEnv(Env):
    """Source and destination each reached through ``bastion``."""

    bastion: Sshd | None = None
    retries: dict[str, int] | None = None

    def source_config(self, **extra: object) -> Path:
        assert self.bastion is not None
        return super().source_config(**{"ssh-tunnel": self.bastion.tunnel(), **(self.retries or {}), **extra})

    def dest_config(self, **extra: object) -> Path:
        assert self.bastion is not None
        return super().dest_config(**{"ssh-tunnel": self.bastion.tunnel(), **(self.retries or {}), **extra})


def _env(source_db: Database, dest_db: Database, tmp_path: Path, bastion: Sshd) -> TunnelEnv:
    return TunnelEnv(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}", bastion=bastion)


@pytest.fixture
def tenv(source_db: Database, dest_db: Database, tmp_path: Path, sshd: Sshd) -> Iterator[TunnelEnv]:
    env = _env(source_db, dest_db, tmp_path, sshd)
    yield env
    _drop_slots(source_db)


def test_snapshot_through_the_tunnel(tenv: TunnelEnv, sshd: Sshd) -> None:
    tenv.source.execute("CREATE TABLE big (id bigint PRIMARY KEY, v text);"
                        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 60000) g;")
    tenv.extractor_text = "snapshot:\n  threads: 3\n  min-job-size-rows: 5000\n"
    src_before = sshd.forwards_to(tenv.source.cluster.port)
    dst_before = sshd.forwards_to(tenv.dest.cluster.port)
    assert tenv.run("snapshot") == 0
    assert checksum(tenv.dest, "public", "big") == checksum(tenv.source, "public", "big")
    # The exporting session and three workers at least, every one of them through the bastion.
    assert sshd.forwards_to(tenv.source.cluster.port) - src_before >= 4
    assert sshd.forwards_to(tenv.dest.cluster.port) - dst_before >= 4
    # Checkpoints are keyed by the source's identity, never by the local forward.
    sysid = tenv.source.fetchone("SELECT system_identifier::text FROM pg_control_system()")
    jobs = tenv.dest.fetchall("SELECT DISTINCT job FROM _replicator.snapshot_tables")
    assert jobs == [(f"{sysid}/{tenv.source.name}",)]


def test_a_run_through_the_tunnel_finds_the_checkpoints_of_a_direct_run(
    tenv: TunnelEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    tenv.source.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)")
    direct = tenv.source.write_config(tenv.tmp / "direct.yaml")
    dest = tenv.dest.write_config(tenv.tmp / "dest-direct.yaml")
    assert run_cli("run", "snapshot", "--no-progress", "--source", direct, "--destination", dest) == 0
    capsys.readouterr()
    assert tenv.run("snapshot") == 0  # the same source, through the bastion
    out = capsys.readouterr().out
    assert "0 table(s) copied, 1 already done earlier" in out, out
    assert tenv.dest.fetchone("SELECT count(DISTINCT job) FROM _replicator.snapshot_tables") == 1


def test_source_as_destination_through_the_tunnel_is_refused(
    tenv: TunnelEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same database, once through the bastion and once directly: the identity check sees through it."""
    tenv.source.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    same = tenv.source.write_config(tenv.tmp / "same.yaml")
    code = run_cli(
        "run", "snapshot", "--no-progress", "--source", tenv.source_config(), "--destination", same
    )
    assert code == 2
    assert "are the same database" in capsys.readouterr().err
    assert tenv.source.fetchone("SELECT count(*) FROM t") == 1


def test_full_then_realtime_through_the_tunnel(tenv: TunnelEnv, sshd: Sshd) -> None:
    tenv.source.execute(WORKLOAD_SCHEMA)
    assert tenv.run("full", "--once") == 0
    tenv.assert_equal("items", "pairs")
    random_workload(tenv.source, random.Random(5), 40, [5000])
    before = sshd.forwards_to(tenv.source.cluster.port)
    assert tenv.run("realtime", "--once") == 0
    tenv.assert_equal("items", "pairs")
    assert sshd.forwards_to(tenv.source.cluster.port) > before


def test_bastion_restarted_mid_stream_loses_nothing(
    source_db: Database, dest_db: Database, tmp_path: Path, own_sshd: Sshd
) -> None:
    env = _env(source_db, dest_db, tmp_path, own_sshd)
    env.retries = {"max-retries": 40, "retry-wait-duration-ms": 250}
    try:
        env.source.execute(WORKLOAD_SCHEMA)
        assert env.run("full", "--once") == 0
        child = spawn_cli(*env.args("realtime"))
        rng = random.Random(17)
        next_id = [5000]
        try:
            random_workload(env.source, rng, 30, next_id)
            assert _wait_applied(env)
            forwards_before = own_sshd.forwards_to(env.source.cluster.port)
            own_sshd.stop()  # the bastion goes away, with every forwarded connection
            random_workload(env.source, rng, 30, next_id)  # the source keeps changing meanwhile
            time.sleep(2)
            own_sshd.start()
            random_workload(env.source, rng, 30, next_id)
            caught_up = _wait_applied(env)
        finally:
            child.send_signal(signal.SIGTERM)
            _, err = child.communicate(timeout=60)
        assert caught_up, err
        assert child.returncode == 0, err
        assert "lost the SSH connection" in err or "cannot connect" in err
        assert own_sshd.forwards_to(env.source.cluster.port) > forwards_before  # reconnected through it
        env.assert_equal("items", "pairs")
    finally:
        _drop_slots(source_db)


def _wait_applied(env: Env, timeout: float = 90) -> bool:
    target = env.source.fetchone("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if env.source.fetchone(
            "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
            (target, env.slot),
        ):
            return True
        time.sleep(0.1)
    return False


def test_status_through_the_tunnel(tenv: TunnelEnv, sshd: Sshd, capsys: pytest.CaptureFixture[str]) -> None:
    tenv.source.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    assert tenv.run("snapshot") == 0
    capsys.readouterr()
    before = sshd.forwards_to(tenv.dest.cluster.port)
    assert run_cli("status", "--destination", tenv.dest_config(), "--source", tenv.source_config()) == 0
    out = capsys.readouterr().out
    assert "public.t" in out
    assert sshd.forwards_to(tenv.dest.cluster.port) > before


def test_delta_snapshot_through_the_tunnel(tenv: TunnelEnv, sshd: Sshd) -> None:
    tenv.source.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, "
        "500) g"
    )
    tenv.extractor_text = "delta-snapshot:\n  threads: 2\n"
    assert tenv.run("delta-snapshot", "--once") == 0
    tenv.source.execute("UPDATE t SET v = 'w' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0")
    before = sshd.forwards_to(tenv.source.cluster.port)
    assert tenv.run("delta-snapshot", "--once") == 0
    assert checksum(tenv.dest, "public", "t") == checksum(tenv.source, "public", "t")
    assert sshd.forwards_to(tenv.source.cluster.port) > before
