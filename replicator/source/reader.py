"""What realtime reads changes through: ``ReplicationStream`` (``log-reader-type: STREAM``) and
``SqlReader`` (``SQL``) both satisfy ``ChangeReader``."""

from __future__ import annotations

from typing import Protocol

from replicator.decoding.changes import Event
from replicator.lsn import Lsn


class ChangeReader(Protocol):
    @property
    def position(self) -> Lsn:
        """Every transaction committing before this LSN has been returned by ``read()``."""
        ...

    @property
    def received(self) -> Lsn:
        """The source's WAL end as last heard (how far there is to read)."""
        ...

    @property
    def confirmed(self) -> Lsn:
        """The last position passed to ``confirm()``."""
        ...

    def read(
        self,
        max_events: int = 10_000,
        timeout: float = 1.0,
        until: Lsn | None = None,
        wake: int | None = None,
    ) -> list[Event]:
        """Decoded events: at most ``max_events``, returned as soon as nothing more is ready;
        waiting at most ``timeout`` seconds while nothing is, or until ``wake`` (a file
        descriptor, whose bytes are read) becomes readable; returning early once ``position``
        reaches ``until``."""
        ...

    def confirm(self, lsn: Lsn) -> None:
        """Tell the source everything before ``lsn`` is durable at the destination."""
        ...

    def close(self) -> None: ...
