"""Fixtures for tunnel tests: a real OpenSSH server (``tests/ssh/sshd.py``), and no tunnel left between
tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replicator import ssh
from tests.ssh.sshd import Sshd, keygen, make_sshd, public_line

__all__ = ["Sshd", "keygen", "public_line"]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One bastion shared by the tests that do not stop it."""
    server = make_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        ssh.close_all()
        server.stop()


@pytest.fixture
def own_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A bastion of the test's own, for tests that stop and restart it."""
    server = make_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        ssh.close_all()
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_tunnels() -> Iterator[None]:
    """Each test starts without tunnels (they are per process, and a test may have broken one)."""
    ssh.close_all()
    yield
    ssh.close_all()
