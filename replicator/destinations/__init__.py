"""Destinations: where rows and changes land, behind one face (``base.Destination``).

``open_destination(config)`` is the only place that picks the implementation; the modes talk
to what it returns and never import an implementation's modules. PostgreSQL is the one today.
"""

from __future__ import annotations

from replicator.config.connection import ConnectionConfig
from replicator.destinations.base import Destination


def open_destination(cfg: ConnectionConfig) -> Destination:
    """The destination a connection config describes (no connection is opened yet)."""
    from replicator.destinations.postgres import PostgresDestination

    if cfg.type == "POSTGRESQL":
        return PostgresDestination(cfg)
    raise AssertionError(f"unknown destination type {cfg.type!r}")  # the config model allows no other
