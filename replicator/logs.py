"""Logging set-up: plain lines, and secrets masked wherever they might slip into a message."""

from __future__ import annotations

import logging
import sys

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every log record from now on (defence in depth: we never log it on purpose)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def mask(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, "********")
    return text


class _MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            record.msg = mask(record.getMessage())
            record.args = None
        return True


_handler: logging.Handler | None = None


def setup(level: str = "INFO") -> None:
    """Log to stderr; calling it again (tests run the CLI many times) replaces only our handler."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    _handler.addFilter(_MaskingFilter())
    root.addHandler(_handler)
    root.setLevel(level.upper())
    # Third-party chatter is not what a user running a replication wants to read.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # paramiko logs a lost bastion connection as an ERROR with a traceback from its own thread; the
    # tunnel says the same in one line (and reconnects). --log-level DEBUG shows paramiko's view too.
    logging.getLogger("paramiko").setLevel(logging.WARNING if level.upper() == "DEBUG" else logging.CRITICAL)
