"""What the OLTP benchmarks share (bench/realtime_oltp.py, bench/lag.py): pgbench's tables on a
source cluster, identical copies in destination databases, a native subscription as the
reference, our own runs as child processes, and pgbench itself.

Every cluster runs with ``fsync = off`` and ``synchronous_commit = off`` (issue 11): with these,
the reference's floor is the source's WAL writer (a walsender sends only flushed WAL), the same
for both consumers. Leave one cluster with other settings and the reference moves.

pgbench's ``pgbench_history`` has no key and REPLICA IDENTITY DEFAULT; pgbench only inserts into
it, so it is published and replicated as it is (no REPLICA IDENTITY FULL): both consumers apply
its inserts.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._delay import DelayProxy  # noqa: E402
from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD, LocalCluster, find_bindir, start_cluster  # noqa: E402

SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "max_wal_size": "4GB",
    "wal_sender_timeout": "0",  # a consumer stopped between rounds is not a failure
}
TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")
SOURCE_DB = "bench"


def start(root: Path, name: str, extra: dict[str, str] | None = None) -> LocalCluster:
    return start_cluster(root / name, settings={**SETTINGS, **(extra or {})})


def pgbench_path() -> Path:
    path = find_bindir() / "pgbench"
    if not path.exists():
        raise SystemExit(
            f"{path} is missing: it comes with the postgresql-15 package (./scripts/setup.sh installs it)"
        )
    return path


def pgbench(
    cluster: LocalCluster, db: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run pgbench against ``db`` and wait for it."""
    return subprocess.run(
        pgbench_cmd(cluster, db, *args), env=pg_env(), capture_output=True, text=True, check=check
    )


def pgbench_cmd(cluster: LocalCluster, db: str, *args: str) -> list[str]:
    return [str(pgbench_path()), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER, *args, db]


def pg_env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}


def tps_of(pgbench_output: str) -> float:
    for line in pgbench_output.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    return float("nan")


def transactions_of(pgbench_output: str) -> int:
    for line in pgbench_output.splitlines():
        if line.startswith("number of transactions actually processed:"):
            return int(line.split(":")[1].split("/")[0].strip())
    return 0


def build_source(src: LocalCluster, scale: int, publications: dict[str, Sequence[str]],
                 extra_ddl: Sequence[str] = ()) -> None:
    """pgbench's tables at ``scale`` in SOURCE_DB (and ``extra_ddl``), and the publications asked
    for (name -> tables)."""
    src.create_database(SOURCE_DB)
    pgbench(src, SOURCE_DB, "-i", "-q", "-s", str(scale))
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        for ddl in extra_ddl:
            conn.execute(ddl)
        for name, tables in publications.items():
            # replicator's insert-only publication (tables without a key) publishes nothing else.
            insert_only = name.endswith("_insert_only")
            publish = "insert, truncate" if insert_only else "insert, update, delete, truncate"
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {})").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.Identifier(t) for t in tables),
                    sql.Literal(publish),
                )
            )
        conn.execute("VACUUM ANALYZE")


def copy_to(src: LocalCluster, dst: LocalCluster, db: str, extra_ddl: Sequence[str] = ()) -> None:
    """A new database ``db`` at ``dst`` with pgbench's tables (pgbench's own DDL, keys built after
    the data) holding what the source holds now."""
    dst.create_database(db)
    pgbench(dst, db, "-i", "-q", "-I", "dt")
    with (
        psycopg.connect(dst.conninfo(db), autocommit=True) as d,
        psycopg.connect(src.conninfo(SOURCE_DB)) as s,
    ):
        for ddl in extra_ddl:
            d.execute(ddl)
        for table in TABLES:
            ident = sql.Identifier(table)
            with s.cursor().copy(sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(ident)) as out:
                with d.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(ident)) as into:
                    for block in out:
                        into.write(block)
    pgbench(dst, db, "-i", "-q", "-I", "p")
    with psycopg.connect(dst.conninfo(db), autocommit=True) as d:
        d.execute("VACUUM ANALYZE")


def create_subscription(
    src: LocalCluster, dst: LocalCluster, db: str, publication: str, enabled: bool
) -> None:
    """The reference: a native subscription in ``db`` (slot ``native``), no initial copy."""
    with psycopg.connect(dst.conninfo(db), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION native_sub CONNECTION {} PUBLICATION {} "
                "WITH (copy_data = false, enabled = {}, create_slot = true, slot_name = 'native')"
            ).format(sql.Literal(src.conninfo(SOURCE_DB)), sql.Identifier(publication), sql.Literal(enabled))
        )


def flushed_end(src: LocalCluster, timeout_s: float = 30) -> str:
    """The end of the WAL written so far, once it is flushed.

    With synchronous_commit = off a commit that pgbench saw succeed may still sit in the WAL
    buffers, past pg_current_wal_lsn() (the *write* position) and unsent (a walsender sends
    only flushed WAL) until the WAL writer's next round. Waiting for it here means every
    consumer timed afterwards sees the same, complete backlog, and a `--once` run (which stops
    at pg_current_wal_lsn() at its start) does not stop short of the last transactions."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        end = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        while not conn.execute("SELECT pg_current_wal_flush_lsn() >= "
                               "%s", (end,)).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise SystemExit(f"the source did not flush its WAL up to {end} in {timeout_s:.0f} s")
            time.sleep(0.01)
        return str(end)


def wait_slot_confirmed(src: LocalCluster, slot: str, target: str, timeout_s: float = 3600) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        while not conn.execute(
            "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s", (target, slot)
        ).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise SystemExit(f"slot {slot} did not reach {target} in {timeout_s:.0f} s")
            time.sleep(0.02)


def wait_slot_inactive(src: LocalCluster, slot: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        while conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise SystemExit(f"slot {slot} still in use after {timeout_s:.0f} s")
            time.sleep(0.05)


def write_configs(workdir: Path, src: LocalCluster, dst: LocalCluster, name: str, slot: str, plugin: str,
                  db: str, publication: str | None, extractor: str,
                  tables: Sequence[str] | None = None,
                  destination_port: int | None = None) -> dict[str, Path]:
    """source/destination/extractor (and, with ``tables``, filter) YAML files for one of our consumers;
    ``destination_port`` instead of the destination cluster's own (a bench._delay proxy in front of it)."""
    extra: dict[str, object] = {"replication-slots": {slot: [plugin]}}
    if publication:
        extra["publication"] = publication
    paths = {k: workdir / f"{name}-{k}.yaml" for k in ("source", "destination", "extractor")}
    paths["source"].write_text(yaml.safe_dump(src.connection_config(SOURCE_DB, **extra)))
    destination = dst.connection_config(db)
    if destination_port is not None:
        destination["port"] = destination_port
    paths["destination"].write_text(yaml.safe_dump(destination))
    paths["extractor"].write_text(extractor or "{}\n")
    if tables is not None:
        paths["filter"] = workdir / f"{name}-filter.yaml"
        paths["filter"].write_text(
            yaml.safe_dump(
                {
                    "allow": {
                        "catalog": SOURCE_DB,
                        "schema": "public",
                        "types": ["TABLE"],
                        "allow": {t: None for t in tables},
                    }
                }
            )
        )
    return paths


def replicator_cmd(paths: dict[str, Path], once: bool, prefix: Sequence[str] = (),
                   python: str | None = None) -> list[str]:
    return [
        *prefix,
        python or sys.executable,
        "-m",
        "replicator",
        "run",
        "realtime",
        *(["--once"] if once else []),
        "--no-progress",
        "--source",
        str(paths["source"]),
        "--destination",
        str(paths["destination"]),
        "--extractor",
        str(paths["extractor"]),
        *(["--filter", str(paths["filter"])] if "filter" in paths else []),
    ]


@dataclass
class Child:
    """One of our runs as a child process, its peak RSS sampled (VmHWM of the replicator
    process itself, found under a profiler prefix too)."""

    args: list[str]
    log_path: Path
    cwd: Path = REPO  # the tree whose replicator runs (python -m finds the cwd's package first)
    proc: subprocess.Popen[bytes] = field(init=False)
    peak_kb: int = 0
    started: float = 0.0
    _sampler: threading.Thread | None = None

    def start(self) -> Child:
        self.started = time.perf_counter()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def replicator_pid(self) -> int | None:
        """Our process: the child itself, or the one a prefix (a profiler) started."""
        for pid in _descendants(self.proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"replicator" in args and not any(b"py-spy" in a or b"pyinstrument" in a for a in args[:2]):
                return pid
        return None

    def _sample(self) -> None:
        while self.proc.poll() is None:
            pid = self.replicator_pid()
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except (OSError, TypeError):
                status = ""
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.05)

    def wait(self, timeout: float | None = None) -> float:
        """Wait for the end; seconds since start. Raises if it failed."""
        rc = self.proc.wait(timeout)
        elapsed = time.perf_counter() - self.started
        if self._sampler is not None:
            self._sampler.join()
        if rc != 0:
            raise SystemExit(
                f"replicator exited {rc}; its log: {self.log_path}\n{self.log_path.read_text()[-3000:]}"
            )
        return elapsed

    def stop(self) -> None:
        """SIGTERM to our process (not to a profiler around it, which then writes its output)."""
        if self.proc.poll() is None:
            os.kill(self.replicator_pid() or self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


FINGERPRINT = {
    "pgbench_accounts": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY aid)) FROM pgbench_accounts t",
    "pgbench_branches": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY bid)) FROM pgbench_branches t",
    "pgbench_tellers": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t",
    # No key: compare as a multiset.
    "pgbench_history": "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM "
                       "pgbench_history t",
}


def differences(
    src: LocalCluster, dst: LocalCluster, dbs: Sequence[str], skip: Sequence[str] = ()
) -> list[str]:
    """Tables of ``dbs`` that differ from the source (empty: all equal)."""
    with psycopg.connect(src.conninfo(SOURCE_DB)) as s:
        want = {t: s.execute(q).fetchone() for t, q in FINGERPRINT.items() if t not in skip}
    out = []
    for db in dbs:
        with psycopg.connect(dst.conninfo(db)) as d:
            for t, q in FINGERPRINT.items():
                if t in skip:
                    continue
                got = d.execute(q).fetchone()
                if got != want[t]:
                    out.append(
                        f"{db}.{t}: {got[0] if got else None} rows, source {want[t][0] if want[t] else None}"
                    )
    return out


def add_destination_rtt_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--destination-rtt-ms",
        type=float,
        help="our destination connections go through bench/_delay.py, which adds this round trip (the "
        "native subscription applies inside the destination: untouched); 0 measures the proxy alone",
    )


def destination_proxy(dst: LocalCluster, rtt_ms: float | None) -> DelayProxy | None:
    """The delay proxy in front of ``dst`` for our connections, when --destination-rtt-ms asks for one."""
    if rtt_ms is None:
        return None
    proxy = DelayProxy(dst.port, rtt_ms)
    print(f"our destination connections go through a proxy adding {rtt_ms:g} ms per round trip "
          f"(127.0.0.1:{proxy.port} -> {dst.port})", flush=True)
    return proxy


def rtt_fields(proxy: DelayProxy | None) -> list[str]:
    """RESULT fields saying what stood between us and the destination."""
    return [f"destination_rtt_ms={proxy.rtt_ms if proxy else 0:g}", f"proxy={'yes' if proxy else 'no'}"]


def byte_compile(tree: Path) -> str:
    """Compile ``tree``'s replicator package to bytecode (its __pycache__, ignored by git), as
    ``pip install`` does for an installed package; says so, for the benchmark's first lines.

    A development tree run in place (``pip install -e``) has no bytecode, and with
    PYTHONDONTWRITEBYTECODE=1 (as set in this project's sessions) Python never writes any: every
    run of ours compiled its ~100 modules from source again, about 70 ms of CPU before the first
    connection, which no installed replicator pays. Stale files are recompiled (source mtime)."""
    import compileall

    ok = compileall.compile_dir(str(tree / "replicator"), quiet=1)
    return f"bytecode of {tree / 'replicator'} {'compiled' if ok else 'NOT compiled (errors)'}"


def code_under_test() -> str:
    """Which replicator this benchmark runs (our runs start with cwd = this tree)."""
    import replicator

    return f"replicator under test: {Path(replicator.__file__).parent}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def positions(src: LocalCluster, dst: LocalCluster, dbs: Sequence[str]) -> str:
    """Our slots' confirmed positions and our checkpoints, to diagnose a difference."""
    out = []
    with psycopg.connect(src.conninfo(SOURCE_DB), autocommit=True) as conn:
        for slot, lsn in conn.execute(
            "SELECT slot_name, confirmed_flush_lsn::text FROM pg_replication_slots ORDER BY 1"
        ):
            out.append(f"slot {slot} confirmed {lsn}")
        out.append(f"source at {conn.execute('SELECT pg_current_wal_lsn()::text').fetchone()[0]}")  # type: ignore[index]
    for db in dbs:
        with psycopg.connect(dst.conninfo(db), autocommit=True) as conn:
            for slot, lsn in conn.execute("SELECT slot_name, lsn::text FROM _replicator.slot_checkpoints"):
                out.append(f"checkpoint {slot} {lsn}")
    return ", ".join(out)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, of_process: int | None = None) -> float | None:
    """User + system CPU of a process (all its threads) so far; with ``of_process``, of its thread ``pid``."""
    path = f"/proc/{pid}/stat" if of_process is None else f"/proc/{of_process}/task/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuSampler(threading.Thread):
    """CPU seconds spent by one consumer's processes while it catches up: its walsender at the
    source, its backends at the destination (native: the apply worker; ours: our sessions) and,
    for ours, our own process. Sampled every 0.1 s, each process's last value kept (they exit
    with the consumer)."""

    def __init__(self, src: LocalCluster, dst: LocalCluster, slot: str, db: str, ours: Child | None = None):
        super().__init__(daemon=True)
        self.src, self.dst, self.slot, self.db, self.ours = src, dst, slot, db, ours
        self.ours_pid: int | None = None
        self.seen: dict[tuple[str, int], float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.src.conninfo(SOURCE_DB), autocommit=True) as s, \
                psycopg.connect(self.dst.conninfo(), autocommit=True) as d:  # not in db: no statements there
            while True:
                pids = [
                    ("source walsender", r[0])
                    for r in s.execute(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s AND active_pid IS "
                        "NOT NULL",
                        (self.slot,),
                    )
                ]
                pids += [
                    ("destination backends", r[0])
                    for r in d.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND (backend_type = 'logical replication worker' OR application_name LIKE "
                        "'replicator%%')",
                        (self.db,),
                    )
                ]
                if self.ours is not None and self.ours_pid is None:
                    self.ours_pid = self.ours.replicator_pid()
                if self.ours_pid:
                    # Per thread: the main thread reads, decodes and folds; the other one applies.
                    try:
                        tids = [int(t) for t in os.listdir(f"/proc/{self.ours_pid}/task")]
                    except OSError:
                        tids = []
                    for tid in tids:
                        role = (
                            "replicator main thread" if tid == self.ours_pid else "replicator other threads"
                        )
                        value = cpu_seconds(tid, self.ours_pid)
                        if value is not None:
                            self.seen[(role, tid)] = max(value, self.seen.get((role, tid), 0.0))
                for key in pids:
                    value = cpu_seconds(key[1])
                    if value is not None:
                        self.seen[key] = max(value, self.seen.get(key, 0.0))
                if self.done.wait(0.1):
                    return

    def stop(self) -> dict[str, float]:
        """CPU seconds by role."""
        self.done.set()
        self.join()
        out: dict[str, float] = {}
        for (role, _), value in self.seen.items():
            out[role] = out.get(role, 0.0) + value
        return out


# Destination settings for counting statements (pg_stat_statements; CREATE EXTENSION once started).
STATEMENTS_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "all",
                       "pg_stat_statements.max": "10000"}


def reset_statements(dst: LocalCluster) -> None:
    with psycopg.connect(dst.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def report_statements(dst: LocalCluster, db: str, transactions: int, ignore: Sequence[str] = ()) -> None:
    """Our statements in ``db`` since reset_statements(), per source transaction and per destination
    commit (each of ours writes the slot checkpoint once); statements starting with ``ignore`` are
    the benchmark's own."""
    with psycopg.connect(dst.conninfo(), autocommit=True) as conn:
        rows = conn.execute(
            """SELECT s.calls, s.total_exec_time, s.rows, regexp_replace(s.query, '\\s+', ' ', 'g')
               FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
               WHERE d.datname = %s ORDER BY s.calls DESC""",
            (db,),
        ).fetchall()
    rows = [r for r in rows if not r[3].startswith(tuple(ignore))]
    calls = sum(r[0] for r in rows)
    exec_ms = sum(r[1] for r in rows)
    commits = sum(r[0] for r in rows if r[3].startswith("INSERT INTO _replicator.slot_checkpoints"))
    print(
        f"    {db}: {calls:,} destination statements for {transactions:,} source transactions "
        f"({calls / max(1, transactions):.2f} each) in {commits:,} destination commits "
        f"({transactions / max(1, commits):,.0f} source transactions and {calls / max(1, commits):,.1f} "
        "statements "
        f"each), {exec_ms / 1000:.2f} s executing; most frequent:"
    )
    for c, t, n, q in rows[:14]:
        print(f"      {c:>9,} calls {t / 1000:7.2f} s {n:>9,} rows  {q[:110]}")
