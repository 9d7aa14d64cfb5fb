"""The relay's C loop (``replicator._relay``), when it can be used safely.

It is used only if it was built, we are on Linux, and it found the very libpq psycopg uses,
in the same version. Otherwise (or with ``REPLICATOR_PURE_PYTHON_RELAY=1``) the relay falls
back to its Python loop, and the reason is logged once at DEBUG.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import pq

from replicator.libpq import libpq_carrier

log = logging.getLogger(__name__)

PURE_PYTHON_ENV = "REPLICATOR_PURE_PYTHON_RELAY"

# pump(src_ptr, dst_ptr, on_progress, progress_every_rows, buffer_bytes, check_signals)
#   -> (outcome, rows, bytes, reported_rows, reported_bytes)
Pump = Callable[[int, int, Callable[[int, int], None] | None, int, int, bool], tuple[int, int, int, int, int]]

# Outcomes of pump(), as in _relay.c.
DONE = 0
SOURCE_RECEIVE = 1
SOURCE_CONSUME = 2
DEST_SEND = 3
DEST_FLUSH = 4
DEST_CONSUME = 5


@dataclass(frozen=True)
class NativeRelay:
    pump: Pump
    library: str  # the libpq file the C loop calls (psycopg's own)
    version: int  # its PQlibVersion()


_explained: set[str] = set()


def native_relay() -> NativeRelay | None:
    """The C loop, or None when the relay must use its Python loop."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        _explain(f"{PURE_PYTHON_ENV} is set")
        return None
    native, why = _bind()
    if native is None:
        _explain(why)
    return native


def unavailable_reason() -> str | None:
    """Why the C loop cannot be used in this process (None if it can); ignores the env var."""
    return _bind()[1] or None


_bind_lock = threading.Lock()


def _bind() -> tuple[NativeRelay | None, str]:
    # Workers start their first relays together; bind once.
    with _bind_lock:
        return _bind_once()


@functools.cache
def _bind_once() -> tuple[NativeRelay | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"the C relay is built and tested on Linux only (this is {sys.platform})"
    try:
        from replicator import _relay  # type: ignore[attr-defined]
    except ImportError as e:
        return None, f"the C relay is not built ({e}); `pip install -e .` builds it with a C compiler"
    try:
        carrier = libpq_carrier()
        # bind() refuses a libpq whose version differs from the one psycopg reports.
        version, library = _relay.bind(carrier, pq.version())
    except (OSError, ImportError, AttributeError) as e:
        return None, f"cannot use psycopg's libpq: {e}"
    library = os.path.realpath(library)
    log.debug("relay: C loop bound to %s (libpq %s, psycopg %s)", library, version, pq.__impl__)
    return NativeRelay(_relay.pump, library, version), ""



def _explain(why: str) -> None:
    if why not in _explained:
        _explained.add(why)
        log.debug("relay: using the Python loop: %s", why)
