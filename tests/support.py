"""Helpers shared by tests: running the CLI, comparing tables between servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from psycopg import sql

from replicator.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str | Path) -> int:
    """Run the CLI in this process (fast); returns the exit code."""
    return main([str(a) for a in args])


def spawn_cli(*args: str | Path, **kw: Any) -> subprocess.Popen[str]:
    """Run ``python -m replicator`` as a child process (for kill/restart tests)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "replicator", *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def checksum(db: Any, schema: str, table: str, columns: list[str] | None = None) -> tuple[int, str]:
    """(row count, md5 of all rows cast to text, sorted): equal on both sides iff the data is equal."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns) if columns else sql.SQL("*")
    query = sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) "
        "FROM (SELECT {} FROM {}) r"
    ).format(cols, sql.Identifier(schema, table))
    with db.connect() as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]), str(row[1])


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
