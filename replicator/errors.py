"""Errors a user can act on. The CLI prints them without a traceback."""

from __future__ import annotations


class ReplicatorError(Exception):
    """A failure with a message meant for the user (bad input, unreachable server, ...)."""

    exit_code = 1


class ConfigError(ReplicatorError):
    """A configuration file is missing, malformed or invalid."""

    exit_code = 2


class SourceError(ReplicatorError):
    """The source database cannot be used as configured."""


class DestinationError(ReplicatorError):
    """The destination database cannot be used as configured."""


class SchemaChangeError(ReplicatorError):
    """A schema change at the source that the destination cannot follow: the stream stops before it."""


class Interrupted(ReplicatorError):
    """Stopped by a signal before the work was complete; running the same command again resumes."""

    exit_code = 130
