"""Snapshot benchmark: replicator vs the `psql | psql` binary COPY pipe, measured in the same run.

    python bench/snapshot.py [--rows 1000000] [--repeats 3]

Builds t(id bigint primary key, a text, b numeric, c timestamptz, d jsonb) in one database of a
throwaway local cluster, then alternately times, into another database of the same cluster:
  reference: psql -c "COPY t TO STDOUT (FORMAT binary)" | psql -c "COPY t FROM STDIN (FORMAT binary)"
             into an identical table that has its primary key;
  ours:      python -m replicator run snapshot (a new process, end to end, key built after load).
Prints the median of each and the ratio reference / ours (above 1 means we are faster).
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
from replicator.localpg import SUPERUSER_PASSWORD, LocalCluster, start_cluster  # noqa: E402


def build_source(cluster: LocalCluster, rows: int) -> None:
    cluster.create_database("bench_src")
    with psycopg.connect(cluster.conninfo("bench_src"), autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        conn.execute(FILL_SQL, (1, rows))
        conn.execute("VACUUM ANALYZE t")


def fresh_destination(cluster: LocalCluster, name: str, with_table: bool) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
        if with_table:
            conn.execute(TABLE_DDL)
        conn.execute("CHECKPOINT")


def psql(cluster: LocalCluster, db: str, command: str) -> list[str]:
    return [
        "psql",
        "-X",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        "-d",
        db,
        "-c",
        command,
    ]


def time_reference(cluster: LocalCluster) -> float:
    fresh_destination(cluster, "bench_ref", with_table=True)
    env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
    start = time.perf_counter()
    out = subprocess.Popen(
        psql(cluster, "bench_src", "COPY t TO STDOUT (FORMAT binary)"), stdout=subprocess.PIPE, env=env
    )
    subprocess.run(
        psql(cluster, "bench_ref", "COPY t FROM STDIN (FORMAT binary)"), stdin=out.stdout, env=env, check=True
    )
    out.wait()
    elapsed = time.perf_counter() - start
    assert out.returncode == 0
    return elapsed


def time_ours(cluster: LocalCluster, workdir: Path, extractor: Path | None) -> float:
    fresh_destination(cluster, "bench_ours", with_table=False)
    args = [sys.executable, "-m", "replicator", "run", "snapshot", "--no-progress",
            "--source", str(workdir / "source.yaml"), "--destination", str(workdir / "destination.yaml")]
    if extractor:
        args += ["--extractor", str(extractor)]
    start = time.perf_counter()
    subprocess.run(args, check=True, cwd=REPO, capture_output=True)
    return time.perf_counter() - start


def verify(cluster: LocalCluster, rows: int) -> None:
    for db in ("bench_ref", "bench_ours"):
        with psycopg.connect(cluster.conninfo(db)) as conn:
            count = conn.execute("SELECT count(*) FROM t").fetchone()[0]  # type: ignore[index]
            pk = conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'p'"
            ).fetchone()[0]  # type: ignore[index]
            assert count == rows and pk == 1, (db, count, pk)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--extractor", type=Path, help="extractor config for our run (default: built-in defaults)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    workdir.chmod(0o755)
    cluster = start_cluster(workdir / "cluster")
    try:
        print(f"building {args.rows:,} rows ...", flush=True)
        build_source(cluster, args.rows)
        (workdir / "source.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_src")))
        (workdir / "destination.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_ours")))
        ref_times, our_times = [], []
        for i in range(args.repeats):
            ref_times.append(time_reference(cluster))
            our_times.append(time_ours(cluster, workdir, args.extractor))
            print(
                f"  round {i + 1}: psql pipe {ref_times[-1]:.2f} s, replicator {our_times[-1]:.2f} s",
                flush=True,
            )
        verify(cluster, args.rows)
        ref, ours = statistics.median(ref_times), statistics.median(our_times)
        print(f"reference (psql binary COPY pipe, PK in place): {ref:.2f} s  ({args.rows / ref:,.0f} rows/s)")
        print(
            f"replicator run snapshot (end to end, PK built): {ours:.2f} s  ({args.rows / ours:,.0f} rows/s)"
        )
        print(f"ratio reference/ours: {ref / ours:.2f}x  (target: >= 1.5x)")
        return 0
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
