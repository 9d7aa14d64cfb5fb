"""Helpers shared by tests: running the CLI, comparing tables between servers."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
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


class PortForward:
    """A TCP port on 127.0.0.1 that forwards to another one: a second way to reach the same server."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closing = False
        self.connections = 0  # accepted so far: how many times a client tried to connect
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self.closing = True
        self.server.close()
