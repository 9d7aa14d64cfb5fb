"""Replication lag under OLTP load: replicator vs PostgreSQL's native logical replication, both
consuming the same source at the same time (issue 11).

    python bench/lag.py [--rate 1000] [--clients 4] [--seconds 60] [--burst-seconds 15]
                        [--plugin pgoutput] [--extractor FILE] [--scale 5]

A source cluster holds pgbench's tables (``pgbench -i -s SCALE``) and a probe table; a destination
cluster holds a copy for a native subscription (``native``) and one for ``replicator run
realtime`` (``ours``, realtime defaults unless --extractor says otherwise). Both stream all the
time. A probe writer commits a row into the probe table every --probe-ms (50 ms); a poller per
destination reads the highest probe id there every --poll-ms (5 ms). A probe's lag is the time
from its commit returning at the source to it being visible at that destination.

  steady: pgbench's tpcb-like script throttled to --rate tps on --clients clients for --seconds
          (after --warmup seconds not counted): p50/p90/p99/max lag of both;
  burst:  pgbench unthrottled for --burst-seconds, then one probe: how long until it lands on
          each (what is left to catch up when the load stops), plus the lag of the probes
          written during the burst.

One line per scenario a script can parse, e.g.
  RESULT lag scenario=steady rate=1000 ... native_p50_ms=126 ... ours_p99_ms=4912 ...
  RESULT lag scenario=burst seconds=15 tps=2010 native_s=0.41 ours_s=1.09 ...
All clusters run with fsync = off and synchronous_commit = off: native's floor is then the
source's WAL writer (about half of wal_writer_delay), ours too. --statements counts our
destination statements and commits during the steady part (pg_stat_statements).
--destination-rtt-ms X puts bench/_delay.py between us and the destination: X ms more per round
trip, as across a network (RDS: 0.2-1 ms); native applies inside the destination, untouched.

Fairness: both pollers are threads of this process doing the same thing, on the same cluster.
PostgreSQL wakes the walsenders in the order of their slots in shared memory, so the consumer
that starts streaming first is woken first at every WAL flush: --first (native by default, as
before) says which, and the output names the order. Measured on 2 cores, the order moved
neither consumer's lag by more than the noise (ours minus native, mean over all probes: 7.8 ms
native first, 7.9 ms ours first). The steady part also prints the CPU seconds of each
consumer's processes (its walsender; the native apply worker, or our process and our
destination backends): on 2 shared cores that is what the consumers take from each other.
--probes-json FILE keeps every probe's times, to line up with a trace of our process.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _oltp  # noqa: E402
from bench._oltp import SOURCE_DB, TABLES, Child  # noqa: E402
from replicator.localpg import LocalCluster  # noqa: E402

PROBE_DDL = "CREATE TABLE lag_probe (id bigint PRIMARY KEY, committed_at timestamptz NOT NULL)"
# Published up front so that our heartbeat (on by default) finds its table in our publication.
HEARTBEAT_DDL = 'CREATE TABLE replicate_io_cdc_heartbeat ("timestamp" int8 PRIMARY KEY)'
DESTINATIONS = ("native", "ours")


class ProbeWriter(threading.Thread):
    """Commits probe rows on a fixed schedule; remembers when each commit returned."""

    def __init__(self, src: LocalCluster, every_s: float):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True)
        self.every_s = every_s
        self.committed: dict[int, float] = {}
        self.next_id = 1
        self.running = threading.Event()
        self.lock = threading.Lock()
        self.done = threading.Event()

    def probe(self) -> int:
        """Commit one probe now; its id."""
        with self.lock:
            i = self.next_id
            self.next_id += 1
            self.conn.execute("INSERT INTO lag_probe VALUES (%s, clock_timestamp())", (i,))
            self.committed[i] = time.monotonic()
        return i

    def run(self) -> None:
        tick = time.monotonic()
        while not self.done.is_set():
            if self.running.is_set():
                self.probe()
            tick += self.every_s
            time.sleep(max(0.0, tick - time.monotonic()))

    def close(self) -> None:
        self.done.set()
        self.join()
        self.conn.close()


class Poller(threading.Thread):
    """Reads the highest probe id at one destination every ``every_s``; when each became visible."""

    def __init__(self, dst: LocalCluster, db: str, every_s: float):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dst.conninfo(db), autocommit=True)
        self.every_s = every_s
        self.seen: dict[int, float] = {}
        self.last = 0
        self.done = threading.Event()
        self.changed = threading.Condition()

    QUERY = "SELECT coalesce(max(id), 0) FROM lag_probe"

    def run(self) -> None:
        while not self.done.is_set():
            top = self.conn.execute(self.QUERY).fetchone()[0]  # type: ignore[index]
            now = time.monotonic()
            if top > self.last:
                with self.changed:
                    for i in range(self.last + 1, top + 1):
                        self.seen[i] = now
                    self.last = top
                    self.changed.notify_all()
            time.sleep(self.every_s)

    def wait_for(self, probe: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.last >= probe, timeout_s)

    def close(self) -> None:
        self.done.set()
        self.join()
        self.conn.close()


def wait_streaming(writer: ProbeWriter, pollers: dict[str, Poller], dbs: list[str], workdir: Path) -> None:
    """Commit a probe and wait until it is visible in each of ``dbs``."""
    probe = writer.probe()
    for db in dbs:
        if not pollers[db].wait_for(probe, 120):
            raise SystemExit(f"{db} did not start replicating within 120 s (see {workdir})")


def walsender_order(src: LocalCluster) -> str:
    """The slots being streamed, in the order their walsenders are woken (pg_stat_replication lists
    walsenders in the order of their slots in shared memory)."""
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT s.slot_name FROM pg_stat_replication r "
            "JOIN pg_replication_slots s ON s.active_pid = r.pid"
        ).fetchall()
    return ", ".join(str(r[0]) for r in rows)


def consumer_processes(src: LocalCluster, dst: LocalCluster, ours: Child) -> dict[str, int]:
    """The processes each consumer runs on: its walsender at the source, and the native apply
    worker or our process and our destination backends."""
    procs: dict[str, int] = {}
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        for slot, pid in conn.execute("SELECT slot_name, active_pid FROM pg_replication_slots WHERE active"):
            procs[f"{slot}_walsender"] = int(pid)
    with psycopg.connect(dst.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_subscription WHERE pid IS NOT NULL").fetchone()
        if row:
            procs["native_apply"] = int(row[0])
        for (pid,) in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = 'ours' AND application_name LIKE 'replicator%'"
        ):
            procs[f"ours_backend_{pid}"] = int(pid)
    pid = ours.replicator_pid()
    if pid is not None:
        procs["ours_process"] = pid
    return procs


def cpu_seconds(procs: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far (our destination backends summed)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in procs.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        key = "ours_backends" if name.startswith("ours_backend_") else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def lags_ms(writer: ProbeWriter, poller: Poller, ids: range) -> list[float]:
    return sorted((poller.seen[i] - writer.committed[i]) * 1000 for i in ids if i in poller.seen)


def summary(prefix: str, lags: list[float]) -> list[str]:
    return [f"{prefix}_p{q}_ms={percentile(lags, q):.0f}" for q in (50, 90, 99)] + [
        f"{prefix}_max_ms={lags[-1] if lags else float('nan'):.0f}"
    ]


def history_rows(src: LocalCluster) -> int:
    """pgbench transactions so far (each inserts one history row)."""
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        return int(conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0])  # type: ignore[index]


def run_pgbench(src: LocalCluster, seconds: float, clients: int, rate: int | None) -> subprocess.Popen[str]:
    args = ["-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds))]
    if rate:
        args += ["-R", str(rate)]
    return subprocess.Popen(_oltp.pgbench_cmd(src, SOURCE_DB, *args), env=_oltp.pg_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=5)
    p.add_argument("--rate", type=int, default=1000, help="pgbench -R: transactions per second (steady)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=60, help="steady scenario, measured part")
    p.add_argument("--warmup", type=float, default=5, help="steady scenario, first seconds not counted")
    p.add_argument("--burst-seconds", type=float, default=15, help="burst scenario (0: skip it)")
    p.add_argument("--probe-ms", type=float, default=50)
    p.add_argument("--poll-ms", type=float, default=5)
    p.add_argument("--plugin", default="pgoutput", choices=["pgoutput", "wal2json"])
    p.add_argument("--extractor", type=Path, help="our extractor config (default: realtime defaults)")
    p.add_argument(
        "--without-history",
        action="store_true",
        help="leave pgbench_history (no key) out of both publications: the keyed tables' cost alone",
    )
    p.add_argument(
        "--statements",
        action="store_true",
        help="count our destination statements and commits during the steady part (pg_stat_statements)",
    )
    p.add_argument(
        "--first",
        choices=["native", "ours"],
        default="native",
        help="which consumer starts streaming first (its walsender is then woken first at each WAL flush)",
    )
    p.add_argument(
        "--probes-json",
        type=Path,
        help="write each probe's commit time and when each destination showed it (time.monotonic(), "
        "the clock every process on this machine shares) to this file, to compare with a trace",
    )
    p.add_argument("--ours-prefix", default="", help="command prefix for our process, e.g. a profiler")
    p.add_argument("--keep", action="store_true", help="keep the work directory (our log)")
    _oltp.add_destination_rtt_flag(p)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="replicator-bench-lag-"))
    workdir.chmod(0o755)
    src = _oltp.start(workdir, "src")
    dst = _oltp.start(workdir, "dst", _oltp.STATEMENTS_SETTINGS if args.statements else None)
    ours: Child | None = None
    proxy = None
    writer: ProbeWriter | None = None
    pollers: dict[str, Poller] = {}
    try:
        print(f"load average at start: {_oltp.load_average()}; {_oltp.code_under_test()}", flush=True)
        proxy = _oltp.destination_proxy(dst, args.destination_rtt_ms)
        tables = [*(t for t in TABLES if not (args.without_history and t == "pgbench_history")), "lag_probe"]
        _oltp.build_source(
            src,
            args.scale,
            {
                "native_pub": tables,
                "ours_pub": [*(t for t in tables if t != "pgbench_history"), "replicate_io_cdc_heartbeat"],
                # Made before the slot, as replicator makes it: a publication created after a slot's
                # position cannot be read by pgoutput for the changes before it.
                **({} if args.without_history else {"ours_pub_insert_only": ["pgbench_history"]}),
            },
            extra_ddl=[PROBE_DDL, HEARTBEAT_DDL],
        )
        for db in DESTINATIONS:
            _oltp.copy_to(src, dst, db, extra_ddl=[PROBE_DDL])
        with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
            conn.execute("SELECT pg_create_logical_replication_slot('ours', %s)", (args.plugin,))
        paths = _oltp.write_configs(workdir, src, dst, "ours", "ours", args.plugin, "ours",
                                    "ours_pub" if args.plugin == "pgoutput" else None,
                                    args.extractor.read_text() if args.extractor else "",
                                    [*tables, "replicate_io_cdc_heartbeat"] if args.without_history else None,
                                    destination_port=proxy.port if proxy else None)
        # The consumer whose walsender starts first is woken first at every WAL flush (PostgreSQL
        # wakes walsenders in the order of their slots in shared memory): --first says which.
        _oltp.create_subscription(src, dst, "native", "native_pub", enabled=args.first == "native")
        if args.statements:
            with psycopg.connect(dst.conninfo(), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        writer = ProbeWriter(src, args.probe_ms / 1000)
        writer.start()
        pollers = {db: Poller(dst, db, args.poll_ms / 1000) for db in DESTINATIONS}
        for poller in pollers.values():
            poller.start()
        if args.first == "native":
            wait_streaming(writer, pollers, ["native"], workdir)
        ours = Child(_oltp.replicator_cmd(paths, once=False, prefix=shlex.split(args.ours_prefix)),
                     workdir / "ours.log").start()
        wait_streaming(writer, pollers, ["ours"], workdir)
        if args.first == "ours":
            with psycopg.connect(dst.conninfo("native"), autocommit=True) as conn:
                conn.execute("ALTER SUBSCRIPTION native_sub ENABLE")
            wait_streaming(writer, pollers, ["native"], workdir)
        print(f"walsenders (first woken first): {walsender_order(src)}", flush=True)
        print(f"both streaming; steady: pgbench -R {args.rate} -c {args.clients} for "
              f"{args.warmup + args.seconds:.0f} s ({args.warmup:.0f} s warm-up) ...", flush=True)

        bench = run_pgbench(src, args.warmup + args.seconds, args.clients, args.rate)
        writer.running.set()
        time.sleep(args.warmup)
        counted_from = writer.next_id
        cpu_before = cpu_seconds(consumer_processes(src, dst, ours))
        if args.statements:
            _oltp.reset_statements(dst)
            history_before = history_rows(src)
        out, _ = bench.communicate()
        writer.running.clear()
        cpu = cpu_seconds(consumer_processes(src, dst, ours))
        print("  CPU seconds during the measured part: " + ", ".join(
            f"{name} {cpu[name] - cpu_before.get(name, 0.0):.1f}" for name in cpu), flush=True)
        if args.statements:
            _oltp.report_statements(dst, "ours", history_rows(src) - history_before, ignore=[Poller.QUERY])
        counted = range(counted_from, writer.next_id)
        last = writer.next_id - 1
        for db, poller in pollers.items():
            if not poller.wait_for(last, 300):
                print(f"  {db}: probe {last} not visible 300 s after the load ended")
        fields = [f"scenario=steady rate={args.rate} clients={args.clients} seconds={args.seconds:.0f}",
                  f"tps={_oltp.tps_of(out):.0f}", f"probes={len(counted)}"]
        for db, poller in pollers.items():
            lags = lags_ms(writer, poller, counted)
            fields += summary(db, lags)
            print(
                f"  {db}: {len(lags)} probes, lag ms p50 {percentile(lags, 50):.0f} p90 "
                f"{percentile(lags, 90):.0f} "
                f"p99 {percentile(lags, 99):.0f} max {lags[-1] if lags else float('nan'):.0f}",
                flush=True,
            )
        fields += [
            f"peak_rss_mb={ours.peak_kb / 1024:.0f}",
            f"first={args.first}",
            f"plugin={args.plugin}",
            f"history={'no' if args.without_history else 'yes'}",
            *_oltp.rtt_fields(proxy),
        ]
        print("RESULT lag " + " ".join(fields), flush=True)

        if args.burst_seconds > 0:
            print(
                f"burst: pgbench -c {args.clients} unthrottled for {args.burst_seconds:.0f} s, then one "
                "probe ...",
                flush=True,
            )
            burst_from = writer.next_id
            bench = run_pgbench(src, args.burst_seconds, args.clients, None)
            writer.running.set()
            out, _ = bench.communicate()
            writer.running.clear()
            during = range(burst_from, writer.next_id)
            probe = writer.probe()
            fields = [f"scenario=burst seconds={args.burst_seconds:.0f} clients={args.clients}",
                      f"tps={_oltp.tps_of(out):.0f}"]
            for db, poller in pollers.items():
                landed = poller.wait_for(probe, 600)
                took = poller.seen[probe] - writer.committed[probe] if landed else float("nan")
                lags = lags_ms(writer, poller, during)
                fields += [
                    f"{db}_s={took:.2f}",
                    f"{db}_during_p99_ms={percentile(lags, 99):.0f}",
                    f"{db}_during_max_ms={lags[-1] if lags else float('nan'):.0f}",
                ]
                print(
                    f"  {db}: the probe after the burst landed after {took:.2f} s; during the burst, lag ms "
                    f"p50 {percentile(lags, 50):.0f} p99 {percentile(lags, 99):.0f} "
                    f"max {lags[-1] if lags else float('nan'):.0f}",
                    flush=True,
                )
            fields += [
                f"peak_rss_mb={ours.peak_kb / 1024:.0f}",
                f"plugin={args.plugin}",
                f"history={'no' if args.without_history else 'yes'}",
                *_oltp.rtt_fields(proxy),
            ]
            print("RESULT lag " + " ".join(fields), flush=True)
        final = writer.probe()  # after every pgbench commit: once it is there, so is the rest
        for db, poller in pollers.items():
            if not poller.wait_for(final, 600):
                print(f"  {db}: the final probe is not there 600 s after the load ended")
        if args.probes_json:
            args.probes_json.write_text(json.dumps({
                "committed": writer.committed, "counted": [counted.start, counted.stop],
                **{db: poller.seen for db, poller in pollers.items()},
            }))
        diff = _oltp.differences(
            src, dst, DESTINATIONS, skip=("pgbench_history",) if args.without_history else ()
        )
        print("destinations equal the source" if not diff else "DESTINATIONS DIFFER: " + "; ".join(diff))
        print(f"load average at end: {_oltp.load_average()}")
        return 0 if not diff else 1
    finally:
        if writer is not None:
            writer.close()
        for poller in pollers.values():
            poller.close()
        if ours is not None:
            ours.stop()
        if proxy is not None:
            proxy.close()
        src.destroy()
        dst.destroy()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
