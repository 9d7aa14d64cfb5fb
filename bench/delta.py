"""Delta-snapshot benchmark: one delta pass vs a full snapshot of the same table, in the same run.

    python bench/delta.py [--rows 1000000] [--changed 0.01] [--repeats 3] [--variants xmin,update-key]

Builds t(id bigint primary key, a text, b numeric, c timestamptz, d jsonb) with an index on c,
in one database of a throwaway local cluster, and brings three destination databases up to
date with `replicator run delta-snapshot --once` (their first pass is a snapshot, not timed):
  xmin:             changes found by xmin (a full scan of t), deletes by the key walk;
  update-key:       changes found by `update-key: c` (an index range scan), deletes by the key walk;
  xmin-no-deletes:  xmin with `replicate-deletes: false` (no key comparison).
Then, per round: change a fraction of the rows (80% updated, 10% deleted, 10% inserted, c set
to now()), time one `--once` pass of each (a new process, end to end), and time the reference:
`replicator run snapshot` of the same table into a fresh database (a new process, end to end,
key built); the snapshot goes first in odd rounds and last in even ones. Prints the medians,
the ratio snapshot / delta pass (above 1: the pass is faster)
both of the medians and as the median of each round's ratio, and the machine's load average,
since the machine may be shared. Each time is given twice: the process end to end, and the work
as the process reports it ("complete in X s"): a snapshot's own time, and a pass as a running
`delta-snapshot` loop does it every interval-s (no process start-up, config or connections).
With the defaults a round changes 1% of the rows with about 1,000 deletes spread over the whole
table (issue 11's shape). Then one line per variant a
script can parse, with the pass as a fraction of the snapshot (issue 11's targets: at most 0.2
with update-key, 0.35 with xmin, judged on the inside fraction: a pass of the running loop
against the snapshot's own time), e.g.
  RESULT delta variant=update-key rows=1000000 changed=10000 deletes=1000 snapshot_s=3.43 pass_s=1.01
  fraction=0.29 snapshot_inside_s=2.90 pass_inside_s=0.55 inside_fraction=0.19 target=0.20 met ...
The cluster runs with fsync = off and synchronous_commit = off, like every benchmark's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._table import FILL_SQL  # noqa: E402
from replicator.localpg import LocalCluster, start_cluster  # noqa: E402

TABLE_DDL = "CREATE TABLE t (id bigint PRIMARY KEY, a text, b numeric, c timestamptz NOT NULL, d jsonb)"
VARIANTS = {
    "xmin": "delta-snapshot:\n  threads: 2\n",
    "update-key": "delta-snapshot:\n  threads: 2\n  update-key: c\n",
    "xmin-no-deletes": "delta-snapshot:\n  threads: 2\n  replicate-deletes: false\n",
}


def build_source(cluster: LocalCluster, rows: int) -> None:
    cluster.create_database("bench_src")
    with psycopg.connect(cluster.conninfo("bench_src"), autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        conn.execute(FILL_SQL, (1, rows))
        conn.execute("CREATE INDEX t_c ON t (c)")
        conn.execute("VACUUM ANALYZE t")


def change(cluster: LocalCluster, rows: int, fraction: float, round_no: int) -> tuple[int, int]:
    """Change ``fraction`` of the rows: 80% updates, 10% deletes (random keys, so spread over the
    whole table), 10% inserts. Returns (rows changed, rows deleted)."""
    n = int(rows * fraction)
    updates, deletes, inserts = n * 8 // 10, n // 10, n - n * 8 // 10 - n // 10
    with psycopg.connect(cluster.conninfo("bench_src"), autocommit=True) as conn:
        conn.execute("SELECT setseed(%s)", (round_no / 100,))
        conn.execute(
            """UPDATE t SET a = md5(random()::text), c = now()
               WHERE id IN (SELECT 1 + floor(random() * %s)::bigint FROM generate_series(1, %s))""",
            (rows, updates),
        )
        deleted = conn.execute(
            "DELETE FROM t WHERE id IN (SELECT 1 + floor(random() * %s)::bigint FROM generate_series(1, %s))",
            (rows, deletes),
        ).rowcount
        start = rows * (round_no + 1) * 10
        conn.execute(
            """INSERT INTO t SELECT g, md5(g::text), g, now(), '{}' FROM generate_series(%s, %s) g""",
            (start, start + inserts - 1),
        )
    return n, deleted


def fresh_database(cluster: LocalCluster, name: str) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")


@dataclass(frozen=True)
class Timed:
    wall: float  # the process, end to end (start-up, config, connections included)
    inside: float  # the work as the process reports it: a snapshot's, or a pass's as a running loop does it


INSIDE = re.compile(r"(?:complete in|MB in) ([0-9.]+) s")


def replicator(mode: str, workdir: Path, dest: str, extractor: Path, *extra: str) -> Timed:
    args = [
        sys.executable,
        "-m",
        "replicator",
        "run",
        mode,
        "--no-progress",
        "--source",
        str(workdir / "source.yaml"),
        "--destination",
        str(workdir / f"{dest}.yaml"),
        "--extractor",
        str(extractor),
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(args, check=True, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = INSIDE.search(done.stdout)
    return Timed(wall, float(found.group(1)) if found else float("nan"))


def paired_fraction(snapshots: list[Timed], passes: list[Timed], which: str) -> float:
    """The median over rounds of pass / snapshot (``which``: "wall" or "inside")."""
    return statistics.median(
        getattr(p, which) / getattr(s, which) for s, p in zip(snapshots, passes, strict=True)
    )


def fingerprint(cluster: LocalCluster, db: str) -> tuple[int, int]:
    with psycopg.connect(cluster.conninfo(db)) as conn:
        row = conn.execute("SELECT count(*), sum(hashtext(t::text)) FROM t").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of rows changed per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of: {', '.join(VARIANTS)} (default: all)",
    )
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: {', '.join(unknown) or 'none given'}; known: {', '.join(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in names}
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    workdir.chmod(0o755)
    cluster = start_cluster(workdir / "cluster", settings={"fsync": "off", "synchronous_commit": "off"})
    try:
        print(
            f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)"
        )
        print(f"building {args.rows:,} rows ...", flush=True)
        build_source(cluster, args.rows)
        dests = {name: f"bench_delta_{i}" for i, name in enumerate(variants)}
        (workdir / "source.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_src")))
        for db in [*dests.values(), "bench_snap"]:
            (workdir / f"{db}.yaml").write_text(yaml.safe_dump(cluster.connection_config(db)))
        extractors = {}
        for i, (name, text) in enumerate(variants.items()):
            extractors[name] = workdir / f"extractor_{i}.yaml"
            extractors[name].write_text(text)
            fresh_database(cluster, dests[name])
            first = replicator("delta-snapshot", workdir, dests[name], extractors[name], "--once")
            print(f"  first pass ({name}): a snapshot, {first.wall:.2f} s", flush=True)
        snap_extractor = workdir / "snapshot.yaml"
        snap_extractor.write_text("snapshot:\n  threads: 2\n")
        snapshots: list[Timed] = []
        passes: dict[str, list[Timed]] = {name: [] for name in variants}
        deleted: list[int] = []
        for r in range(args.repeats):
            n, d = change(cluster, args.rows, args.changed, r)
            deleted.append(d)
            fresh_database(cluster, "bench_snap")
            # Alternate who goes first (odd rounds: the snapshot; even rounds: the passes), so
            # a load that comes and goes on a shared machine falls on both sides alike.
            order = ["snapshot", *variants] if r % 2 == 0 else [*variants, "snapshot"]
            for name in order:
                if name == "snapshot":
                    snapshots.append(replicator("snapshot", workdir, "bench_snap", snap_extractor))
                else:
                    passes[name].append(
                        replicator("delta-snapshot", workdir, dests[name], extractors[name], "--once")
                    )
            s = snapshots[-1]
            line = [
                f"  round {r + 1} ({n:,} changed, {d:,} deleted, {order[0]} first): "
                f"snapshot {s.wall:.2f} s ({s.inside:.2f})"
            ]
            line += [f"{v} {passes[v][-1].wall:.2f} s ({passes[v][-1].inside:.2f})" for v in variants]
            print(", ".join(line), flush=True)
        expected = fingerprint(cluster, "bench_src")
        assert fingerprint(cluster, "bench_snap") == expected
        for name in ("xmin", "update-key"):
            if name in dests:
                assert fingerprint(cluster, dests[name]) == expected, name
        snap = statistics.median(s.wall for s in snapshots)
        snap_inside = statistics.median(s.inside for s in snapshots)
        print(
            f"full snapshot (replicator run snapshot, PK built): {snap:.2f} s end to end, "
            f"{snap_inside:.2f} s as it reports itself"
        )
        targets = {"xmin": 0.35, "update-key": 0.2}
        for name, times in passes.items():
            t = statistics.median(p.wall for p in times)
            t_inside = statistics.median(p.inside for p in times)
            # Each round's snapshot and passes run back to back: their ratio is steadier than
            # the ratio of medians when other work on the machine comes and goes.
            paired = paired_fraction(snapshots, times, "wall")
            paired_inside = paired_fraction(snapshots, times, "inside")
            print(
                f"delta pass, {name:<16} ({args.changed:.0%} of {args.rows:,} rows changed): {t:.2f} s end "
                f"to end, {t_inside:.2f} s as it reports itself (the pass of a running loop); pass/snapshot "
                f"{paired:.2f} end to end, {paired_inside:.2f} inside (medians of per-round ratios)"
            )
        for name, times in passes.items():
            t = statistics.median(p.wall for p in times)
            t_inside = statistics.median(p.inside for p in times)
            paired_inside = paired_fraction(snapshots, times, "inside")
            target = targets.get(name)
            verdict = "" if target is None else (" met" if paired_inside <= target else " not-met")
            print(
                f"RESULT delta variant={name} rows={args.rows} "
                f"changed={int(args.rows * args.changed)} deletes={statistics.median(deleted):.0f} "
                f"snapshot_s={snap:.2f} pass_s={t:.2f} "
                f"fraction={paired_fraction(snapshots, times, 'wall'):.2f} "
                f"snapshot_inside_s={snap_inside:.2f} pass_inside_s={t_inside:.2f} "
                f"inside_fraction={paired_inside:.2f} "
                f"target={target if target is not None else float('nan'):.2f}{verdict} rounds={args.repeats}"
            )
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    finally:
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
