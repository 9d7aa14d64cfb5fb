"""Where a realtime run's wall time goes, per thread, from a py-spy profile in raw (collapsed) form.

    py-spy record --threads --idle -r 200 -f raw -o prof.txt -- python -m replicator run realtime ...
    (or: python bench/realtime_oltp.py --ours-prefix
    'py-spy record --threads --idle -r 200 -f raw -o prof.txt --')
    python bench/pyspy_summary.py prof.txt [--top 25]

With --idle every sample is wall time, waiting included. For each thread: the share of its
samples under each replicator function (inclusive; frames below a function are counted once),
and what the innermost frame was doing: waiting for a server inside psycopg/libpq, waiting on
the socket of the replication stream, waiting for the other thread (queue), or running Python.
First, over all threads, the running (not waiting) samples by pipeline step (BUCKETS): their
shares are the shares of our process's CPU time even on a loaded machine, where wall-clock
shares are not.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")


def leaf_kind(frames: list[str]) -> str:
    leaf = frames[-1]
    if "selectors.py" in leaf or leaf.startswith("select "):
        return "waiting: stream socket (select)"
    if leaf.startswith(("Connection.wait ", "wait_c ", "wait ")) or "psycopg/waiting.py" in leaf:
        return "waiting: destination/source server (psycopg wait)"
    if "threading.py" in leaf or "queue.py" in leaf:
        return "waiting: the other thread (queue, lock, event)"
    if "psycopg/" in leaf:
        return "CPU: psycopg (Python)"
    if "replicator/" in leaf:
        return "CPU: replicator (Python)"
    return "CPU: other Python"


# Where a sample of the realtime pipeline belongs: the first rule (in this order) whose function
# is on its stack. Waiting samples are kept apart by leaf_kind().
BUCKETS = [
    ("destination: Begin (BEGIN, SET LOCAL)", ("Writer._begin",)),
    ("destination: commit (checkpoint row, COMMIT)", ("Writer.commit",)),
    ("destination: keyless inserts (COPY runs, in order)", ("Writer._apply_in_order",)),
    ("destination: stage COPY", ("Writer._stage_text", "Writer._stage", "Writer._copy_fresh")),
    ("destination: merge statements", ("Writer._upsert", "Writer._update", "Writer._delete", "Writer._move",
                                       "Writer._truncate")),
    ("destination: other", ("Writer.flush", "Writer.apply")),
    ("worker: waiting for work", ("ApplyWorker._run",)),
    ("reader: hand-off to the worker", ("ApplyWorker._put",)),
    ("reader: staging texts (prepare_all)", ("prepare_all",)),
    ("reader: fold", ("Folder.change", "Folder.source_commit", "Folder.commit")),
    ("reader: Begin/Commit/Relation decode (Python)", ("PgOutputDecoder.decode", "PgOutputDecoder._on_begin",
                                                        "PgOutputDecoder._on_commit")),
    ("reader: wal2json decode (Python)", ("Wal2JsonDecoder",)),
    ("reader: row messages (C pump)", ("native_pump",)),
    ("reader: stream read loop", ("ReplicationStream.read", "SqlReader.read")),
    ("reader: confirm / status", ("SlotPipeline._confirm", "ReplicationStream.confirm", "_send_status")),
    ("reader: heartbeat / WAL watch", ("HeartbeatWriter", "WalWatch")),
    (
        "reader: loop body (_fold, _stream)",
        ("SlotPipeline._fold", "SlotPipeline._commit", "SlotPipeline._stream"),
    ),
    ("start-up and set-up", ("<module>",)),
]


def bucket_of(frames: list[str]) -> str:
    text = ";".join(frames)
    for name, needles in BUCKETS:
        if any(n in text for n in needles):
            return name
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    totals: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    buckets: Counter[tuple[str, bool]] = Counter()  # (bucket, waiting) over all threads
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        if thread.startswith("thread (") and len(frames) > 1 and not FRAME.match(frames[1]):
            thread = f"{thread} {frames[1]}"  # py-spy puts the thread's name in a frame of its own
            frames = frames[1:]
        body = frames[1:]
        if not body:
            continue
        totals[thread] += count
        seen = set()
        for f in body:
            m = FRAME.match(f)
            if m and "replicator/" in (m.group("file") or ""):
                name = f"{m.group('func')} ({m.group('file')})"
                if name not in seen:
                    seen.add(name)
                    inclusive[thread][name] += count
        kind = leaf_kind(body)
        leaves[thread][kind] += count
        buckets[(bucket_of(body), kind.startswith("waiting"))] += count
    running = sum(n for (_, waiting), n in buckets.items() if not waiting)
    print(f"running samples (not waiting), all threads: {running}; by pipeline step:")
    for (name, waiting), n in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if not waiting:
            print(f"  {100 * n / max(1, running):5.1f}%  {name}")
    print("waiting samples, all threads, by pipeline step:")
    for (name, waiting), n in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if waiting:
            print(f"  {n:7d}  {name}")
    for thread, total in totals.most_common():
        print(f"\n{thread}: {total} samples")
        for kind, n in leaves[thread].most_common():
            print(f"  {100 * n / total:5.1f}%  {kind}")
        print("  inclusive, by replicator function:")
        for name, n in inclusive[thread].most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
