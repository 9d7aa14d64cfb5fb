"""Fixtures for tests that decode from a real server."""

from tests.replication import replication  # noqa: F401  (a fixture)
