"""What a realtime run imports before it streams: only what it uses (issue 11, start-up).

A `--once` catch-up is timed from process start (bench/realtime_oltp.py), and imports were about
40% of our CPU in a 2-second catch-up. These tests hold the structure, not a timing: the modules
a realtime run loads never pull in the libraries and modes it does not use. A new top-level
import of one of them fails here; import it inside the function that needs it instead.
"""

from __future__ import annotations

import json
import subprocess
import sys

# What `replicator run realtime` imports on its way to streaming (cli, the mode, the identity
# check, the PostgreSQL destination, the metrics helpers its runner calls).
REALTIME_PATH = (
    "replicator.cli",
    "replicator.metrics",
    "replicator.modes.realtime",
    "replicator.realtime.runner",
    "replicator.identity",
    "replicator.destinations.postgres",
)

# Never on that path: cloud and provisioning libraries, the terminal UI, the metrics library
# (imported when a registry is made: --metrics-port, snapshot, delta), and the other modes.
NOT_ON_THE_REALTIME_PATH = (
    "boto3",
    "botocore",
    "pulumi",
    "paramiko",
    "rich",
    "prometheus_client",
    "replicator.snapshot.runner",
    "replicator.delta",
    "replicator.provision",
    "replicator.check",
    "replicator.verify",
    "replicator.switchover",
    "replicator.demo",
    "replicator.handoff",
    "replicator.progress",
    "replicator.ssh.tunnel",
)


def _modules_after(*imports: str) -> set[str]:
    """sys.modules of a fresh interpreter after importing ``imports``."""
    code = "import importlib, json, sys\n"
    code += "".join(f"importlib.import_module({m!r})\n" for m in imports)
    code += "print(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_a_realtime_run_imports_no_other_mode_nor_cloud_nor_ui_library() -> None:
    loaded = _modules_after(*REALTIME_PATH)
    assert set(REALTIME_PATH) <= loaded
    unwanted = sorted(
        m for m in loaded for name in NOT_ON_THE_REALTIME_PATH if m == name or m.startswith(name + ".")
    )
    assert unwanted == []


def test_metrics_import_their_library_only_when_a_registry_is_made() -> None:
    """A slot tracked before any registry exists (a realtime run without --metrics-port) is
    reported by one made later, and tracking imported nothing."""
    code = (
        "import sys\n"
        "from replicator import metrics\n"
        "sample = metrics.SlotSample(None, None, changes=7, transactions=1, commits=1, reconnects=0, "
        "last_commit=None, applied_through=None)\n"
        "untrack = metrics.track_slot('s1', lambda: sample)\n"
        "print('prometheus_client' in sys.modules)\n"
        "from prometheus_client import generate_latest\n"
        "print(generate_latest(metrics.current().registry).decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, scrape = out.stdout.split("\n", 1)
    assert first == "False"
    assert 'replicator_slot_changes_total{slot="s1"} 7.0' in scrape


def test_the_help_still_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "replicator", "--help"], capture_output=True, text=True, check=True
    )
    commands = ("run", "status", "demo", "handoff", "check", "verify", "switchover", "install-ddl-capture")
    for command in commands:
        assert command in out.stdout
