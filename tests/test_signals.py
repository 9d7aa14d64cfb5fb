"""SIGHUP (a closed terminal) is handled like SIGTERM by every command that starts servers or holds slots."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from replicator.localpg import _as_postgres, find_bindir
from tests.support import REPO


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _stop_leftovers(workdir: Path) -> None:
    for pid_file in workdir.glob("*/data/postmaster.pid"):
        subprocess.run(_as_postgres([str(find_bindir() / "pg_ctl"), "-D", str(pid_file.parent), "-m", "immediate",
                                     "-w", "stop"]), capture_output=True, check=False)


def test_closing_the_terminal_during_the_demo_stops_both_servers(tmp_path: Path) -> None:
    errors = (tmp_path / "stderr").open("w+")
    child = subprocess.Popen(
        [sys.executable, "-m", "replicator", "demo", "--rows", "2000", "--seconds", "120"],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=errors, text=True,
    )
    workdir: Path | None = None
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 180
        for line in child.stdout:
            found = re.search(r"servers under (\S+)", line)
            if found:
                workdir = Path(found.group(1))
            if "now the shop gets busy" in line or time.monotonic() > deadline:
                break
        assert workdir is not None and len(list(workdir.glob("*/data/postmaster.pid"))) == 2
        child.send_signal(signal.SIGHUP)
        child.communicate(timeout=120)
        errors.seek(0)
        assert child.returncode == 130, errors.read()
        assert list(workdir.glob("*/data/postmaster.pid")) == []  # both servers stopped
        assert _du(workdir) < 1_000_000  # and their data directories removed
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        if workdir is not None:
            _stop_leftovers(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
