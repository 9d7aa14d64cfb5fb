"""Where the CPU of bench/snapshot.py goes: per process kind, for the psql pipe and for us.

    python bench/snapshot_cpu.py [--rows 1000000] [--repeats 3]

Same table and contenders as bench/snapshot.py (plus ours with the pure-Python relay loop), on
a cluster with ``log_statement_stats`` on, so each statement's backend CPU (user + system) is
in the server log. Client CPU is that of the child processes (the two psql, or our Python
process). Prints the median of each figure. Wall times here are only indicative (the server
log costs a little); the ratio is bench/snapshot.py's job. A parallel key build's workers are
not counted (the statistics are the leader's).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from snapshot import build_source, time_ours, time_reference  # noqa: E402

from replicator.localpg import LocalCluster, start_cluster  # noqa: E402

STATS = re.compile(  # one statement's statistics block: user s, system s, the statement
    r"LOG:  QUERY STATISTICS\n.*?!\t([\d.]+) s user, ([\d.]+) s system, [\d.]+ s elapsed"
    r".*?STATEMENT:  (.*?)\n",
    re.S,
)
SETUP = re.compile(r"^(DROP DATABASE|CREATE DATABASE|CHECKPOINT)", re.I)  # the benchmark's own, untimed
COLUMNS = ("wall", "client", "source COPY", "dest COPY", "key build", "other SQL", "total CPU")


def kind(statement: str) -> str:
    if "TO STDOUT" in statement:
        return "source COPY"
    if "FROM STDIN" in statement:
        return "dest COPY"
    if "PRIMARY KEY" in statement:
        return "key build"
    return "other SQL"


def measure(cluster: LocalCluster, run: Callable[[], float]) -> dict[str, float]:
    start = cluster.logfile.stat().st_size
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)  # let the backends write their last statistics
    with open(cluster.logfile, encoding="utf-8", errors="replace") as log:
        log.seek(start)
        text = log.read()
    cpu = dict.fromkeys(COLUMNS, 0.0)
    cpu["wall"] = wall
    cpu["client"] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    for m in STATS.finditer(text):
        if SETUP.match(m.group(3)):
            continue
        cpu[kind(m.group(3))] += float(m.group(1)) + float(m.group(2))
    cpu["total CPU"] = sum(v for k, v in cpu.items() if k not in ("wall", "total CPU"))
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    workdir.chmod(0o755)
    cluster = start_cluster(workdir / "cluster", settings={"log_statement_stats": "on"})
    try:
        print(f"building {args.rows:,} rows ...", flush=True)
        build_source(cluster, args.rows)
        (workdir / "source.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_src")))
        (workdir / "destination.yaml").write_text(yaml.safe_dump(cluster.connection_config("bench_ours")))

        def ours_python() -> float:
            os.environ["REPLICATOR_PURE_PYTHON_RELAY"] = "1"
            try:
                return time_ours(cluster, workdir, None)
            finally:
                del os.environ["REPLICATOR_PURE_PYTHON_RELAY"]

        contenders: dict[str, Callable[[], float]] = {
            "psql pipe": lambda: time_reference(cluster),
            "ours": lambda: time_ours(cluster, workdir, None),
            "ours, Python loop": ours_python,
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
        for i in range(args.repeats):
            for name, run in contenders.items():
                runs[name].append(measure(cluster, run))
            print(f"  round {i + 1} done (load average {os.getloadavg()[0]:.2f})", flush=True)
        print(f"{'seconds (median)':18s}" + "".join(f"{c:>12s}" for c in COLUMNS))
        for name, results in runs.items():
            medians = [statistics.median(r[c] for r in results) for c in COLUMNS]
            print(f"{name:18s}" + "".join(f"{m:12.2f}" for m in medians))
        return 0
    finally:
        cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
