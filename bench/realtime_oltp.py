"""OLTP catch-up benchmark: a backlog of many small pgbench transactions, replicator vs PostgreSQL's
native logical replication, same run (issue 11).

    python bench/realtime_oltp.py [--scale 5] [--transactions 126000] [--rounds 3]
                                  [--plugins pgoutput,wal2json] [--extractor FILE] [--statements]

A source cluster holds pgbench's tables (``pgbench -i -s SCALE``); a destination cluster holds an
identical copy per consumer: ``native`` (a native subscription, disabled between rounds),
``ours_pgoutput`` and ``ours_wal2json`` (our slot of each plugin, realtime defaults except the
heartbeat, which is off as in bench/realtime.py). Every slot starts at the same point. Per
round, pgbench writes a backlog of --transactions tpcb-like transactions (3 updates and 1 insert
each, ``pgbench_history`` included: no key, REPLICA IDENTITY DEFAULT, insert-only) while no
consumer runs; then each consumer catches up alone, in an order that rotates from round to round:
  native: ALTER SUBSCRIPTION ... ENABLE, until its slot has confirmed the backlog's end;
  ours:   python -m replicator run realtime --once (a new process, end to end).
Prints each round, then one line per plugin a script can parse, e.g.
  RESULT realtime_oltp plugin=pgoutput native_s=5.20 ours_s=39.80 ratio=0.13 paired_ratio=0.13 ...
ratio is median(native) / median(ours) (above 1: we are faster), paired_ratio the median of the
rounds' own ratios. All clusters run with fsync = off and synchronous_commit = off.

--statements loads pg_stat_statements at the destination and prints, for each of our runs, the
destination statements per source transaction and per destination commit, and the most frequent.
--cpu prints the CPU seconds each consumer's processes spent in each round: the walsender at the
source, the destination backends (native: its apply worker) and our process's main thread
(reads, decodes, folds) and other threads (the apply worker).
--without-history leaves pgbench_history (no key) out of both publications: the keyed tables alone.
--ours-prefix 'py-spy record --threads --idle -f raw -o prof.txt --' runs our process under a
profiler (or anything else); bench/pyspy_summary.py prof.txt says where the time went.
--baseline DIR also runs the replicator of another tree (a throwaway worktree of main, its C
extensions built or copied in) as consumers ``base_PLUGIN``, on the same backlog in the same rounds:
a before/after comparison paired round by round (RESULT ... vs_baseline=median(base/ours)).
--destination-rtt-ms X puts bench/_delay.py between us and the destination: X ms more per round
trip, as across a network (RDS: 0.2-1 ms); native applies inside the destination, untouched.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _oltp  # noqa: E402
from bench._oltp import SOURCE_DB, TABLES, Child  # noqa: E402
from replicator.decoding.pgoutput import NATIVE  # noqa: E402
from replicator.localpg import LocalCluster  # noqa: E402

EXTRACTOR = "realtime:\n  heartbeat:\n    enable: false\n"


def backlog(src: LocalCluster, transactions: int, clients: int) -> tuple[str, int, float]:
    """pgbench's tpcb-like script, ``transactions`` in all; returns (end LSN, transactions, tps)."""
    per_client = max(1, transactions // clients)
    out = _oltp.pgbench(
        src, SOURCE_DB, "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-t", str(per_client)
    )
    return _oltp.flushed_end(src), _oltp.transactions_of(out.stdout), _oltp.tps_of(out.stdout)


def catch_up_native(src: LocalCluster, dst: LocalCluster, target: str, cpu: dict[str, float] | None) -> float:
    sampler = _oltp.CpuSampler(src, dst, "native", "native") if cpu is not None else None
    start = time.perf_counter()
    with psycopg.connect(dst.conninfo("native"), autocommit=True) as conn:
        conn.execute("ALTER SUBSCRIPTION native_sub ENABLE")
    if sampler is not None:
        sampler.start()
    _oltp.wait_slot_confirmed(src, "native", target)
    elapsed = time.perf_counter() - start
    if sampler is not None and cpu is not None:
        cpu.update(sampler.stop())
    with psycopg.connect(dst.conninfo("native"), autocommit=True) as conn:
        conn.execute("ALTER SUBSCRIPTION native_sub DISABLE")
    _oltp.wait_slot_inactive(src, "native")
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=5)
    p.add_argument("--transactions", type=int, default=126_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--plugins", default="pgoutput,wal2json")
    p.add_argument(
        "--without-history",
        action="store_true",
        help="leave pgbench_history (no key) out of both publications: the keyed tables' cost alone",
    )
    p.add_argument("--no-native", action="store_true", help="time only our consumers (profiling)")
    p.add_argument(
        "--extractor", type=Path, help="our extractor config (default: realtime defaults, heartbeat off)"
    )
    p.add_argument(
        "--statements", action="store_true", help="count destination statements (pg_stat_statements)"
    )
    p.add_argument(
        "--cpu",
        action="store_true",
        help="CPU seconds of each consumer's walsender, destination backends and (ours) process",
    )
    p.add_argument("--ours-prefix", default="", help="command prefix for our process, e.g. a profiler")
    p.add_argument("--keep", action="store_true", help="keep the work directory (our logs)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also run DIR's replicator (e.g. a worktree of main) as base_PLUGIN, same rounds")
    p.add_argument(
        "--no-bytecode",
        action="store_true",
        help="run our trees from source, compiled at every start (as this benchmark did before it "
        "byte-compiled them: see bench/_oltp.py byte_compile)",
    )
    _oltp.add_destination_rtt_flag(p)
    args = p.parse_args()
    plugins = [x for x in args.plugins.split(",") if x]
    # Our consumers: name -> (plugin, tree). The name is also its slot and destination database.
    ours: dict[str, tuple[str, Path]] = {pl: (pl, _oltp.REPO) for pl in plugins}
    if args.baseline:
        ours.update({f"base_{pl}": (pl, args.baseline.resolve()) for pl in plugins})
    extractor = args.extractor.read_text() if args.extractor else EXTRACTOR
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-oltp-"))
    workdir.chmod(0o755)
    dst_extra = _oltp.STATEMENTS_SETTINGS if args.statements else {}
    src = _oltp.start(workdir, "src")
    # The launcher starts a subscription's worker at most once per wal_retrieve_retry_interval
    # (5 s by default): ENABLE in round 2 would wait for it.
    dst = _oltp.start(workdir, "dst", {"wal_retrieve_retry_interval": "50ms", **dst_extra})
    proxy = None
    try:
        print(f"load average at start: {_oltp.load_average()}; {_oltp.code_under_test()}", flush=True)
        if args.no_bytecode:
            # Our packages' bytecode removed and never written: they compile at every start (the
            # libraries keep theirs, as pip installed them).
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
            for tree in sorted({t for _, t in ours.values()}):
                for cache in (tree / "replicator").rglob("__pycache__"):
                    shutil.rmtree(cache)
            print("our packages compile their sources at every start (--no-bytecode)", flush=True)
        else:
            for tree in sorted({t for _, t in ours.values()}):
                print(_oltp.byte_compile(tree), flush=True)
        proxy = _oltp.destination_proxy(dst, args.destination_rtt_ms)
        print(
            f"pgbench -i -s {args.scale} on the source, copies for native and {', '.join(plugins)} ...",
            flush=True,
        )
        tables = [t for t in TABLES if not (args.without_history and t == "pgbench_history")]
        # pgbench_history has no key: replicator streams it through ours_pub_insert_only, made here
        # before the slot as replicator would (pgoutput cannot read a publication made after it).
        keyed = [t for t in tables if t != "pgbench_history"]
        pubs = {"native_pub": tables, "ours_pub": keyed, "ours_pub_insert_only": ["pgbench_history"]}
        _oltp.build_source(src, args.scale, pubs)
        dbs = ["native"] + [_db(c) for c in ours]
        for db in dbs:
            _oltp.copy_to(src, dst, db)
        if args.statements:
            with psycopg.connect(dst.conninfo(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        configs = {}
        with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
            for c, (pl, _) in ours.items():
                conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (_db(c), pl))
                configs[c] = _oltp.write_configs(
                    workdir,
                    src,
                    dst,
                    _db(c),
                    _db(c),
                    pl,
                    _db(c),
                    "ours_pub" if pl == "pgoutput" else None,
                    extractor,
                    tables if args.without_history else None,
                    destination_port=proxy.port if proxy else None,
                )
        _oltp.create_subscription(src, dst, "native", "native_pub", enabled=False)
        prefix = shlex.split(args.ours_prefix)
        for c in ours:  # first runs set up (state schema, publication checks) on an empty backlog
            _child(configs[c], ours[c][1], workdir / f"{_db(c)}.log").start().wait()

        consumers = ([] if args.no_native else ["native"]) + list(ours)
        times: dict[str, list[float]] = {c: [] for c in consumers}
        peaks: dict[str, int] = {c: 0 for c in ours}
        diff: list[str] = []
        for r in range(args.rounds):
            target, txns, tps = backlog(src, args.transactions, args.clients)
            order = consumers[r % len(consumers):] + consumers[: r % len(consumers)]
            line = [f"round {r + 1}: {txns:,} transactions written at {tps:,.0f} tps"]
            for c in order:
                cpu: dict[str, float] | None = {} if args.cpu else None
                if c == "native":
                    times[c].append(catch_up_native(src, dst, target, cpu))
                else:
                    if args.statements:
                        _oltp.reset_statements(dst)
                    child = _child(configs[c], ours[c][1], workdir / f"{_db(c)}.log", prefix).start()
                    sampler = (
                        _oltp.CpuSampler(src, dst, _db(c), _db(c), child) if args.cpu else None
                    )
                    if sampler is not None:
                        sampler.start()
                    times[c].append(child.wait())
                    if sampler is not None and cpu is not None:
                        cpu.update(sampler.stop())
                    peaks[c] = max(peaks[c], child.peak_kb)
                    if args.statements:
                        _oltp.report_statements(dst, _db(c), txns)
                line.append(f"{c} {times[c][-1]:.2f} s")
                if cpu:
                    line[-1] += " (CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items())) + ")"
            round_diff = _oltp.differences(src, dst, [_db(c) for c in consumers],
                                           skip=() if tables == list(TABLES) else ("pgbench_history",))
            if round_diff:
                line.append("DIFFERENT: " + "; ".join(round_diff) + "; "
                            + _oltp.positions(src, dst, [_db(c) for c in ours]))
            print(", ".join(line), flush=True)
            diff += round_diff
        print("destinations equal the source after every round" if not diff else "DESTINATIONS DIFFERED")
        print(f"load average at end: {_oltp.load_average()}; pgoutput rows decoded by "
              f"{'the C extension' if NATIVE else 'pure Python'}")
        for pl in ours:
            mine = statistics.median(times[pl])
            fields = [f"plugin={pl}", f"transactions={args.transactions}",
                      f"history={'no' if args.without_history else 'yes'}"]
            if not args.no_native:
                native = statistics.median(times["native"])
                paired = statistics.median(n / o for n, o in zip(times["native"], times[pl], strict=True))
                fields += [f"native_s={native:.2f}", f"ours_s={mine:.2f}", f"ratio={native / mine:.2f}",
                           f"paired_ratio={paired:.2f}"]
            else:
                fields.append(f"ours_s={mine:.2f}")
            if f"base_{pl}" in times:
                fields.append("vs_baseline=" + format(statistics.median(
                    b / o for b, o in zip(times[f"base_{pl}"], times[pl], strict=True)), ".3f"))
            fields += [
                f"rounds={args.rounds}",
                f"peak_rss_mb={peaks[pl] / 1024:.0f}",
                f"equal={'yes' if not diff else 'no'}",
                *_oltp.rtt_fields(proxy),
            ]
            print("RESULT realtime_oltp " + " ".join(fields), flush=True)
        return 0 if not diff else 1
    finally:
        if proxy is not None:
            proxy.close()
        src.destroy()
        dst.destroy()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _db(consumer: str) -> str:
    """A consumer's slot and destination database: native, ours_PLUGIN, base_PLUGIN."""
    return consumer if consumer == "native" or consumer.startswith("base_") else f"ours_{consumer}"


def _child(configs: dict[str, Path], tree: Path, log: Path, prefix: list[str] | None = None) -> Child:
    """One of our runs from ``tree`` (its own .venv if it has one, else this interpreter)."""
    venv = tree / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else None
    return Child(_oltp.replicator_cmd(configs, once=True, prefix=prefix or [], python=python), log, tree)


if __name__ == "__main__":
    sys.exit(main())
