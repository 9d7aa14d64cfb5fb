"""One slot's pipeline: read decoded changes, apply them in batches, checkpoint, acknowledge.

Reading, decoding and folding run on the pipeline's thread, staging, merging and committing on
an ``ApplyWorker`` thread that owns the destination connection (``worker.py``), so the
destination works while we read.

The source hears only what the destination has committed: after each destination commit the
checkpoint LSN is confirmed to the slot; when everything received is applied and no
transaction is open, the stream's own position is confirmed too, so an idle slot keeps up.

A failure the retry rule calls transient (``replicator.retry``: a broken replication connection,
a server restart, the network, the slot still held by our previous walsender) rolls back the
open destination transaction and resumes from the checkpoint: nothing lost, nothing twice.
``max-retries`` failures in a row end the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.catalog import Catalog, load_types
from replicator.conditions import require_expression
from replicator.connect import connect, describe, retrying_for
from replicator.decoding.changes import Begin, Change, Commit, Decoder, Event, Message, Truncate
from replicator.decoding.fold import Folder
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.decoding.wal2json import Wal2JsonDecoder
from replicator.destinations import open_destination
from replicator.destinations.base import Applier, DestinationSession, NewColumnType, SourceRows, Target
from replicator.errors import SourceError
from replicator.job import Job
from replicator.lsn import Lsn
from replicator.realtime import follow
from replicator.realtime.lagtrack import LagTracker
from replicator.realtime.positions import (
    LostSlot,
    ReadOnlyNode,
    in_recovery,
    lost_slot_message,
    read_only_node_message,
)
from replicator.realtime.setup import SlotPlan, start_position
from replicator.realtime.worker import ApplyWorker, Progress
from replicator.retry import Streak, is_transient
from replicator.source import ddlcapture
from replicator.source.describe import CatalogDescriber
from replicator.source.heartbeat import HeartbeatWriter
from replicator.source.membership import Member, MembershipWatch
from replicator.source.reader import ChangeReader
from replicator.source.session import apply_output_settings
from replicator.source.slots import wal2json_accepts
from replicator.source.sqlreader import SqlReader
from replicator.source.stream import ReplicationStream
from replicator.source.walwatch import WalWatch

log = logging.getLogger(__name__)

APP = "replicator/realtime"
STOP_GRACE_S = 30.0  # on stop, how long to wait for an open source transaction to commit
PROGRESS_EVERY_S = 10.0  # how often a streaming slot logs what it has done
READ_EVENTS = 2_000  # events per read at most: a worker that goes idle waits at most one read


@dataclass
class SlotStats:
    transactions: int = 0
    changes: int = 0
    commits: int = 0
    confirmed: Lsn = Lsn(0)


class SlotPipeline:
    """Streams one slot into the destination until ``stop`` is set (or, with ``until``, caught up)."""

    def __init__(
        self,
        job: Job,
        plan: SlotPlan,
        targets: dict[tuple[str, str], Target],
        heartbeat: bool,
        write_heartbeat: bool = True,
    ):
        self.job = job
        self.plan = plan
        self.targets = {k: v for k, v in targets.items() if k in plan.table_keys}
        self.aliases = {
            (p.schema, p.name): (t.table.schema, t.table.name)
            for t in plan.tables
            for p in t.table.partitions
        }
        self.heartbeat = heartbeat  # the heartbeat table exists and is published
        self.write_heartbeat = heartbeat and write_heartbeat
        self.cfg = job.extractor.value.realtime
        self.stats = SlotStats()
        self.lag = LagTracker(plan.slot, self.stats)  # metrics, the progress line, status
        self._failures = Streak()  # failures in a row: a stream that reads again is healthy
        # Every streamed table still in its publication? (someone else's ALTER PUBLICATION)
        self.membership = MembershipWatch(_members(plan), self.cfg.heartbeat.interval_ms / 1000)
        # aux serves the reader (heartbeat, WAL watch) and the worker (types)
        self._aux_lock = threading.Lock()
        self._capture = False  # the DDL capture is installed on the source (set by run)
        self._rewind = False  # the schema follower goes back to the checkpoint before streaming again
        self._follower: follow.SchemaFollower

    def run(self, stop: threading.Event, until: Lsn | None = None) -> SlotStats:
        src_cfg = self.job.source.value
        dst = open_destination(self.job.destination.value).open_session(APP, role="writer")
        # heartbeat, WAL watch, type lookups; reopened after a lost connection (see below)
        aux = self._aux = connect(src_cfg, "source", APP, autocommit=True)
        try:
            writer = dst.applier(
                self.job.job_id, self.plan.slot, self.targets, self._column_type(), self._source_rows()
            )
            folder = Folder(
                {k: t.key for k, t in self.targets.items()}, self.aliases, self.cfg.fetch_size_rows,
                ordered=[k for k, t in self.targets.items() if t.in_order_fallback],
            )
            writer_hb = HeartbeatWriter(aux, self.cfg.heartbeat) if self.write_heartbeat else None
            watch = WalWatch(src_cfg.log_monitoring, [self.plan.slot])
            # Schema changes the DDL capture writes into the stream (follow.py).
            # (pgoutput sends logical messages from PostgreSQL 14 on.)
            self._capture = ddlcapture.state(aux).installed and (
                self.plan.plugin != "pgoutput" or aux.info.server_version >= 140000
            )
            writer.captured_schema = self._capture
            follower = self._follower = follow.for_slot(self.job, self.plan, self.targets, self.heartbeat)

            def resume_from_checkpoint(e: BaseException) -> None:
                # Whatever was read but not committed is read again from the checkpoint, on
                # connections that work: a restart, a lost bastion or network takes them down too.
                folder.clear()
                self.lag.reset()
                writer.rollback()
                if not dst.usable:
                    dst.reopen()
                    writer.reset()
                # The routing goes back to the checkpoint's, read when the stream opens again: the
                # destination's connection may be dead without knowing it yet (a lost tunnel).
                self._rewind = True
                if not _answers(self._aux):
                    self._aux.close()
                    self._aux = connect(src_cfg, "source", APP, autocommit=True)
                    if writer_hb is not None:
                        writer_hb.conn = self._aux

            what = f"streaming slot {self.plan.slot}"
            try:
                for attempt in retrying_for(
                    src_cfg, what, streak=self._failures, before_retry=resume_from_checkpoint
                ):
                    with attempt:
                        self._stream(dst, self._aux, folder, writer, writer_hb, watch, stop, until)
            except Exception as e:
                if not is_transient(e):
                    raise
                raise SourceError(
                    f"slot {self.plan.slot}: giving up after {self._failures.failures - 1} reconnects: {e}"
                ) from None
            return self.stats
        finally:
            follower.close()
            dst.close()
            self._aux.close()

    def _open_reader(self, dst: DestinationSession, aux: psycopg.Connection[Any]) -> ChangeReader:
        src_cfg = self.job.source.value
        slot_row = aux.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (self.plan.slot,),
        ).fetchone()
        if in_recovery(aux):
            # A failover under way: a reader (or the old writer turned standby) has no usable slot yet.
            raise ReadOnlyNode(read_only_node_message(describe(src_cfg)))
        self.membership.check(aux)  # at every (re)connection, before streaming
        if slot_row is None:
            # Dropped, or a failover reached a server that never had it: never stream on silently.
            checkpoint = dst.state.slot_checkpoint(self.job.job_id, self.plan.slot)
            raise LostSlot(lost_slot_message(self.plan.slot, checkpoint or Lsn(0), describe(src_cfg)))
        configured = self.cfg.start_position.start_lsn if self.cfg.start_position else None
        start = start_position(
            dst.state, self.job.job_id, self.plan.slot, Lsn.parse(slot_row[0]) if slot_row[0] else None,
            Lsn.parse(configured) if configured else None,
        )
        decoder = self._decoder(aux)
        if src_cfg.log_reader_type == "SQL":
            return SqlReader.open(
                src_cfg,
                self.plan.slot,
                decoder,
                start,
                fetch_rows=self.cfg.fetch_size_rows,
                poll_interval_s=min(1.0, self.cfg.fetch_duration_per_extractor_slot_s),
                application_name=APP,
            )
        return ReplicationStream.open(src_cfg, self.plan.slot, decoder, start, application_name=APP)

    def _decoder(self, aux: psycopg.Connection[Any]) -> Decoder:
        if self.plan.plugin == "pgoutput":
            assert self.plan.publication is not None
            # Tables without a replica identity come through a second, insert-only publication;
            # logical messages carry the DDL capture's schema changes (PostgreSQL 14+).
            return PgOutputDecoder(
                self.plan.publications(self.heartbeat), messages=aux.info.server_version >= 140000
            )
        if self._capture:  # tables renamed or created later must be decoded too: the folder picks
            exact = wal2json_accepts(aux, self.plan.slot, "numeric-data-types-as-string")
            return Wal2JsonDecoder(CatalogDescriber(aux), None, numeric_as_string=exact)
        # wal2json names leaf partitions, not their root: ask for those, and map them back (aliases).
        tables = [*self.targets, *self.aliases]
        if self.heartbeat:
            hb = self.cfg.heartbeat
            tables.append((hb.schema_name or "public", hb.table_name))
        exact_numbers = wal2json_accepts(aux, self.plan.slot, "numeric-data-types-as-string")
        return Wal2JsonDecoder(CatalogDescriber(aux), tables, numeric_as_string=exact_numbers)

    def _stream(
        self,
        dst: DestinationSession,
        aux: psycopg.Connection[Any],
        folder: Folder,
        writer: Applier,
        heartbeat: HeartbeatWriter | None,
        watch: WalWatch,
        stop: threading.Event,
        until: Lsn | None,
    ) -> None:
        """Read and fold on this thread, write on the worker's, until caught up or stopped.

        Group commit (worker.py): whatever complete transactions are folded go to the worker as
        soon as it is idle; while it is busy they keep folding into the next batch. A batch is
        also handed over (queued behind the one in progress) once it holds ``fetch-size-rows``
        changes or is ``fetch-duration-per-extractor-slot-s`` old: both are upper bounds, never
        waits. Reads return as soon as nothing more is ready, and a read waiting for the stream
        wakes when the worker goes idle."""
        follower = self._follower
        if self._rewind:
            follower.rewind(dst.state.slot_checkpoint(self.job.job_id, self.plan.slot) or Lsn(0), folder)
            self._rewind = False
        reader = self._open_reader(dst, aux)
        batch_s = self.cfg.fetch_duration_per_extractor_slot_s
        max_changes = self.cfg.fetch_size_rows
        read_events = min(max_changes, READ_EVENTS)
        idle_wait = min(batch_s, 1.0)  # heartbeat, WAL watch and status run at least this often
        pending = follower.pending(dst)
        worker = ApplyWorker(writer, name=f"apply-{self.plan.slot}").start()
        follower.start(pending, worker)
        progress = worker.progress
        progress.applied = reader.position  # where the stream starts: the destination has all before it
        stats = self.stats
        in_txn = False
        drained = Lsn(0)  # the last position handed to the worker as drained
        stopping_since: float | None = None
        report = _ProgressReport(self.plan.slot, stats, self.lag)
        try:
            while True:
                events = reader.read(read_events, idle_wait, follower.until(until), wake=worker.wake_fd)
                # Fold up to the last source commit read, hand that over if it is time, then fold
                # the rest (an open transaction is never handed over with a checkpoint).
                cut = _after_last_commit(events)
                if cut:
                    in_txn = self._fold(events[:cut] if cut < len(events) else events, folder, worker, in_txn)
                # Only at a source transaction boundary: a read without a commit that follows one
                # ending inside a transaction leaves its first changes folded with the complete
                # ones; handing those over would commit part of it (issue 11).
                if folder.pending_transactions and (cut or not in_txn) and (
                    not worker.busy or folder.open_seconds >= batch_s or stop.is_set()
                    or (until is not None and reader.position >= until)
                ):
                    self._commit(folder, worker)
                if cut < len(events):
                    in_txn = self._fold(events[cut:] if cut else events, folder, worker, in_txn)
                if not in_txn:  # refreshes whose snapshot the stream has reached, on an idle stream
                    follower.on_idle(reader.position, folder, worker, lambda: self._commit(folder, worker))
                self.lag.observe(progress, idle=not events and not in_txn and not folder.pending_transactions)
                if not in_txn and not folder.pending_transactions and reader.position > drained:
                    # Everything read is (or will be, in order) committed; never wait to say so.
                    if worker.offer_drained(reader.position):
                        drained = reader.position
                # A stream that (re)opened and reads is healthy: max-retries counts failures in a row.
                self._failures.reset()
                worker.check()
                self._confirm(reader, progress)
                report.maybe(progress.commits, reader.position)
                with self._aux_lock:
                    if heartbeat is not None:
                        heartbeat.tick()
                    watch.check_if_due(aux)
                    self.membership.check_if_due(aux)
                    self.lag.sample_source_if_due(aux)
                if until is not None and not in_txn and reader.position >= (follower.until(until) or until):
                    break
                if stop.is_set():
                    if not in_txn:
                        break
                    stopping_since = stopping_since or time.monotonic()
                    if time.monotonic() - stopping_since > STOP_GRACE_S:
                        log.warning("slot %s: stopping inside a large source transaction; it will be "
                                    "applied from its start next time", self.plan.slot)
                        worker.abort()
                        folder.clear()
                        return
            self._commit(folder, worker)
            # Recorded at once (an earlier drained mark may still wait for its turn): what the
            # source is told at the end is what the checkpoint holds.
            worker.drained(reader.position, last=True)
            worker.finish()
            self._confirm(reader, progress)
        finally:
            worker.abort()  # no-op once finished; else rolls back what is not committed
            stats.commits += progress.commits
            reader.close()

    def _fold(self, events: list[Event], folder: Folder, worker: ApplyWorker, in_txn: bool) -> bool:
        """Fold one read's events, handing ready units to the worker; returns whether the stream
        is inside a source transaction after them. At a source commit, a batch that reached
        ``fetch-size-rows`` changes is handed over with its checkpoint (waiting while the worker
        is that far behind)."""
        change = folder.change
        max_changes = self.cfg.fetch_size_rows
        changes = transactions = 0
        follower = self._follower
        commit: Commit | None = None
        for ev in events:
            # Changes first, and one plain isinstance each: this runs for every event.
            if isinstance(ev, Change) or isinstance(ev, Truncate):
                ready = change(ev)
                changes += 1
                if ready:
                    for folded in ready:
                        worker.apply(folded)
            elif isinstance(ev, Begin):
                in_txn = True
                follower.on_begin(ev.final_lsn, folder, worker)
            elif isinstance(ev, Commit):
                in_txn = False
                folder.source_commit(ev.end_lsn)
                transactions += 1
                commit = ev
                if folder.transaction_changes >= max_changes:
                    self.lag.read(ev.commit_time)  # the batch handed now ends with this one
                    self._commit(folder, worker)
            elif isinstance(ev, Message):
                follower.on_message(ev, folder, worker, lambda: self._commit(folder, worker))
        follower.flush(worker)  # the refreshes those changes need: one snapshot for them all
        if commit is not None:
            self.lag.read(commit.commit_time)
        self.stats.changes += changes
        self.stats.transactions += transactions
        return in_txn

    def _commit(self, folder: Folder, worker: ApplyWorker) -> None:
        done = folder.commit()
        if done is not None:
            ready, lsn = done
            for folded in ready:
                worker.apply(folded)
            worker.commit(lsn)
            self.lag.handed(lsn)

    def _confirm(self, reader: ChangeReader, progress: Progress) -> None:
        """Tell the source what the destination has committed (and, when nothing is pending,
        everything read: keeps an idle slot current)."""
        committed, drained = progress.committed, progress.drained
        if committed is not None and committed > reader.confirmed:
            reader.confirm(committed)
            self.stats.confirmed = committed
        if drained is not None and drained > reader.confirmed:
            reader.confirm(drained)

    def _column_type(self) -> NewColumnType:
        def column_type(oid: int, typmod: int) -> tuple[str, Catalog]:
            """A column type as SQL for ALTER TABLE ADD COLUMN, and the user types it needs."""
            aux = self._aux  # the current one: it is reopened after a lost connection
            with self._aux_lock, aux.transaction():
                aux.execute("SELECT set_config('search_path', '', true)")
                row = aux.execute("SELECT format_type(%s, %s)", (oid, typmod)).fetchone()
                catalog = Catalog()
                with aux.cursor() as cur:
                    load_types(cur, catalog, {oid})
            assert row is not None
            return str(row[0]), catalog

        return column_type

    def _source_rows(self) -> SourceRows:
        def source_rows(
            table: tuple[str, str], columns: Sequence[str], key: Sequence[str], keys: list[tuple[Any, ...]],
            condition: str,
        ) -> list[tuple[Any, ...]]:
            """The source's current rows among ``keys`` that match ``condition`` (values as text)."""
            query = sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({}) AND ({})").format(
                sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                sql.Identifier(*table),
                # The key columns as they are (the literals take their types): the key index is used.
                sql.SQL(", ").join(sql.Identifier(k) for k in key),
                sql.SQL(", ").join(
                    sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, k))) for k in keys
                ),
                sql.SQL(require_expression(condition)),
            )
            aux = self._aux  # the current one: it is reopened after a lost connection
            with self._aux_lock, aux.transaction():
                apply_output_settings(aux)
                return [tuple(r) for r in aux.execute(query).fetchall()]

        return source_rows


def _after_last_commit(events: list[Event]) -> int:
    """The index just past the last Commit in ``events`` (0: none)."""
    for i in range(len(events) - 1, -1, -1):
        if type(events[i]) is Commit:
            return i + 1
    return 0


class _ProgressReport:
    """Logs a slot's throughput and apply lag every ``PROGRESS_EVERY_S``: long catch-ups are never
    silent, and a slot falling behind says so."""

    def __init__(self, slot: str, stats: SlotStats, lag: LagTracker):
        self.slot = slot
        self.stats = stats
        self.lag = lag
        self.last_at = time.monotonic()
        self.last_changes = stats.changes

    def maybe(self, commits: int, position: Lsn) -> None:
        now = time.monotonic()
        if now - self.last_at < PROGRESS_EVERY_S:
            return
        rate = (self.stats.changes - self.last_changes) / (now - self.last_at)
        lag = self.lag.lag()
        log.info(
            "slot %s: %d changes in %d transactions read (%.0f changes/s), %d destination commits, "
            "confirmed %s, read up to %s, apply lag %s",
            self.slot, self.stats.changes, self.stats.transactions, rate, self.stats.commits + commits,
            self.stats.confirmed, position, lag.describe() if lag else "not measured yet",
        )
        self.last_at, self.last_changes = now, self.stats.changes


def _answers(conn: psycopg.Connection[Any]) -> bool:
    """Whether a connection still works: after a restart it looks fine until it is used."""
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _members(plan: SlotPlan) -> list[Member]:
    """The streamed tables and the publication each must stay in (pgoutput only)."""
    if plan.publication is None:
        return []
    members = [Member(t.table.oid, t.table.schema, t.table.name, plan.publication) for t in plan.identified]
    if plan.insert_only_publication is not None:
        members += [
            Member(t.table.oid, t.table.schema, t.table.name, plan.insert_only_publication)
            for t in plan.insert_only
        ]
    return members


def current_wal_lsn(job: Job) -> Lsn:
    """Where ``run --once`` stops: the end of the source's WAL now, every commit that has returned
    included, and durable, so that a walsender (which sends only flushed WAL) gets there at once.

    The *insert* position, not ``pg_current_wal_lsn()`` (the write position): with
    ``synchronous_commit = off`` a transaction whose commit has returned can sit in the WAL
    buffers, past the write position, until the WAL writer's next round. The transaction that
    follows (an xid and a commit flushed locally, nothing else) flushes everything before it: without
    it the stream would wait for the WAL writer, or, for a last record that is not a commit, until
    someone writes more WAL."""
    with connect(job.source.value, "source", APP, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = local")  # flushed here; no standby waited for
            conn.execute("SELECT pg_catalog.txid_current()")
    assert row is not None
    return Lsn.parse(row[0])

