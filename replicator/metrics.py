"""Prometheus metrics: one registry per run, served over HTTP with ``run --metrics-port``.

The modes call the small typed helpers below (``snapshot_table``, ``delta_pass_done``,
``track_slot``) and never touch ``prometheus_client`` themselves. Metrics are kept whether or not
anyone scrapes them; what they cost is paid per chunk, per pass or per scrape, never per change:

- snapshot and delta-snapshot update ordinary counters and gauges when a chunk commits or a pass
  ends;
- realtime is read at scrape time (``track_slot``): the pipeline keeps its plain counters
  (``SlotStats``, the apply worker's ``Progress``) and a collector turns them into metrics only
  when Prometheus asks, so the streaming loop does no extra work at all.

Every metric, what it means and what to alarm on: docs/operations.md.

``prometheus_client`` is imported when a registry is first made (``serve``, or a snapshot or
delta pass recording): a realtime run without ``--metrics-port`` never imports it (``track_slot``
only notes the slot), which keeps it out of every start-up (tests/test_cli_imports.py).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from replicator.errors import ConfigError
from replicator.lag import ApplyLag, seconds_or_nan

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    from replicator.destinations.base import Watermark

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"

# Delta passes take seconds (a few changed rows) to hours (a first pass over a large table).
PASS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, math.inf)


@dataclass(frozen=True)
class SlotSample:
    """One slot's figures at scrape time (``track_slot``)."""

    lag: ApplyLag | None  # None until the source's position has been read once
    retained_wal_bytes: int | None
    changes: int
    transactions: int
    commits: int
    reconnects: int
    last_commit: float | None  # Unix time of the last destination commit of this run
    applied_through: datetime | None  # source commit time of the last applied transaction


class _Slots:
    """Realtime slots, sampled when scraped: the streaming loop pays nothing for metrics. A
    prometheus_client collector (``collect``), kept for the process: tracking a slot needs no
    registry, and every registry made afterwards reports it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, Callable[[], SlotSample]] = {}

    def track(self, slot: str, sample: Callable[[], SlotSample]) -> Callable[[], None]:
        with self._lock:
            self._slots[slot] = sample

        def untrack() -> None:
            with self._lock:
                if self._slots.get(slot) is sample:
                    del self._slots[slot]

        return untrack

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["slot"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["slot"])

        lag_s = gauge(
            "replicator_slot_apply_lag_seconds",
            "0 when the slot has no backlog; else now minus the source commit time of the last applied "
            "transaction (NaN: backlog, nothing applied yet)",
        )
        lag_b = gauge(
            "replicator_slot_apply_lag_bytes", "source's current WAL position minus the slot's checkpoint"
        )
        retained = gauge("replicator_slot_retained_wal_bytes", "WAL the slot holds back on the source")
        changes = counter("replicator_slot_changes", "row changes read and handed to the destination")
        transactions = counter("replicator_slot_transactions", "source transactions read")
        commits = counter("replicator_slot_destination_commits", "destination transactions committed")
        reconnects = counter(
            "replicator_slot_reconnects", "times the stream resumed from its checkpoint after a failure"
        )
        last_commit = gauge(
            "replicator_slot_last_commit_timestamp_seconds", "when the destination last committed (Unix time)"
        )
        through = gauge(
            "replicator_slot_applied_through_timestamp_seconds",
            "source commit time of the last applied transaction, or when the slot was last caught up",
        )
        with self._lock:
            slots = sorted(self._slots.items())
        for slot, sample in slots:
            try:
                s = sample()
            except Exception:  # a scrape must not fail for one slot's trouble
                log.debug("metrics: cannot sample slot %s", slot, exc_info=True)
                continue
            if s.lag is not None:
                lag_s.add_metric([slot], seconds_or_nan(s.lag))
                lag_b.add_metric([slot], s.lag.bytes)
            if s.retained_wal_bytes is not None:
                retained.add_metric([slot], s.retained_wal_bytes)
            changes.add_metric([slot], s.changes)
            transactions.add_metric([slot], s.transactions)
            commits.add_metric([slot], s.commits)
            reconnects.add_metric([slot], s.reconnects)
            if s.last_commit is not None:
                last_commit.add_metric([slot], s.last_commit)
            if s.applied_through is not None:
                through.add_metric([slot], s.applied_through.timestamp())
        yield from (lag_s, lag_b, retained, changes, transactions, commits, reconnects, last_commit, through)


class Metrics:
    """Every metric of a run, in a registry of its own (the process's, Python's and the platform's
    standard metrics included)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            GCCollector,
            PlatformCollector,
            ProcessCollector,
            disable_created_metrics,
        )

        # The `_created` series of every counter and histogram only say when the process started.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.slots = _slots
        r.register(cast("Collector", self.slots))
        table = ["table"]
        self.snapshot_rows = Counter(
            "replicator_snapshot_rows", "rows copied by this run (counted when their chunk commits)", table,
            registry=r,
        )  # fmt: skip
        self.snapshot_bytes = Counter(
            "replicator_snapshot_bytes", "COPY bytes relayed by this run (counted when their chunk commits)",
            table, registry=r,
        )  # fmt: skip
        self.snapshot_chunks = Gauge("replicator_snapshot_chunks", "chunks the table's snapshot has", table,
                                     registry=r)  # fmt: skip
        self.snapshot_chunks_done = Gauge(
            "replicator_snapshot_chunks_done", "chunks committed (by this run or an earlier one)", table,
            registry=r,
        )  # fmt: skip
        self.snapshot_table_done = Gauge(
            "replicator_snapshot_table_done", "1 once the table is copied and its key built", table,
            registry=r,
        )  # fmt: skip
        self._delta: DeltaMetrics | None = None
        self._lock = threading.Lock()

    @property
    def delta(self) -> DeltaMetrics:
        """delta-snapshot's metrics, registered when first used: other modes do not show them."""
        with self._lock:
            if self._delta is None:
                self._delta = DeltaMetrics(self.registry)
            return self._delta


class DeltaMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        table = ["table"]
        self.pass_seconds = Histogram(
            "replicator_delta_pass_duration_seconds", "how long each successful delta pass took",
            buckets=PASS_BUCKETS, registry=r,
        )  # fmt: skip
        self.last_pass = Gauge(
            "replicator_delta_last_pass_timestamp_seconds", "when the last successful pass ended (Unix time)",
            registry=r,
        )  # fmt: skip
        self.pass_failures = Counter(
            "replicator_delta_pass_failures", "passes that failed (retried after the interval)", registry=r
        )
        self.upserted = Counter(
            "replicator_delta_rows_upserted", "rows read past the watermark and merged", table, registry=r
        )
        self.deleted = Counter("replicator_delta_rows_deleted", "rows removed as deleted", table, registry=r)
        self.watermark = Gauge(
            "replicator_delta_watermark",
            "where the table's next pass starts: the xmin transaction id, or the update key's lower bound "
            "when it is a number or a time zone aware timestamp (Unix time)",
            ["table", "kind"], registry=r,
        )  # fmt: skip
        self.watermark_moved = Gauge(
            "replicator_delta_watermark_timestamp_seconds",
            "when the table's watermark was last saved by a pass (Unix time)", table, registry=r,
        )  # fmt: skip


_slots = _Slots()
_current: Metrics | None = None  # made when first needed
_current_lock = threading.Lock()


def current() -> Metrics:
    global _current
    with _current_lock:
        if _current is None:
            _current = Metrics()
        return _current


def reset() -> Metrics:
    """A fresh registry for a new run (its counters start at 0)."""
    global _current
    with _current_lock:
        _current = Metrics()
        return _current


# -- the HTTP endpoint -------------------------------------------------------------------------


@dataclass
class MetricsServer:
    host: str
    port: int  # the bound port (the one asked for, or the one given for port 0)
    _server: Any

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(host: str, port: int, where: str) -> MetricsServer:
    """Serve a fresh registry at ``http://host:port/metrics``, in a thread; ``where`` names the
    setting (``--metrics-port`` or ``file:line: metrics.port``) in the error when the address
    cannot be bound: a busy port is refused at start (exit 2), never found out later."""
    from prometheus_client import start_http_server

    metrics = reset()
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(
            f"{where}: cannot serve metrics on {host}:{port}: {reason}; choose a free port (or stop what "
            f"listens there), or a host address of this machine"
        ) from None
    bound = MetricsServer(host, int(server.server_address[1]), server)
    log.info("serving Prometheus metrics at %s", bound.url)
    return bound


# -- snapshot ----------------------------------------------------------------------------------


class TableMeter:
    """One snapshot table's metrics; ``chunk_done`` when a chunk commits, ``finished`` at the end."""

    def __init__(self, table: str, chunks: int, done: int):
        m = current()
        self._rows = m.snapshot_rows.labels(table)
        self._bytes = m.snapshot_bytes.labels(table)
        self._done = m.snapshot_chunks_done.labels(table)
        self._finished = m.snapshot_table_done.labels(table)
        m.snapshot_chunks.labels(table).set(chunks)
        self._done.set(done)
        self._finished.set(0)
        self._rows.inc(0)  # present from the start, so rate() sees the first chunk
        self._bytes.inc(0)

    def chunk_done(self, rows: int, nbytes: int) -> None:
        self._rows.inc(rows)
        self._bytes.inc(nbytes)
        self._done.inc()

    def finished(self) -> None:
        self._finished.set(1)


def snapshot_table(table: str, chunks: int, done: int) -> TableMeter:
    return TableMeter(table, chunks, done)


# -- delta-snapshot ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TableCounts:
    table: str
    upserted: int
    deleted: int


def delta_pass_done(
    seconds: float, ended_at: float, tables: Iterable[TableCounts], marks: Mapping[str, Watermark]
) -> None:
    m = current().delta
    m.pass_seconds.observe(seconds)
    m.last_pass.set(ended_at)
    for t in tables:
        m.upserted.labels(t.table).inc(t.upserted)
        m.deleted.labels(t.table).inc(t.deleted)
    for table, mark in marks.items():
        m.watermark_moved.labels(table).set(ended_at)
        value = watermark_number(mark)
        if value is not None:
            m.watermark.labels(table, mark.kind).set(value)


def delta_pass_failed() -> None:
    current().delta.pass_failures.inc()


def watermark_number(mark: Watermark) -> float | None:
    """A watermark as one number, where it is one: the xmin, or a single update key's lower bound
    that is a number or a time zone aware timestamp (as Unix time)."""
    if mark.kind == "xmin":
        xmin = mark.value.get("xmin")  # a 64-bit transaction id, as text
        try:
            return float(xmin) if xmin is not None else None
        except (TypeError, ValueError):
            return None
    since = mark.value.get("since")
    if not isinstance(since, list) or len(since) != 1 or since[0] is None:
        return None
    text = str(since[0])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


# -- realtime ----------------------------------------------------------------------------------


def track_slot(slot: str, sample: Callable[[], SlotSample]) -> Callable[[], None]:
    """Report ``slot`` at every scrape by calling ``sample``; returns the function that stops it."""
    return _slots.track(slot, sample)
