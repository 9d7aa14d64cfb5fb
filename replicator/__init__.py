"""replicator: get data out of PostgreSQL and keep a destination in sync with it."""

__version__ = "0.1.0"
