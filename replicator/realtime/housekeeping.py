"""What a realtime run does beside its slot pipelines, on a thread of its own:

- **Sequences.** Logical decoding does not carry sequence changes, so every heartbeat interval
  the destination's sequences are moved forward to the source's values (never back): a
  switchover at any moment finds them at or past the source's, and ``switchover`` then sets
  them exactly. Reading a source sequence's value needs SELECT or USAGE on it (``check`` says
  so); one that cannot be read is named once.
- **Switchover.** Once ``replicator switchover`` has recorded that it promoted the destination,
  replicating into it is over: the stream stops by itself (exit 0).

Neither may end the run: a failure is logged and tried again at the next tick, on new
connections.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from replicator.connect import connect
from replicator.destinations import open_destination
from replicator.destinations.base import DestinationSession, SwitchoverMark, TableName
from replicator.job import Job
from replicator.tableobjects import sequence_values

log = logging.getLogger(__name__)

APP = "replicator/realtime"
SWITCHOVER_POLL_S = 1.0


class Housekeeping:
    def __init__(self, job: Job, sequences: list[TableName], stop: threading.Event):
        self.job = job
        self.sequences = sequences
        self.stop = stop
        self.interval_s = job.extractor.value.realtime.heartbeat.interval_ms / 1000
        self.promoted: SwitchoverMark | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._src: psycopg.Connection[Any] | None = None
        self._dst: DestinationSession | None = None
        self._unreadable_said: set[TableName] = set()
        self._failing = False

    def __enter__(self) -> Housekeeping:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)  # a connection attempt in progress may outlast it: daemon thread

    def _run(self) -> None:
        next_sync = 0.0
        while not self._done.is_set():
            try:
                if self._check_switchover():
                    break
                if self.sequences and time.monotonic() >= next_sync:
                    self.sync_sequences()
                    next_sync = time.monotonic() + self.interval_s
                self._failing = False
            except (psycopg.Error, OSError) as e:
                if not self._failing:
                    log.warning("keeping sequences in step failed (tried again shortly): %s", e)
                self._failing = True
                self._close()
            self._done.wait(SWITCHOVER_POLL_S)
        self._close()

    def _check_switchover(self) -> bool:
        mark = self._destination().state.switchover(self.job.job_id)
        if mark is None:
            return False
        self.promoted = mark
        log.info(
            "the destination was promoted by `replicator switchover` at %s: replication into it is over; "
            "stopping",
            f"{mark.at:%Y-%m-%d %H:%M:%S}",
        )
        self.stop.set()
        return True

    def sync_sequences(self) -> list[TableName]:
        """Destination sequences moved forward to the source's values; those moved."""
        values = sequence_values(self._source(), self.sequences)
        unreadable = [v.name for v in values if not v.readable and v.name not in self._unreadable_said]
        if unreadable:
            self._unreadable_said.update(unreadable)
            log.warning(
                "cannot read the value of sequence(s) %s at the source (needs SELECT or USAGE on them): "
                "the destination's are not kept in step; `replicator check` prints the grant",
                ", ".join(".".join(n) for n in unreadable),
            )
        return self._destination().set_sequences(values)

    def _source(self) -> psycopg.Connection[Any]:
        if self._src is None or self._src.closed or self._src.broken:
            self._src = connect(self.job.source.value, "source", APP, autocommit=True)
        return self._src

    def _destination(self) -> DestinationSession:
        if self._dst is None or not self._dst.usable:
            self._dst = open_destination(self.job.destination.value).open_session(APP)
        return self._dst

    def _close(self) -> None:
        if self._src is not None:
            try:
                self._src.close()
            except psycopg.Error:
                pass
        if self._dst is not None:
            self._dst.close()
        self._src = self._dst = None
