"""Realtime catch-up benchmark: replicator vs PostgreSQL's native logical replication, same run.

    python bench/realtime.py [--rows 1000000] [--changes 1000000] [--txn-size 10000] [--plugin wal2json]

A source cluster holds t (id bigint primary key, a text, b numeric, c timestamptz, d jsonb) with
--rows rows; a destination cluster holds two identical copies. Our slot and a native
subscription (CREATE SUBSCRIPTION, disabled, its slot created up front) both start at the same
point; then a backlog of --changes changes (updates, inserts, deletes in transactions of
--txn-size) is written. Each consumer then catches up alone:
  native: ALTER SUBSCRIPTION ... ENABLE, until its slot has confirmed the backlog's end;
  ours:   python -m replicator run realtime --once (a new process, end to end).
Prints both times, the ratio native/ours (above 1 means we are faster), and our peak RSS.
--plugin: our slot's output plugin (pgoutput, the default, or wal2json).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._oltp import byte_compile, flushed_end  # noqa: E402
from bench._table import FILL_SQL, TABLE_DDL  # noqa: E402
from replicator.decoding.pgoutput import NATIVE  # noqa: E402
from replicator.localpg import LocalCluster, start_cluster  # noqa: E402


def setup(src: LocalCluster, dst: LocalCluster, rows: int, plugin: str) -> None:
    src.create_database("bench")
    with psycopg.connect(src.conninfo("bench"), autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        conn.execute(FILL_SQL, (1, rows))
        conn.execute("CREATE PUBLICATION native_pub FOR TABLE t")
        conn.execute("CREATE PUBLICATION ours_pub FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot('ours', %s)", (plugin,))
    for db in ("native", "ours"):
        dst.create_database(db)
        with psycopg.connect(dst.conninfo(db), autocommit=True) as conn:
            conn.execute(TABLE_DDL)
            with (
                psycopg.connect(src.conninfo("bench")) as s,
                s.cursor().copy("COPY t TO STDOUT (FORMAT binary)") as out,
            ):
                with conn.cursor().copy("COPY t FROM STDIN (FORMAT binary)") as into:
                    for block in out:
                        into.write(block)
    with psycopg.connect(dst.conninfo("native"), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION native_sub CONNECTION {} PUBLICATION native_pub "
                "WITH (copy_data = false, enabled = false, create_slot = true, slot_name = 'native')"
            ).format(sql.Literal(src.conninfo("bench")))
        )


def backlog(src: LocalCluster, rows: int, changes: int, txn: int) -> str:
    """Updates, inserts and deletes (4:3:3) in transactions of ``txn`` changes; returns the end LSN."""
    with psycopg.connect(src.conninfo("bench"), autocommit=True) as conn:
        done, next_id, upd, dele = 0, rows + 1, 1, rows
        kinds = ["u", "u", "i", "d", "u", "i", "d", "u", "i", "d"]
        k = 0
        while done < changes:
            n = min(txn, changes - done)
            kind = kinds[k % len(kinds)]
            if kind == "u":
                conn.execute(
                    "UPDATE t SET b = b + 1, d = d || '{\"u\": 1}' WHERE id >= %s AND id < %s", (upd, upd + n)
                )
                upd += n
            elif kind == "i":
                conn.execute(FILL_SQL, (next_id, next_id + n - 1))
                next_id += n
            else:
                conn.execute("DELETE FROM t WHERE id > %s AND id <= %s", (dele - n, dele))
                dele -= n
            done += n
            k += 1
    # Not pg_current_wal_lsn(): with synchronous_commit = off the last commits may lie past it.
    return flushed_end(src)


def catch_up_native(src: LocalCluster, dst: LocalCluster, target: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(dst.conninfo("native"), autocommit=True) as conn:
        conn.execute("ALTER SUBSCRIPTION native_sub ENABLE")
    with psycopg.connect(src.conninfo("bench"), autocommit=True) as conn:
        while not conn.execute(
            "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = 'native'", (target,)
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.02)
    return time.perf_counter() - start


def catch_up_ours(workdir: Path) -> tuple[float, int]:
    args = [sys.executable, "-m", "replicator", "run", "realtime", "--once", "--no-progress",
            "--source", str(workdir / "source.yaml"), "--destination", str(workdir / "destination.yaml"),
            "--extractor", str(workdir / "extractor.yaml")]
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kb = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as f:
                peak_kb = max([peak_kb] + [int(line.split()[1]) for line in f if line.startswith("VmHWM:")])
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"replicator failed:\n{err}")
    return elapsed, peak_kb


def same(src: LocalCluster, dst: LocalCluster) -> bool:
    q = "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM t"
    with psycopg.connect(src.conninfo("bench")) as s:
        want = s.execute(q).fetchone()
    for db in ("native", "ours"):
        with psycopg.connect(dst.conninfo(db)) as d:
            if d.execute(q).fetchone() != want:
                print(f"MISMATCH in {db}")
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--changes", type=int, default=1_000_000)
    p.add_argument("--txn-size", type=int, default=10_000)
    p.add_argument("--plugin", choices=["pgoutput", "wal2json"], default="pgoutput")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-rt-"))
    workdir.chmod(0o755)
    # As every benchmark's clusters (issue 11): fsync (localpg's default) and synchronous_commit off.
    settings = {"max_wal_size": "4GB", "synchronous_commit": "off"}
    src = start_cluster(workdir / "src", settings=settings)
    dst = start_cluster(workdir / "dst", settings=settings)
    try:
        print(byte_compile(REPO), flush=True)
        print(f"loading {args.rows:,} rows on the source and both destinations ...", flush=True)
        setup(src, dst, args.rows, args.plugin)
        source: dict[str, object] = {"replication-slots": {"ours": [args.plugin]}, "publication": "ours_pub"}
        if args.plugin == "wal2json":
            source["wal2json-nan-becomes-null"] = True  # t.b is numeric; the benchmark writes no NaN
        (workdir / "source.yaml").write_text(yaml.safe_dump(src.connection_config("bench", **source)))
        (workdir / "destination.yaml").write_text(yaml.safe_dump(dst.connection_config("ours")))
        (workdir / "extractor.yaml").write_text("realtime:\n  heartbeat:\n    enable: false\n")
        print(f"writing a backlog of {args.changes:,} changes ...", flush=True)
        target = backlog(src, args.rows, args.changes, args.txn_size)
        native = catch_up_native(src, dst, target)
        print(
            f"native logical replication caught up in {native:.2f} s ({args.changes / native:,.0f} "
            "changes/s)",
            flush=True,
        )
        ours, peak_kb = catch_up_ours(workdir)
        print(
            f"replicator realtime --once caught up in {ours:.2f} s ({args.changes / ours:,.0f} changes/s), "
            f"peak RSS {peak_kb / 1024:.0f} MB (target < 300 MB)"
        )
        decoded = "the C extension" if NATIVE else "pure Python (REPLICATOR_PURE_PYTHON_DECODE or not built)"
        print(
            f"ratio native/ours: {native / ours:.2f}x  (target: >= 1.0x); {args.plugin}, pgoutput rows "
            f"decoded by {decoded}"
        )
        print("destinations equal the source" if same(src, dst) else "DESTINATIONS DIFFER")
        return 0
    finally:
        src.destroy()
        dst.destroy()


if __name__ == "__main__":
    sys.exit(main())
