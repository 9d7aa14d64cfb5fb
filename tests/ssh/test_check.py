"""``replicator check`` through a bastion: the tunnel is tested first, and a failure names its hop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator.check import Report, Status
from replicator.localpg import free_port
from tests.check.conftest import Source, drop_slots, good_tables, make_source
from tests.conftest import Database
from tests.ssh.conftest import Sshd
from tests.support import run_cli, write


@pytest.fixture
def source(source_db: Database, tmp_path: Path) -> Iterator[Source]:
    src = make_source(source_db, tmp_path)
    good_tables(source_db, f"pub_{src.user}")
    source_db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{src.user}"')
    yield src
    drop_slots(source_db)


def _result(report: Report, layer: str, name: str) -> tuple[Status, str]:
    found = [r for r in report.results if (r.layer, r.name) == (layer, name)]
    assert len(found) == 1, report.render()
    return found[0].status, found[0].detail


def test_check_through_the_tunnel(source: Source, dest_db: Database, sshd: Sshd) -> None:
    before = sshd.forwards_to(source.db.cluster.port)
    report = source.check(
        destination=dest_db.config(**{"ssh-tunnel": sshd.tunnel()}), **{"ssh-tunnel": sshd.tunnel()}
    )
    assert report.ok, report.render()
    for layer in ("source", "destination"):
        assert _result(report, layer, "ssh bastion")[0] is Status.OK
        assert _result(report, layer, "ssh forward")[0] is Status.OK
        assert _result(report, layer, "connect")[0] is Status.OK
    # The tunnel comes first, then the database checks, all through it.
    names = [r.name for r in report.results if r.layer == "source"]
    assert names[:3] == ["ssh bastion", "ssh forward", "connect"]
    assert f"host key matches {sshd.known_hosts}" in _result(report, "source", "ssh bastion")[1]
    assert sshd.forwards_to(source.db.cluster.port) - before >= 2  # the hop-2 probe, then the session


def test_check_says_hop_1_failed(source: Source, sshd: Sshd, tmp_path: Path) -> None:
    known = write(tmp_path / "empty_known_hosts", "")
    report = source.check(**{"ssh-tunnel": sshd.tunnel(**{"known-hosts-file": str(known)})})
    status, detail = _result(report, "source", "ssh bastion")
    assert status is Status.FAIL and "not in known_hosts" in detail and "host key" in detail
    assert "ssh-keyscan" in (report.find("ssh bastion").fix or "")
    assert _result(report, "source", "connect")[0] is Status.SKIP
    assert report.exit_code == 1


def test_check_says_hop_2_failed(source: Source, sshd: Sshd) -> None:
    dead = free_port()
    report = source.check(port=dead, **{"ssh-tunnel": sshd.tunnel()})
    assert _result(report, "source", "ssh bastion")[0] is Status.OK
    status, detail = _result(report, "source", "ssh forward")
    assert status is Status.FAIL
    assert detail.startswith(f"ssh-tunnel hop 2 (bastion 127.0.0.1 -> database 127.0.0.1:{dead})")
    assert "security group allows the bastion" in (report.find("ssh forward").fix or "")
    assert _result(report, "source", "connect")[0] is Status.SKIP


def test_check_command_prints_the_hops(
    source: Source, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    path = source.write("source.yaml", source.config(**{"ssh-tunnel": sshd.tunnel()}))
    assert run_cli("check", "--source", path) == 0
    out = capsys.readouterr().out
    assert "ssh bastion" in out and "ssh forward" in out

