"""The C extensions, held to one standard: which implementation runs, and why.

Four hot loops have a C implementation, each with a pure-Python twin that moves the same data
at a higher CPU cost:

- ``relay``: ``replicator._relay``'s ``pump``, the snapshot relay's per-row loop (``relay.py``);
- ``keywalk``: ``replicator._relay``'s ``keywalk``, the merge of two ordered key streams by
  which delta passes find deletes (``keywalk.py``);
- ``pgoutput``: ``replicator._pgoutput``, pgoutput row messages read from the stream and
  decoded into change events (``decoding/pgoutput.py``, ``source/stream.py``);
- ``wal2json``: ``replicator._wal2json``, the same for wal2json's JSON actions
  (``decoding/wal2json.py``).

An extension is used when it was built (``pip install -e .`` compiles them; ``setup.py``), we
are on Linux, it is not switched off, and, for the parts that call libpq, it found the very
libpq psycopg has loaded, in the same version (``_libpq_bind.h``). Switches:
``REPLICATOR_PURE_PYTHON=1`` turns all off; ``REPLICATOR_PURE_PYTHON_RELAY=1`` the extension
``_relay`` (both of its loops), ``REPLICATOR_PURE_PYTHON_KEYWALK=1`` the key walk only and
``REPLICATOR_PURE_PYTHON_DECODE=1`` both decoders. This module is the only place that decides; each
decision is logged once at DEBUG with its reason. ``python -m replicator.native`` prints them;
``--require`` exits 1 unless every loop is usable (CI: a missing or stale build is a failure).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from psycopg import pq

from replicator.libpq import libpq_carrier

log = logging.getLogger(__name__)

PURE_PYTHON_ENV = "REPLICATOR_PURE_PYTHON"
RELAY_ENV = "REPLICATOR_PURE_PYTHON_RELAY"
DECODE_ENV = "REPLICATOR_PURE_PYTHON_DECODE"
KEYWALK_ENV = "REPLICATOR_PURE_PYTHON_KEYWALK"

# pump(src_ptr, dst_ptr, on_progress, progress_every_rows, buffer_bytes, check_signals)
#   -> (outcome, rows, bytes, reported_rows, reported_bytes); outcomes in relay.py
RelayPump = Callable[
    [int, int, Callable[[int, int], None] | None, int, int, bool], tuple[int, int, int, int, int]
]


# keywalk(src_ptr, dst_ptr, kinds, on_gone, buffer_bytes, check_signals)
#   -> (outcome, source_rows, destination_rows, gone, missing); see keywalk.py
KeyWalk = Callable[[int, int, bytes, Callable[[bytes], None], int, bool], tuple[int, int, int, int, int]]


@dataclass(frozen=True)
class NativeRelay:
    pump: RelayPump
    keywalk: KeyWalk | None  # None: a build of _relay.c from before keywalk existed
    library: str  # the libpq file the C loop calls (psycopg's own)
    version: int  # its PQlibVersion()


_explained: set[tuple[str, str]] = set()
_explain_lock = threading.Lock()


def _explain(part: str, message: str) -> None:
    with _explain_lock:
        if (part, message) in _explained:
            return
        _explained.add((part, message))
    log.debug("%s: %s", part, message)


def switched_off(*specific_envs: str) -> str | None:
    """Why the Python twin must run by the user's choice (None: it need not)."""
    for env in (PURE_PYTHON_ENV, *specific_envs):
        if os.environ.get(env, "") not in ("", "0"):
            return f"{env} is set"
    return None


# -- relay -----------------------------------------------------------------------------------


def relay() -> NativeRelay | None:
    """The relay's C loop, or None when the relay must use its Python loop (the switches are
    read on every call: a process may change them between relays)."""
    off = switched_off(RELAY_ENV)
    if off is not None:
        _explain("relay", f"using the Python loop: {off}")
        return None
    native, why = _bind_relay()
    if native is None:
        _explain("relay", f"using the Python loop: {why}")
    else:
        _explain("relay", f"C loop bound to {native.library} (libpq {native.version}, psycopg {pq.__impl__})")
    return native


def relay_unavailable() -> str | None:
    """Why the relay's C loop cannot be used in this process (None if it can); ignores the switches."""
    return _bind_relay()[1] or None


_bind_lock = threading.Lock()


def _bind_relay() -> tuple[NativeRelay | None, str]:
    # Workers start their first relays together; bind once.
    with _bind_lock:
        return _bind_relay_once()


@functools.cache
def _bind_relay_once() -> tuple[NativeRelay | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"the C relay is built and tested on Linux only (this is {sys.platform})"
    try:
        _relay = importlib.import_module("replicator._relay")
    except ImportError as e:
        return None, f"the C relay is not built ({e}); `pip install -e .` builds it with a C compiler"
    try:
        # bind() refuses a libpq whose version differs from the one psycopg reports.
        version, library = _relay.bind(libpq_carrier(), pq.version())
    except (OSError, ImportError, AttributeError) as e:
        return None, f"cannot use psycopg's libpq: {e}"
    return NativeRelay(_relay.pump, getattr(_relay, "keywalk", None), os.path.realpath(library), version), ""


# -- keywalk ---------------------------------------------------------------------------------


def keywalk() -> KeyWalk | None:
    """The C merge of two ordered key streams, or None when ``keywalk.py``'s Python twin must run
    (the switches are read on every call, like ``relay()``'s)."""
    off = switched_off(RELAY_ENV, KEYWALK_ENV)
    if off is not None:
        _explain("keywalk", f"merging key streams in Python: {off}")
        return None
    native, why = _bind_relay()
    if native is None or native.keywalk is None:
        _explain("keywalk", f"merging key streams in Python: {why or _STALE_RELAY}")
        return None
    _explain("keywalk", f"merging key streams in C (replicator._relay.keywalk, through {native.library})")
    return native.keywalk


_STALE_RELAY = "the C relay is a build from before keywalk existed; `pip install -e .` rebuilds it"


def keywalk_unavailable() -> str | None:
    """Why the C key walk cannot be used in this process (None if it can); ignores the switches."""
    native, why = _bind_relay()
    if native is None:
        return why
    return None if native.keywalk is not None else _STALE_RELAY


# -- pgoutput --------------------------------------------------------------------------------


def pgoutput(configure: Callable[[ModuleType], str | None]) -> ModuleType | None:
    """``replicator._pgoutput``, configured by ``configure`` (which returns why the module does
    not fit this code, or None), or None when the Python decoder must run. Read once, when
    ``decoding.pgoutput`` is imported."""
    return _decoder("pgoutput", "decoder", "rows", configure)


def bind_pgoutput(module: ModuleType) -> bool:
    """Point the extension's read loop at the libpq psycopg uses (the same library, version)."""
    return _bind_decoder(module, "pgoutput", "row messages")


def pgoutput_unavailable() -> str | None:
    """Why the C decoder and its read loop cannot be used (None if they can); ignores the switches."""
    return _decoder_unavailable("pgoutput", "decoder")


# -- wal2json --------------------------------------------------------------------------------


def wal2json(configure: Callable[[ModuleType], str | None]) -> ModuleType | None:
    """``replicator._wal2json``, configured by ``configure``, or None when the Python decoder must
    run (as ``pgoutput()``; read once, when ``decoding.wal2json`` is imported)."""
    return _decoder("wal2json", "wal2json decoder", "actions", configure)


def bind_wal2json(module: ModuleType) -> bool:
    """Point ``replicator._wal2json``'s read loop at the libpq psycopg uses."""
    return _bind_decoder(module, "wal2json", "actions")


def wal2json_unavailable() -> str | None:
    """Why the C wal2json decoder and its read loop cannot be used (None if they can); ignores
    the switches."""
    return _decoder_unavailable("wal2json", "wal2json decoder")


# -- both decoders: replicator._<plugin>, switched by DECODE_ENV -------------------------------


def _decoder(
    plugin: str, what: str, units: str, configure: Callable[[ModuleType], str | None]
) -> ModuleType | None:
    off = switched_off(DECODE_ENV)
    module: ModuleType | None
    why: str | None
    module, why = (None, off) if off is not None else _import_extension(f"_{plugin}", what)
    if module is not None:
        why = configure(module)
        if why is not None:
            module = None
    if module is None:
        _explain(plugin, f"decoding {units} in Python: {why}")
    else:
        _explain(plugin, f"decoding {units} in C (replicator._{plugin})")
    return module


def _import_extension(name: str, what: str) -> tuple[ModuleType | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"the C {what} is built and tested on Linux only (this is {sys.platform})"
    try:
        return importlib.import_module(f"replicator.{name}"), ""
    except ImportError as e:  # not built (no C compiler at install): the Python versions do the same
        return None, f"the C {what} is not built ({e}); `pip install -e .` builds it with a C compiler"


@functools.cache
def _bind_decoder(module: ModuleType, plugin: str, reads: str) -> bool:
    try:
        version, library = module.bind_libpq(libpq_carrier(), pq.version())
    except (OSError, ImportError, AttributeError) as e:
        _explain(plugin, f"reading the stream with psycopg, not in C: cannot use psycopg's libpq: {e}")
        return False
    _explain(plugin, f"reading {reads} in C through {library} (libpq {version})")
    return True


def _decoder_unavailable(plugin: str, what: str) -> str | None:
    module, why = _import_extension(f"_{plugin}", what)
    if module is None:
        return why
    try:
        module.bind_libpq(libpq_carrier(), pq.version())
    except (OSError, ImportError, AttributeError) as e:
        return f"cannot use psycopg's libpq: {e}"
    return None


# -- python -m replicator.native --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replicator.native", description=__doc__.split("\n")[0])
    parser.add_argument("--require", action="store_true", help="exit 1 unless every C loop is usable")
    args = parser.parse_args(argv)
    missing = 0
    loops = (
        ("relay", relay_unavailable(), (RELAY_ENV,)),
        ("keywalk", keywalk_unavailable(), (RELAY_ENV, KEYWALK_ENV)),
        ("pgoutput", pgoutput_unavailable(), (DECODE_ENV,)),
        ("wal2json", wal2json_unavailable(), (DECODE_ENV,)),
    )
    for name, why, switches in loops:
        off = switched_off(*switches)
        state = "C" if why is None and off is None else "Python"
        reason = why or off or "built, and bound to psycopg's libpq"
        print(f"{name:<9} {state:<7} {reason}")
        missing += why is not None
    return 1 if args.require and missing else 0


if __name__ == "__main__":
    sys.exit(main())
