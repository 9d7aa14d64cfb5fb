"""A TCP proxy that adds a fixed network round trip: the benchmarks' stand-in for a destination
across a real network (RDS: 0.2-1 ms), on a machine without netem.

    python -m bench._delay --target-port 5432 --rtt-ms 1 [--listen-port 0]
    python -m bench._delay --check --target-port 5432 --rtt-ms 1   # SELECT 1 through it and not

Every chunk read on either side is written to the other side rtt/2 after it was read, in order:
one reader and one writer thread per direction, joined by a FIFO of (due time, bytes). The delay
is the same for every chunk, so the order is kept and nothing waits on anything but its own
clock; there is no throughput cap (a chunk is forwarded whole, however big). TCP_NODELAY on both
sides, so small messages are not held back by Nagle. Threads and time.sleep rather than asyncio:
asyncio's epoll wait rounds its timeout up to whole milliseconds, too coarse for 0.25 ms.

It runs as its own process (``DelayProxy`` starts it) so that the benchmark's own threads, and
their GIL, do not jitter its timing.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 256 * 1024


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pump(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
    """Forward src -> dst, each chunk ``delay_s`` after it was read."""
    fifo: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            while data := src.recv(CHUNK):
                fifo.put((time.monotonic() + delay_s, data))
        except OSError:
            pass
        fifo.put(None)

    def write() -> None:
        # How late a sleep wakes up, on average (scheduler and GIL latency, ~0.1-0.2 ms here): the
        # writer sleeps that much less. Each sample is clamped to the delay, so that one long stall
        # cannot make it stop sleeping altogether.
        late = 0.0
        try:
            while (item := fifo.get()) is not None:
                due, data = item
                wake_at = due - late
                wait = wake_at - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                    overshoot = min(max(time.monotonic() - wake_at, 0.0), delay_s / 2)
                    late += 0.05 * (overshoot - late)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # The other side is gone: close both so that the reader (and the peer pump) end too.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=write, daemon=True).start()


def _fine_timer_slack() -> None:
    """Linux lets a sleep end up to 50 us late by default (timer slack); ask for 1 ns."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def serve(listen: socket.socket, target: tuple[str, int], rtt_ms: float) -> None:
    delay_s = rtt_ms / 2000
    _fine_timer_slack()
    while True:
        client, _ = listen.accept()
        try:
            server = socket.create_connection(target)
        except OSError:
            client.close()
            continue
        for s in (client, server):
            _nodelay(s)
        _pump(client, server, delay_s)
        _pump(server, client, delay_s)


class DelayProxy:
    """The proxy as a child process: ``port`` is where to connect instead of the target."""

    def __init__(self, target_port: int, rtt_ms: float, target_host: str = "127.0.0.1"):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._delay", "--target-host", target_host,
             "--target-port", str(target_port), "--rtt-ms", str(rtt_ms)],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("listening "):
            self.proc.kill()
            raise SystemExit(f"the delay proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.rtt_ms = rtt_ms

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _select1_ms(port: int, n: int) -> float:
    """Median milliseconds of ``SELECT 1`` on one connection to 127.0.0.1:port (n queries)."""
    import psycopg

    from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD

    times = []
    with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, password=SUPERUSER_PASSWORD,
                         dbname="postgres", autocommit=True) as conn:
        for _ in range(n):
            t = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def check(target_port: int | None, rtts: list[float], n: int) -> None:
    """Median SELECT 1 time direct and through the proxy at each RTT (a throwaway cluster unless
    --target-port names one)."""
    cluster = root = None
    if target_port is None:
        import tempfile

        from replicator.localpg import start_cluster

        root = Path(tempfile.mkdtemp(prefix="replicator-bench-delay-"))
        root.chmod(0o755)
        cluster = start_cluster(root / "pg")
        target_port = cluster.port
    try:
        direct = _select1_ms(target_port, n)
        print(f"direct: SELECT 1 median {direct:.3f} ms ({n} queries)", flush=True)
        for rtt in rtts:
            proxy = DelayProxy(target_port, rtt)
            try:
                through = _select1_ms(proxy.port, n)
            finally:
                proxy.close()
            print(f"proxy rtt {rtt:g} ms: SELECT 1 median {through:.3f} ms, added {through - direct:.3f} ms "
                  f"(overhead beyond the RTT {through - direct - rtt:.3f} ms)", flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int)
    p.add_argument("--rtt-ms", type=float, action="append", help="round trip added (repeat with --check)")
    p.add_argument("--listen-port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--check", action="store_true", help="measure SELECT 1 direct and through the proxy")
    p.add_argument("--queries", type=int, default=2000, help="--check: queries per measurement")
    args = p.parse_args()
    rtts = args.rtt_ms or [0.0]
    if args.check:
        check(args.target_port, rtts, args.queries)
        return 0
    if args.target_port is None or len(rtts) != 1:
        p.error("--target-port and one --rtt-ms are needed to serve")
    listen = socket.create_server(("127.0.0.1", args.listen_port))
    print(f"listening {listen.getsockname()[1]}", flush=True)
    serve(listen, (args.target_host, args.target_port), rtts[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
