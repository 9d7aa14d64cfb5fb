"""Migration benchmark: replicator vs pg_dump/pg_restore, schema and data, measured in the same run.

    python bench/migrate.py [--rows 1000000] [--repeats 3]

Builds, in one database of a throwaway local cluster, the benchmark table with two secondary
indexes and a foreign key:

    kinds(id integer primary key, name text)                        -- 100 rows
    t(id bigint primary key, a text, b numeric, c timestamptz, d jsonb,
      kind integer not null references kinds)                       -- --rows rows
    indexes t_c (c), t_kind_a (kind, a)

and the same table without the indexes and the key (``plain``). Then alternately times, each
into a new database of the same cluster:

  reference: pg_dump -Fd -j 2 to disk, then pg_restore -j 2 (schema and data, both timed);
  ours:      python -m replicator run snapshot (a new process, end to end: rows, primary key,
             indexes, foreign key NOT VALID then validated);
  plain:     the same snapshot of the table without indexes and foreign key;

and, on the copy ours made, how long the two indexes and the key take to build on their own
(``builds``): ``ours - plain`` should be about that. Prints the medians, the ratio reference /
ours (above 1 means we are faster), and ``replicator verify`` on ours (time and result).
"""

from __future__ import annotations

import argparse
import os
import shutil
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

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, LocalCluster, start_cluster  # noqa: E402

SCHEMA = """
CREATE TABLE kinds (id integer PRIMARY KEY, name text);
INSERT INTO kinds SELECT g, 'kind ' || g FROM generate_series(1, 100) g;
CREATE TABLE t (id bigint PRIMARY KEY, a text, b numeric, c timestamptz, d jsonb, kind integer NOT NULL);
"""
FILL = """INSERT INTO t SELECT g, md5(g::text), g * 1.5, '2025-01-01'::timestamptz + g * interval '1 second',
                   jsonb_build_object('k', g, 'v', md5(g::text)), 1 + g %% 100
          FROM generate_series(1, %s) g"""
OBJECTS = """
CREATE INDEX t_c ON t (c);
CREATE INDEX t_kind_a ON t (kind, a);
ALTER TABLE t ADD CONSTRAINT t_kind_fkey FOREIGN KEY (kind) REFERENCES kinds (id);
"""


def build(cluster: LocalCluster, db: str, rows: int, objects: bool) -> None:
    cluster.create_database(db)
    with psycopg.connect(cluster.conninfo(db), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(FILL, (rows,))
        if objects:
            conn.execute(OBJECTS)
        conn.execute("VACUUM ANALYZE")


def fresh(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute("CHECKPOINT")


def _env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}


def _conn_args(cluster: LocalCluster) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER]


def time_reference(cluster: LocalCluster, workdir: Path) -> tuple[float, float]:
    """(dump seconds, restore seconds)."""
    fresh(cluster, "bench_ref")
    dump_dir = workdir / "dump"
    shutil.rmtree(dump_dir, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(
        [
            str(cluster.bindir / "pg_dump"),
            *_conn_args(cluster),
            "-Fd",
            "-j",
            "2",
            "-f",
            str(dump_dir),
            "bench_src",
        ],
        env=_env(),
        check=True,
    )
    dumped = time.perf_counter()
    subprocess.run(
        [
            str(cluster.bindir / "pg_restore"),
            *_conn_args(cluster),
            "-j",
            "2",
            "-d",
            "bench_ref",
            str(dump_dir),
        ],
        env=_env(),
        check=True,
    )
    return dumped - started, time.perf_counter() - dumped


def time_ours(cluster: LocalCluster, workdir: Path, source: str, target: str) -> float:
    fresh(cluster, target)
    (workdir / "source.yaml").write_text(yaml.safe_dump(cluster.connection_config(source)))
    (workdir / "destination.yaml").write_text(yaml.safe_dump(cluster.connection_config(target)))
    args = [
        sys.executable,
        "-m",
        "replicator",
        "run",
        "snapshot",
        "--no-progress",
        "--source",
        str(workdir / "source.yaml"),
        "--destination",
        str(workdir / "destination.yaml"),
    ]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"replicator run snapshot failed (exit {done.returncode}):\n{done.stderr}")
    return time.perf_counter() - started


def time_builds(cluster: LocalCluster) -> float:
    """The two indexes and the foreign key alone, built again on our copy."""
    with psycopg.connect(cluster.conninfo("bench_ours"), autocommit=True) as conn:
        conn.execute("DROP INDEX t_c, t_kind_a; ALTER TABLE t DROP CONSTRAINT t_kind_fkey")
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute(OBJECTS)
        return time.perf_counter() - started


def time_verify(workdir: Path) -> tuple[float, int, list[str]]:
    """``replicator verify`` of bench_src against bench_ours (the configs the last run of ours wrote):
    (seconds, exit status, the lines it printed)."""
    args = [
        sys.executable,
        "-m",
        "replicator",
        "verify",
        "--source",
        str(workdir / "source.yaml"),
        "--destination",
        str(workdir / "destination.yaml"),
    ]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, (done.stdout or done.stderr).strip().splitlines()


def damage(cluster: LocalCluster, rows: int) -> None:
    """One changed value, one missing row and one extra row in our copy, for verify to find."""
    with psycopg.connect(cluster.conninfo("bench_ours"), autocommit=True) as conn:
        conn.execute("UPDATE t SET b = b + 1 WHERE id = %s", (rows // 2,))
        conn.execute("DELETE FROM t WHERE id = %s", (rows // 3,))
        conn.execute("INSERT INTO t SELECT id + %s, a, b, c, d, kind FROM t WHERE id = 1", (rows,))


def same_schema(cluster: LocalCluster) -> None:
    query = """SELECT c.relname, pg_get_indexdef(i.indexrelid)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = 't'::regclass ORDER BY 1"""
    fks = "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint WHERE contype = 'f'"
    seen = {}
    for db in ("bench_src", "bench_ref", "bench_ours"):
        with psycopg.connect(cluster.conninfo(db)) as conn:
            seen[db] = (conn.execute(query).fetchall(), conn.execute(fks).fetchall())
    assert seen["bench_src"] == seen["bench_ref"] == seen["bench_ours"], seen


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    workdir.chmod(0o755)
    cluster = start_cluster(workdir / "cluster")
    try:
        print(
            f"building {args.rows:,} rows (twice: with and without indexes and foreign key) ...", flush=True
        )
        build(cluster, "bench_src", args.rows, objects=True)
        build(cluster, "bench_plain", args.rows, objects=False)
        dumps, restores, ours, plain, builds = [], [], [], [], []
        for i in range(args.repeats):
            dump, restore = time_reference(cluster, workdir)
            dumps.append(dump)
            restores.append(restore)
            plain.append(time_ours(cluster, workdir, "bench_plain", "bench_plain_copy"))
            ours.append(time_ours(cluster, workdir, "bench_src", "bench_ours"))
            same_schema(cluster)
            builds.append(time_builds(cluster))
            print(
                f"  round {i + 1}: pg_dump {dump:.2f} s + pg_restore {restore:.2f} s "
                f"= {dump + restore:.2f} s; "
                f"replicator {ours[-1]:.2f} s (plain table {plain[-1]:.2f} s; index and key builds alone "
                f"{builds[-1]:.2f} s)",
                flush=True,
            )
        verify_s, verify_rc, verify_out = time_verify(workdir)
        damage(cluster, args.rows)
        damaged_s, damaged_rc, damaged_out = time_verify(workdir)
        ref = statistics.median(d + r for d, r in zip(dumps, restores, strict=True))
        mine = statistics.median(ours)
        print(
            f"reference pg_dump -Fd -j 2 + pg_restore -j 2: {ref:.2f} s "
            f"(dump {statistics.median(dumps):.2f} s, "
            f"restore {statistics.median(restores):.2f} s)"
        )
        print(f"replicator run snapshot (rows, key, 2 indexes, foreign key validated): {mine:.2f} s")
        print(
            f"  the plain table: {statistics.median(plain):.2f} s; the index and key builds alone: "
            f"{statistics.median(builds):.2f} s; ours - plain: {mine - statistics.median(plain):.2f} s"
        )
        print(f"ratio reference/ours: {ref / mine:.2f}x")
        print(f"replicator verify of {args.rows:,} rows, equal copy: {verify_s:.2f} s, exit {verify_rc}")
        for line in verify_out:
            print(f"  {line}")
        print(
            f"replicator verify after one changed, one missing, one extra row: {damaged_s:.2f} s, "
            f"exit {damaged_rc}"
        )
        for line in damaged_out:
            print(f"  {line}")
        if verify_rc != 0 or damaged_rc != 3:
            print("verify did not give the expected exit statuses (0, then 3)", file=sys.stderr)
            return 1
        return 0
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
