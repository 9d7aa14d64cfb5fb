"""Throwaway local PostgreSQL clusters for the demo, the tests and the benchmarks.

PostgreSQL refuses to run as root, so when we are root every server command runs
as the ``postgres`` user (``runuser``) on a data directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres-local-only"


class LocalPgError(RuntimeError):
    """A throwaway cluster could not be created or started."""


def find_bindir(major: int | None = None) -> Path:
    """Locate PostgreSQL server binaries: $REPLICATOR_PG_BIN, else the newest (or given) Debian major."""
    env = os.environ.get("REPLICATOR_PG_BIN")
    if env:
        return Path(env)
    pattern = f"/usr/lib/postgresql/{major or '*'}/bin"
    found = sorted(glob.glob(pattern), key=lambda p: int(Path(p).parent.name))
    for candidate in reversed(found):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise LocalPgError(
        "PostgreSQL server binaries not found (looked in "
        f"{pattern}); install them with: apt-get install -y postgresql-15"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *cmd]
    return cmd


def _chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER, SUPERUSER)


@dataclass
class LocalCluster:
    """One running throwaway server, reachable on 127.0.0.1:port and a private socket directory."""

    root: Path
    port: int
    bindir: Path
    settings: dict[str, str] = field(default_factory=dict)
    hba_lines: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def conninfo(self, dbname: str = "postgres", **extra: str) -> str:
        """A libpq connection string as the superuser over TCP."""
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": dbname,
            "user": SUPERUSER,
            "password": SUPERUSER_PASSWORD,
            **extra,
        }
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def connection_config(self, dbname: str = "postgres", **extra: object) -> dict[str, object]:
        """An Arcion-style connection config (as a dict, ready for YAML) for ``dbname``."""
        return {
            "type": "POSTGRESQL",
            "host": "127.0.0.1",
            "port": self.port,
            "database": dbname,
            "username": SUPERUSER,
            "password": SUPERUSER_PASSWORD,
            "max-retries": 2,
            "retry-wait-duration-ms": 200,
            **extra,
        }

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if conn.info.server_version >= 150000:
                # PostgreSQL 15's default (WAL_LOG) writes the whole template into the WAL: ~5 MB per
                # database, which every logical slot then has to read past. FILE_COPY writes none.
                query = sql.SQL("{} STRATEGY FILE_COPY").format(query)
            conn.execute(query)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _chown_to_postgres(self.root)
        self.socket_dir.mkdir(exist_ok=True)
        _chown_to_postgres(self.socket_dir)
        pwfile = self.root / "pwfile"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        _chown_to_postgres(pwfile)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        if self.hba_lines:
            hba = self.datadir / "pg_hba.conf"
            # Prepended: the first matching line wins in pg_hba.conf.
            hba.write_text("\n".join(self.hba_lines) + "\n" + hba.read_text())

    def start(self) -> None:
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "256MB",
            "max_connections": "100",
            **self.settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D", str(self.datadir),
                "-l", str(self.logfile),
                "-o", opts,
                "-w", "-t", "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"], check=False
            )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, cmd: list[str], check: bool = True) -> None:
        proc = subprocess.run(_as_postgres(cmd), capture_output=True, text=True)
        if check and proc.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise LocalPgError(f"{' '.join(cmd[:1])} failed: {proc.stderr.strip()}\n{log}")


def start_cluster(
    root: Path | None = None,
    settings: Mapping[str, str] | None = None,
    hba_lines: list[str] | None = None,
    major: int | None = None,
) -> LocalCluster:
    """Create and start a throwaway cluster with ``wal_level=logical``."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="replicator-pg-"))
    cluster = LocalCluster(
        root=root,
        port=free_port(),
        bindir=find_bindir(major),
        settings=dict(settings or {}),
        hba_lines=list(hba_lines or []),
    )
    cluster.init()
    cluster.start()
    return cluster
