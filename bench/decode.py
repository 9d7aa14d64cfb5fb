"""Decode benchmark: our pgoutput stream + decoder against pg_recvlogical on the same backlog.

    python bench/decode.py [--changes 1000000]

Starts a throwaway cluster, builds a backlog of inserts, updates and deletes (transactions of
1,000 rows) behind four pgoutput slots created at the same point, then, in the same run and in
the order reference, ours, ours, reference (the best of each pair counts):

- reference: PostgreSQL's pg_recvlogical receives the backlog and writes it to /dev/null
  (the server decodes, the C client does nothing with the data: the cost of the stream itself);
- ours: ReplicationStream + PgOutputDecoder turn the same backlog into Change events.

Prints both rates and the ratio (ours / reference: 1.0 means decoding costs us nothing over the
bare stream), the changes our process handles per CPU-second (above the reference rate, the
server's decoding is the limit wherever our process has a core of its own), our decoder's rate
on its own (messages already in memory), and our peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replicator.config.connection import ConnectionConfig  # noqa: E402
from replicator.decoding.changes import Change  # noqa: E402
from replicator.decoding.pgoutput import NATIVE, PgOutputDecoder  # noqa: E402
from replicator.localpg import LocalCluster, start_cluster  # noqa: E402
from replicator.lsn import Lsn  # noqa: E402
from replicator.source.publication import PublishedTable, ensure_publication  # noqa: E402
from replicator.source.slots import create_slot  # noqa: E402
from replicator.source.stream import ReplicationStream  # noqa: E402

BATCH = 1000


def build_backlog(conn: psycopg.Connection, changes: int) -> tuple[int, Lsn]:
    """Inserts (half), updates (3/10) and deletes (the rest), in autocommitted transactions of BATCH rows."""
    inserts = changes // 2 // BATCH
    updates = changes * 3 // 10 // BATCH
    deletes = changes // BATCH - inserts - updates
    for b in range(inserts):
        conn.execute(
            "INSERT INTO bench SELECT i, i, md5(i::text) || ' ' || now()::text FROM "
            "generate_series(%s::int, %s::int) i",
            (b * BATCH + 1, (b + 1) * BATCH),
        )
    for b in range(updates):
        conn.execute(
            "UPDATE bench SET n = n + 1, pad = upper(pad) WHERE id > %s AND id <= %s",
            (b * BATCH, (b + 1) * BATCH),
        )
    top = inserts * BATCH
    for b in range(deletes):
        conn.execute("DELETE FROM bench WHERE id > %s AND id <= %s", (top - (b + 1) * BATCH, top - b * BATCH))
    row = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
    assert row is not None
    return (inserts + updates + deletes) * BATCH, Lsn(row[0])


def run_reference(cluster: LocalCluster, slot: str, end: Lsn) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            str(cluster.bindir / "pg_recvlogical"),
            "-d",
            cluster.conninfo("bench"),
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=pub",
            "--endpos",
            str(end),
            "-f",
            "/dev/null",
        ],
        check=True,
    )
    return time.perf_counter() - started


def run_ours(cfg: ConnectionConfig, slot: str, end: Lsn) -> tuple[float, float, int]:
    """Wall time, CPU time of this process, and the changes decoded."""
    started = time.perf_counter()
    cpu = time.process_time()
    seen = 0
    with ReplicationStream.open(cfg, slot, PgOutputDecoder(["pub"])) as stream:
        while stream.position < end:
            events = stream.read(max_events=10_000, timeout=0.2)
            seen += sum(1 for e in events if type(e) is Change)
    return time.perf_counter() - started, time.process_time() - cpu, seen


def decoder_only(conn: psycopg.Connection, slot: str, limit: int) -> tuple[float, int]:
    """Our decoder alone, on messages fetched into memory first (the slot is only peeked)."""
    for _ in range(100):  # the walsender of the stream just closed may still be exiting
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is not None and not row[0]:
            break
        time.sleep(0.1)
    rows = conn.execute(
        "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, "
        "'proto_version', '1', 'publication_names', 'pub')",
        (slot, limit),
        binary=True,
    ).fetchall()
    decoder = PgOutputDecoder(["pub"])
    started = time.perf_counter()
    changes = 0
    for lsn, data in rows:
        for event in decoder.decode(data, lsn):
            if type(event) is Change:
                changes += 1
    return time.perf_counter() - started, changes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1_000_000)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="replicator-bench-"))
    os.chmod(root, 0o755)
    cluster = start_cluster(root / "pg", settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    try:
        cluster.create_database("bench")
        cfg = ConnectionConfig.model_validate(cluster.connection_config("bench"))
        with psycopg.connect(cluster.conninfo("bench"), autocommit=True) as conn:
            conn.execute("CREATE TABLE bench (id int PRIMARY KEY, n int, pad text)")
            ensure_publication(conn, "pub", [PublishedTable("public", "bench")])
            for slot in ("ref_1", "ours_1", "ours_2", "ref_2"):
                create_slot(conn, slot, "pgoutput")
            print(f"building a backlog of {args.changes:,} changes ...", flush=True)
            t0 = time.perf_counter()
            total, end = build_backlog(conn, args.changes)
            print(f"  {total:,} changes, WAL up to {end}, in {time.perf_counter() - t0:.1f}s", flush=True)

            # Each side twice, in the order A B B A, so that drift (caches warming, other load on
            # the machine) does not favour either; the best run of each is compared.
            ref_runs = [run_reference(cluster, "ref_1", end)]
            ours_runs = [run_ours(cfg, "ours_1", end), run_ours(cfg, "ours_2", end)]
            ref_runs.append(run_reference(cluster, "ref_2", end))
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            for _, _, seen in ours_runs:
                if seen != total:
                    print(f"error: decoded {seen:,} changes, expected {total:,}", file=sys.stderr)
                    return 1
            ref_s = min(ref_runs)
            ours_s, ours_cpu, _ = min(ours_runs)
            dec_s, dec_n = decoder_only(conn, "ours_1", 200_000)

        print()
        runs = ", ".join(f"{r:.2f}s" for r in ref_runs)
        print(
            f"pg_recvlogical -> /dev/null : {ref_s:7.2f}s  {total / ref_s:>10,.0f} changes/s  (runs: {runs})"
        )
        runs = ", ".join(f"{r[0]:.2f}s" for r in ours_runs)
        print(
            f"ours (stream + decode)      : {ours_s:7.2f}s  {total / ours_s:>10,.0f} changes/s  (runs: "
            f"{runs})"
        )
        print(f"ratio (ours / reference)    : {ref_s / ours_s:7.2f}  (1.0 = as fast as the bare stream)")
        print(
            f"our CPU while streaming     : {ours_cpu:7.2f}s  {total / ours_cpu:>10,.0f} changes per "
            "CPU-second"
            f" ({os.cpu_count()} cores shared with the server)"
        )
        print(
            f"decoder alone               : {dec_n / dec_s:>19,.0f} changes/s ({dec_n:,} changes in memory)"
        )
        print(f"peak RSS while streaming    : {peak_mb:7.0f} MB")
        print(f"row decoder                 : {'C extension' if NATIVE else 'pure Python'}")
        return 0
    finally:
        cluster.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
