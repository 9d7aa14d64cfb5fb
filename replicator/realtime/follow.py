"""Following the source's schema changes in one slot's stream (issue 13).

The DDL capture (``source/ddlcapture.py``) writes each change into the WAL; the stream brings it
in its transaction, between the rows written before and after it. On the pipeline's thread,
``SchemaFollower.on_message``:

1. hands the worker everything folded so far (those rows are applied to the table as it was),
2. works out the destination steps for the tables this slot replicates (``decoding/ddlplan``),
   and a table that enters replication (created in a schema the filter takes whole, moved into
   one, added to the publication by hand),
3. changes the routing the folder uses at once (the rows that follow carry the new names), and
   hands the change to the worker, which applies it in the open destination transaction: it
   commits with the checkpoint of the source transaction that made the change,
4. for rows the stream does not carry (``Refresh``): takes a snapshot now, has the worker copy
   the rows under it, and merges them when the stream reaches the snapshot's position
   (``on_begin`` / ``on_idle``; see ``realtime/refresh.py`` for why that is exact).

If the destination transaction rolls back (a transient failure), the routing goes back to what
the last checkpoint covers (``rewind``); the stream replays from there and meets the changes again.
Refreshes recorded as pending in the state store are planned again at every (re)start.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replicator.config.connection import ConnectionConfig
from replicator.decoding import ddl, ddlplan
from replicator.decoding.changes import Message
from replicator.decoding.ddl import DdlMessage, TableEvent, TableShape
from replicator.decoding.ddlplan import Policy, SchemaChange, Step, TableName
from replicator.decoding.fold import Folder
from replicator.destinations.base import Applier, DestinationSession, PendingRefresh, StreamTable
from replicator.errors import SchemaChangeError
from replicator.lsn import Lsn
from replicator.realtime.refresh import RefreshSnapshot
from replicator.realtime.worker import ApplyWorker

log = logging.getLogger(__name__)

ALL_SCHEMAS = "*"


@dataclass
class Followed:
    """A source table this slot replicates, as the stream has it at the reading position."""

    table: TableName  # its name, which is the destination table's
    relid: int
    key: tuple[str, ...]
    key_from: str | None  # 'primary-key', 'row-identifier-key' (kept through renames), None: no key
    columns: frozenset[str] | None = None  # the filter's column list; None: every column
    partitions: dict[TableName, int] = field(default_factory=dict)  # leaf partitions (wal2json names them)


@dataclass
class Scope:
    """What a slot follows beyond its tables: new tables of these schemas (``ALL_SCHEMAS``: any),
    when new tables go to this slot."""

    slot: str
    whole_schemas: frozenset[str]
    slot_of_new: Callable[[TableName], str]  # which slot takes a new table (``new_table_slot``)
    publication: str | None  # pgoutput: the slot's publication (new tables must be in it)
    heartbeat: TableName | None = None
    policy: Policy = field(default_factory=Policy)
    accepted: frozenset[Lsn] = frozenset()  # unfollowable changes the operator made good by hand

    def selects(self, shape: TableShape) -> bool:
        if shape.qualified == self.heartbeat or shape.persistence == "u":
            return False
        return ALL_SCHEMAS in self.whole_schemas or shape.schema in self.whole_schemas


@dataclass
class _Merge:
    point: Lsn
    refreshes: list[PendingRefresh]


class SchemaFollower:
    """See the module docstring. One per slot pipeline; used on the pipeline's thread only."""

    def __init__(self, job: str, slot: str, source: ConnectionConfig, scope: Scope, followed: list[Followed]):
        self.job, self.slot, self.source, self.scope = job, slot, source, scope
        self.followed = {f.relid: f for f in followed}
        self._journal: list[tuple[Lsn, dict[int, Followed]]] = []  # (transaction's commit, routing before)
        self._merges: list[_Merge] = []
        self._wanted: dict[tuple[TableName, int], PendingRefresh] = {}  # snapshot not taken yet
        self._snapshots: list[RefreshSnapshot] = []
        self.txn_commit = Lsn(0)  # commit LSN of the source transaction being read (Begin.final_lsn)
        self.changes = 0
        self._changes_at_begin = 0  # the folder's changes when the open source transaction began

    # -- routing -------------------------------------------------------------------------------

    def route(self, folder: Folder) -> None:
        """Make the folder's routing the followed tables'."""
        folder.keys.clear()
        folder.aliases.clear()
        for f in self.followed.values():
            folder.keys[f.table] = f.key
            for part in f.partitions:
                folder.aliases[part] = f.table

    def rewind(self, checkpoint: Lsn, folder: Folder) -> None:
        """The destination rolled back to ``checkpoint``: forget what came after, close snapshots."""
        for commit, before in self._journal:
            if commit >= checkpoint:  # that transaction is not in the destination
                self.followed = before
                break
        self._journal = [(c, b) for c, b in self._journal if c < checkpoint]
        self._close_snapshots()
        self._merges.clear()
        self._wanted.clear()
        self.route(folder)

    # -- the stream ----------------------------------------------------------------------------

    def pending(self, dst: DestinationSession) -> list[PendingRefresh]:
        """At the start of the stream: record which destination table each source table feeds
        from here (``stream_tables``); return the refreshes the destination still owes."""
        with dst.transaction():
            tables = {
                f.relid: StreamTable(self.slot, f.table, f.key, f.key_from) for f in self.followed.values()
            }
            dst.state.save_stream_tables(self.job, self.slot, tables, replace=True)
        return dst.state.pending_refreshes(self.job, self.slot)

    def start(self, pending: list[PendingRefresh], worker: ApplyWorker) -> None:
        """At every (re)start of the stream: plan again the refreshes the destination still owes."""
        self._close_snapshots()
        self._merges.clear()
        self._wanted.clear()
        if pending:
            log.info(
                "slot %s: %d refresh(es) pending from an earlier run: copying again", self.slot, len(pending)
            )
            for r in pending:
                self._want(r)
            self.flush(worker)

    def on_message(
        self, message: Message, folder: Folder, worker: ApplyWorker, commit: Callable[[], None] | None = None
    ) -> None:
        """``commit``: commits the source transactions folded so far (their checkpoint with them)."""
        if not ddl.is_ddl(message) or not message.transactional:
            return
        parsed = ddl.parse(message)
        if parsed.error:
            self._unfollowed(parsed, folder, worker, commit)
        before = {k: copy.copy(v) for k, v in self.followed.items()}
        change = self._plan(parsed)
        self._journal.append((self.txn_commit, before))
        if change is None:
            self.route(folder)  # partitions created empty: only the names wal2json gives change
            return
        for ready in folder.take():  # rows read before the change go to the table as it was
            worker.apply(ready)
        self.route(folder)
        worker.call(lambda writer: writer.apply_schema(change))
        self.changes += 1
        for s in change.steps:
            if isinstance(s, ddlplan.Refresh):
                self._want(PendingRefresh(s.table, s.relid, s.whole, s.why, parsed.lsn))

    def _unfollowed(
        self, parsed: DdlMessage, folder: Folder, worker: ApplyWorker, commit: Callable[[], None] | None
    ) -> None:
        """The capture could not describe this change: stop before it (the rows after it may not fit
        the destination's tables), unless the operator has accepted it. When nothing of the change's
        own transaction is folded yet, the transactions before it are committed first, so that the
        stream stops exactly at it and a fix by hand at the destination comes after them."""
        where = str(parsed.lsn)
        if parsed.lsn in self.scope.accepted:
            log.warning(
                "slot %s: going past the %s at %s that the DDL capture could not describe (%s): accepted "
                "in the destination config (schema-changes: accept-unfollowed)",
                self.slot,
                parsed.tag,
                where,
                parsed.error,
            )
            return
        applied = "Nothing after the last checkpoint was applied"
        if commit is not None and folder.transaction_changes == self._changes_at_begin:
            commit()
            worker.finish()  # committed: the destination holds everything before the change
            applied = "Everything before it is applied, nothing after it"
        raise SchemaChangeError(
            f"slot {self.slot}: stopped before the {parsed.tag} at {where}: the DDL capture failed on the "
            f"source ({parsed.error}), so the destination cannot know what it changed. {applied}. "
            "Fix: repair the capture (replicator install-ddl-capture "
            "--source <a superuser's config>; the source's log has the WARNING), make the destination "
            "tables match the source's by hand (or reload them), then add it to the destination config "
            f"and start again:\n  schema-changes:\n    accept-unfollowed: ['{where}']"
        )

    def on_begin(self, final_lsn: Lsn, folder: Folder, worker: ApplyWorker) -> None:
        """A source transaction committing at ``final_lsn`` starts: merge the refreshes whose
        snapshot it is not in (everything committing before it is applied by now)."""
        self.txn_commit = final_lsn
        self._changes_at_begin = folder.transaction_changes
        if self._merges and self._merges[0].point <= final_lsn:
            self._merge_due(final_lsn, folder, worker)

    def on_idle(self, position: Lsn, folder: Folder, worker: ApplyWorker, commit: Callable[[], None]) -> None:
        """No transaction open and the stream at ``position``: merge what is due, and commit it."""
        if self._merges and self._merges[0].point <= position:
            commit()  # what is folded commits under its own checkpoint first
            self._merge_due(position, folder, worker)
            worker.commit(position)

    def until(self, until: Lsn | None) -> Lsn | None:
        """A catch-up (``--once``) goes on until the refreshes planned are merged."""
        if until is None or not self._merges:
            return until
        return max(until, self._merges[-1].point)

    def close(self) -> None:
        self._close_snapshots()

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, message: DdlMessage) -> SchemaChange | None:
        change = SchemaChange(message.lsn, message.tag, [])
        added_by_hand = {
            p.relid: p
            for p in message.publications
            if p.event == "added" and p.publication == self.scope.publication and p.shape
        }
        for event in message.tables:
            self._table_event(message, event, change)
        for relid, pub in added_by_hand.items():
            if relid not in self.followed and pub.shape is not None and self._takes(pub.shape, message):
                entering = TableEvent(relid, None, pub.shape, rows=pub.rows)
                self._enter(
                    entering, change, f"table {pub.shape.display} added to publication {pub.publication}"
                )
        for pub in message.publications:
            if pub.event == "refused" and pub.publication == self.scope.publication:
                log.error(
                    "new table %s.%s is NOT replicated: the DDL capture could not add it to publication "
                    "%s: %s. Fix it, then add it by hand (ALTER PUBLICATION %s ADD TABLE %s.%s;): its rows "
                    "are then "
                    "copied and streamed from there",
                    pub.schema,
                    pub.name,
                    pub.publication,
                    pub.error,
                    pub.publication,
                    pub.schema,
                    pub.name,
                )
        return change if change.steps or change.removed or change.added else None

    def _table_event(self, message: DdlMessage, event: TableEvent, change: SchemaChange) -> None:
        followed = self.followed.get(event.relid)
        if followed is None or (event.created and event.after is not None):
            # A table entering replication; or one created after the checkpoint, which the run took
            # from the catalog at its start: its CREATE (and the rows it came with) replays.
            if event.after is not None and (followed is not None or self._takes(event.after, message)):
                why = (
                    "new table holding rows" if event.created else f"table entered the filter ({message.tag})"
                )
                self._enter(event, change, why)
            return
        table = followed.table
        if event.after is None:
            del self.followed[event.relid]
            change.removed[table] = event.relid
            self._moved(table, None)
            if event.attached_to is not None:
                log.info(
                    "%s became a partition of another table: its rows now arrive through that table; "
                    "the destination keeps %s as it is",
                    ".".join(table),
                    ".".join(table),
                )
                change.steps.append(ddlplan.DropTable(table, keep=True))
            else:
                change.steps += ddlplan.plan_dropped(table, self.scope.policy)
            return
        if event.before is None:
            return  # not registered before: nothing to compare with (the capture was reinstalled)
        after = event.after
        if after.schema != event.before.schema and not (
            ALL_SCHEMAS in self.scope.whole_schemas
            or after.schema in self.scope.whole_schemas
            or after.schema == table[0]
        ):
            log.warning(
                "%s moved to schema %s, which the filter does not replicate: it is no longer replicated; "
                "the destination keeps it as %s",
                ".".join(table),
                after.schema,
                ".".join(table),
            )
            del self.followed[event.relid]
            change.removed[table] = event.relid
            self._moved(table, None)
            return
        steps = ddlplan.plan_altered(table, event, message.using, self.scope.policy)
        steps = self._within_columns(followed, event, steps)
        change.steps += steps
        renamed = {
            o.name: n.name
            for a, o in event.before.by_attnum().items()
            if (n := after.by_attnum().get(a)) is not None and n.name != o.name
        }
        key = self._new_key(followed, event, renamed)
        if followed.columns is not None:
            followed.columns = frozenset(renamed.get(c, c) for c in followed.columns)
        followed.partitions = {(p.schema, p.name): p.relid for p in after.partitions if p.leaf}
        if after.qualified != table or key != followed.key:
            change.removed[table] = event.relid
            change.added[after.qualified] = (key, _nullable(after, key), event.relid, followed.key_from)
            followed.table, followed.key = after.qualified, key
            if after.qualified != table:
                self._moved(table, after.qualified)

    def _new_key(self, followed: Followed, event: TableEvent, renamed: dict[str, str]) -> tuple[str, ...]:
        assert event.after is not None
        if followed.key_from == "row-identifier-key":
            key = tuple(renamed.get(k, k) for k in followed.key)
            if all(event.after.column(k) is not None for k in key):
                return key
        key = event.after.key
        followed.key_from = "primary-key" if key else None
        return key

    def _within_columns(self, followed: Followed, event: TableEvent, steps: list[Step]) -> list[Step]:
        """A table replicated with a column list: only its columns are followed (the publication
        publishes no other)."""
        if followed.columns is None:
            return steps
        kept = followed.columns | {s.to for s in steps if isinstance(s, ddlplan.RenameColumn)}
        column_steps = (
            ddlplan.AddColumn,
            ddlplan.AlterType,
            ddlplan.SetNotNull,
            ddlplan.SetDefault,
            ddlplan.DropExpression,
        )
        out: list[Step] = []
        for s in steps:
            if isinstance(s, ddlplan.AddColumn):
                continue
            if isinstance(s, column_steps) and getattr(s, "name", None) not in kept:
                continue
            out.append(s)
        return out

    def _takes(self, shape: TableShape, message: DdlMessage) -> bool:
        """Whether a table entering replication is this slot's to follow."""
        if self.scope.slot_of_new(shape.qualified) != self.scope.slot or not self.scope.selects(shape):
            return False
        if self.scope.publication is None:
            return True  # wal2json decodes every table
        return any(
            p.relid == shape.relid and p.publication == self.scope.publication and p.event == "added"
            for p in message.publications
        )

    def _enter(self, event: TableEvent, change: SchemaChange, why: str) -> None:
        after = event.after
        assert after is not None
        table = after.qualified
        key = after.key
        if not after.publishable_changes:
            log.warning(
                "new table %s has no primary key: only its inserts can be replicated safely; add a primary "
                "key (or REPLICA IDENTITY FULL) to replicate its updates and deletes",
                after.display,
            )
        self.followed[event.relid] = Followed(
            table,
            event.relid,
            key,
            "primary-key" if key else None,
            None,
            {(p.schema, p.name): p.relid for p in after.partitions if p.leaf},
        )
        change.steps += ddlplan.plan_created(table, event, why)
        change.added[table] = (key, _nullable(after, key), event.relid, "primary-key" if key else None)
        log.info("slot %s: %s starts being replicated (%s)", self.slot, after.display, why)

    # -- refreshes -----------------------------------------------------------------------------

    def _want(self, r: PendingRefresh) -> None:
        """A refresh to plan at the end of this read (several changes to a table in a backlog share
        one copy): a later one supersedes an earlier one not merged yet."""
        key = (r.table, r.relid)
        earlier = self._wanted.get(key)
        if earlier is not None:
            r = PendingRefresh(r.table, r.relid, r.whole or earlier.whole, r.reason, earlier.since)
        self._wanted[key] = r

    def _moved(self, table: TableName, to: TableName | None) -> None:
        """``table`` was renamed (``to``) or is no longer replicated (None): so are its refreshes."""

        def rename(rs: list[PendingRefresh]) -> list[PendingRefresh]:
            out = []
            for r in rs:
                if r.table != table:
                    out.append(r)
                elif to is not None:
                    out.append(PendingRefresh(to, r.relid, r.whole, r.reason, r.since))
            return out

        self._wanted = {(r.table, r.relid): r for r in rename(list(self._wanted.values()))}
        for m in self._merges:
            m.refreshes = rename(m.refreshes)

    def flush(self, worker: ApplyWorker) -> None:
        """Take one snapshot for the refreshes wanted, and have the worker copy their rows now."""
        if not self._wanted:
            return
        wanted, self._wanted = list(self._wanted.values()), {}
        keys = {(r.table, r.relid) for r in wanted}
        for m in self._merges:  # superseded: the new snapshot is later
            m.refreshes = [r for r in m.refreshes if (r.table, r.relid) not in keys]
        self._merges = [m for m in self._merges if m.refreshes]
        self._plan_refreshes(wanted, worker)

    def _plan_refreshes(self, refreshes: list[PendingRefresh], worker: ApplyWorker) -> None:
        snapshot = RefreshSnapshot.take(self.source)
        self._snapshots.append(snapshot)
        source = self.source

        def stage(writer: Applier) -> None:
            try:
                for r in refreshes:
                    reader = snapshot.reader(source, r.relid)
                    found = reader.columns()
                    if found is None:
                        log.warning(
                            "%s: relation %d is gone from the source: nothing to copy",
                            ".".join(r.table),
                            r.relid,
                        )
                        continue
                    columns, not_null = found
                    writer.stage_refresh(r.table, r.relid, columns, not_null, reader.fill(columns))
            finally:
                snapshot.close()

        worker.call(stage)
        self._merges.append(_Merge(snapshot.point, refreshes))
        self._merges.sort(key=lambda m: m.point)

    def _merge_due(self, at: Lsn, folder: Folder, worker: ApplyWorker) -> None:
        for ready in folder.take():
            worker.apply(ready)
        while self._merges and self._merges[0].point <= at:
            due = self._merges.pop(0)
            for r in due.refreshes:
                worker.call(_merger(r))

    def _close_snapshots(self) -> None:
        for s in self._snapshots:
            try:
                s.close()
            except Exception:  # closing what may be broken already
                pass
        self._snapshots.clear()


def _merger(r: PendingRefresh) -> Callable[[Applier], None]:
    return lambda writer: writer.merge_refresh(r.table, r.relid, r.whole)


def _nullable(shape: TableShape, key: tuple[str, ...]) -> bool:
    return any((c := shape.column(k)) is not None and not c.not_null for k in key)


def new_table_slot(slots: dict[str, str]) -> Callable[[TableName], str]:
    """Which slot takes a table created at the source: the first pgoutput slot (whose publication
    the DDL capture adds it to), else the slot ``plan_slots`` would give it (a stable hash)."""
    names = list(slots)
    pgoutput = [n for n in names if slots[n] == "pgoutput"]

    def slot_of(table: TableName) -> str:
        if pgoutput:
            return pgoutput[0]
        return names[zlib.crc32(f"{table[0]}.{table[1]}".encode()) % len(names)]

    return slot_of


def followed_tables(plan: Any, targets: dict[TableName, Any]) -> list[Followed]:
    """The slot's tables at the start of the stream (``SelectedTable``s, ghosts, their ``Target``s)."""
    plan_tables = plan.tables
    out = [
        Followed(g.table, relid, g.key, g.key_from) for relid, g in plan.ghosts.items() if g.table in targets
    ]
    for st in plan_tables:
        key = (st.table.schema, st.table.name)
        target = targets.get(key)
        if target is None:
            continue
        columns = None if len(st.columns) == len(st.table.columns) else frozenset(c.name for c in st.columns)
        out.append(
            Followed(
                key,
                st.table.oid,
                target.key,
                st.key_from,
                columns,
                {(p.schema, p.name): 0 for p in st.table.partitions},
            )
        )
    return out


def whole_schemas(filter_file: Any) -> frozenset[str]:
    """The schemas a filter replicates whole (new tables there are followed); no filter: every one."""
    if filter_file is None:
        return frozenset({ALL_SCHEMAS})
    return frozenset(sf.schema_name or ALL_SCHEMAS for sf in filter_file.value.schemas if sf.allow is None)


def for_slot(job: Any, plan: Any, targets: dict[TableName, Any], heartbeat: bool) -> SchemaFollower:
    """The follower of one slot's pipeline (``job``: a ``Job``; ``plan``: its ``SlotPlan``)."""
    hb = job.extractor.value.realtime.heartbeat
    dest = job.destination.value.schema_changes
    scope = Scope(
        slot=plan.slot,
        whole_schemas=whole_schemas(job.filter),
        slot_of_new=new_table_slot(job.source.value.slots),
        publication=plan.publication,
        heartbeat=(hb.schema_name or "public", hb.table_name) if heartbeat else None,
        policy=Policy(dest.dropped_columns, dest.dropped_tables),
        accepted=frozenset(Lsn.parse(v) for v in dest.accept_unfollowed),
    )
    return SchemaFollower(job.job_id, plan.slot, job.source.value, scope, followed_tables(plan, targets))
