"""`replicator status` reads back what the runs recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support import run_cli, write


def test_status_before_and_after_runs(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = dest_db.write_config(tmp_path / "destination.yaml")
    assert run_cli("status", "--destination", dest) == 0
    assert "no replication state in this destination yet" in capsys.readouterr().out

    slot = f"slot_{source_db.name}"
    source_db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM "
        "generate_series(1, 100) g"
    )
    source = source_db.write_config(
        tmp_path / "source.yaml", **{"replication-slots": {slot: ["pgoutput"]}, "publication": "status_pub"}
    )
    extractor = write(tmp_path / "extractor.yaml", "realtime:\n  heartbeat:\n    enable: false\n")
    try:
        assert (
            run_cli(
                "run", "full", "--once", "--source", source, "--destination", dest, "--extractor", extractor
            )
            == 0
        )
        source_db.execute("UPDATE t SET v = 'w' WHERE id = 1")
        assert (
            run_cli(
                "run",
                "realtime",
                "--once",
                "--source",
                source,
                "--destination",
                dest,
                "--extractor",
                extractor,
            )
            == 0
        )
        capsys.readouterr()
        assert run_cli("status", "--destination", dest, "--source", source) == 0
        out = capsys.readouterr().out
        assert "public.t" in out and "done" in out and "100 rows" in out
        assert f"slot {slot}" in out and "at the source: idle" in out and "retaining" in out
    finally:
        source_db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
