"""Finding psycopg's own libpq for the C relay loop, and falling back when that is not possible."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from psycopg import pq

from replicator import relay_native
from replicator.libpq import libpq_carrier
from replicator.relay_native import PURE_PYTHON_ENV, native_relay, unavailable_reason
from tests.support import REPO

SYSTEM_LIBPQ = "/usr/lib/x86_64-linux-gnu/libpq.so.5"


def loaded_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        fields = [line.split(None, 5) for line in maps]
    return {os.path.realpath(f[5].strip()) for f in fields if len(f) == 6}


def test_binds_the_libpq_psycopg_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    assert unavailable_reason() is None, unavailable_reason()
    native = native_relay()
    assert native is not None
    assert native.version == pq.version()
    assert "libpq" in Path(native.library).name
    assert native.library in loaded_files()


def test_never_loads_another_libpq() -> None:
    from replicator import _relay  # type: ignore[attr-defined]

    with pytest.raises(OSError, match="not loaded in this process"):
        _relay.bind("/nonexistent/libpq.so.5", pq.version())
    if Path(SYSTEM_LIBPQ).exists() and os.path.realpath(SYSTEM_LIBPQ) not in loaded_files():
        with pytest.raises(OSError, match="not loaded in this process"):
            _relay.bind(SYSTEM_LIBPQ, pq.version())
        assert os.path.realpath(SYSTEM_LIBPQ) not in loaded_files()
    # A failed bind leaves the good one in place.
    assert native_relay() is not None


def test_refuses_another_libpq_version() -> None:
    from replicator import _relay  # type: ignore[attr-defined]

    carrier = libpq_carrier()
    with pytest.raises(OSError, match=f"is version {pq.version()}, not {pq.version() + 1}"):
        _relay.bind(carrier, pq.version() + 1)
    assert native_relay() is not None


def test_env_var_forces_the_python_loop_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    monkeypatch.setattr(relay_native, "_explained", set())
    with caplog.at_level(logging.DEBUG, logger="replicator.relay_native"):
        assert native_relay() is None
        assert native_relay() is None
    said = [r.getMessage() for r in caplog.records if "Python loop" in r.getMessage()]
    assert said == [f"relay: using the Python loop: {PURE_PYTHON_ENV} is set"]
    monkeypatch.setenv(PURE_PYTHON_ENV, "0")
    assert native_relay() is not None


@pytest.mark.skipif(not Path(SYSTEM_LIBPQ).exists(), reason="psycopg's ctypes implementation needs libpq5")
def test_follows_psycopgs_ctypes_implementation() -> None:
    """With PSYCOPG_IMPL=python psycopg calls the system libpq through ctypes; so must we."""
    code = (
        "import json, os; from psycopg import pq; from replicator.relay_native import native_relay; "
        "n = native_relay(); print(json.dumps([pq.__impl__, pq.version(), n and n.library, n and n.version]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PSYCOPG_IMPL": "python", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout
    impl, version, library, bound_version = json.loads(out)
    assert impl == "python"
    assert library == os.path.realpath(SYSTEM_LIBPQ) and bound_version == version
