"""Switchover tests: a source with a slot config, a destination, and a realtime run in a child process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen

import pytest

from tests.conftest import Database
from tests.realtime.conftest import Env, _drop_slots
from tests.support import spawn_cli


@pytest.fixture
def env(source_db: Database, dest_db: Database, tmp_path: Path) -> Iterator[Env]:
    e = Env(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}")
    e.extractor_text = (
        "realtime:\n  heartbeat:\n    interval-ms: 300\n  fetch-duration-per-extractor-slot-s: 0.2\n"
    )
    yield e
    _drop_slots(source_db)


def start_streaming(env: Env, mode: str = "full") -> Popen[str]:
    """``run MODE`` in a child; returns once its slot streams and its snapshot is done."""
    child = spawn_cli(*env.args(mode))
    deadline = time.monotonic() + 120
    while not (
        env.source.fetchone(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (env.slot,)
        )
        and env.dest.fetchone("SELECT to_regclass('_replicator.slot_checkpoints') IS NOT NULL")
        and env.dest.fetchone("SELECT count(*) FROM _replicator.slot_checkpoints")
    ):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.2)
    return child


def stop(child: Popen[str]) -> tuple[str, str]:
    if child.poll() is None:
        child.terminate()
    return child.communicate(timeout=60)


def switchover_args(env: Env, *extra: str) -> list[str]:
    return [
        "switchover",
        "--source",
        str(env.source_config()),
        "--destination",
        str(env.dest_config()),
        "--extractor",
        str(env.extractor()),
        *extra,
    ]


def verify_args(env: Env, *extra: str) -> list[str]:
    return [
        "verify",
        "--source",
        str(env.source_config()),
        "--destination",
        str(env.dest_config()),
        "--extractor",
        str(env.extractor()),
        *extra,
    ]
