"""What the ssh-tunnel costs a snapshot: the same `replicator run snapshot` direct and through a local sshd.

    python bench/ssh_tunnel.py [--rows 500000] [--repeats 3]

Builds t(id bigint primary key, a text, b numeric, c timestamptz, d jsonb) in a throwaway local
cluster and starts a throwaway OpenSSH server on 127.0.0.1 (tests/ssh/sshd.py). Per round, into
a fresh destination database each time, alternately: the snapshot with a plain source config
(reference), and the same with the source behind `ssh-tunnel` (every byte read from the source
crosses sshd and paramiko's encryption). Each is a new process, end to end. Prints the medians,
the ratio tunnel / direct (the slowdown) and the load average, since the machine may be shared.
Both ends run on this machine, so the figure is the tunnel's CPU cost, not a network's latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._table import FILL_SQL, TABLE_DDL  # noqa: E402
from replicator.localpg import LocalCluster, start_cluster  # noqa: E402
from tests.ssh.sshd import make_sshd  # noqa: E402


def build_source(cluster: LocalCluster, rows: int) -> None:
    cluster.create_database("bench_src")
    with psycopg.connect(cluster.conninfo("bench_src"), autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        conn.execute(FILL_SQL, (1, rows))
        conn.execute("VACUUM ANALYZE t")


def time_snapshot(cluster: LocalCluster, workdir: Path, source: str) -> float:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_dst")
        conn.execute("CREATE DATABASE bench_dst")
    args = [sys.executable, "-m", "replicator", "run", "snapshot", "--no-progress",
            "--source", str(workdir / source), "--destination", str(workdir / "destination.yaml")]
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    workdir.chmod(0o755)
    cluster = start_cluster(workdir / "cluster")
    sshd = make_sshd(workdir / "sshd")
    try:
        print(f"building {args.rows:,} rows ...", flush=True)
        build_source(cluster, args.rows)
        plain = cluster.connection_config("bench_src")
        (workdir / "direct.yaml").write_text(yaml.safe_dump(plain))
        (workdir / "tunnel.yaml").write_text(yaml.safe_dump({**plain, "ssh-tunnel": sshd.tunnel()}))
        (workdir / "destination.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_dst")))
        direct, tunnel = [], []
        for i in range(args.repeats):
            direct.append(time_snapshot(cluster, workdir, "direct.yaml"))
            tunnel.append(time_snapshot(cluster, workdir, "tunnel.yaml"))
            print(
                f"  round {i + 1}: direct {direct[-1]:.2f} s, through the tunnel {tunnel[-1]:.2f} s",
                flush=True,
            )
        d, t = statistics.median(direct), statistics.median(tunnel)
        print(f"direct:             {d:.2f} s  ({args.rows / d:,.0f} rows/s)")
        print(f"through ssh-tunnel: {t:.2f} s  ({args.rows / t:,.0f} rows/s)")
        print(
            f"tunnel / direct: {t / d:.2f}x (median of rounds: "
            f"{statistics.median(b / a for a, b in zip(direct, tunnel, strict=True)):.2f}x); load average "
            f"{os.getloadavg()}"
        )
        return 0
    finally:
        sshd.stop()
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
