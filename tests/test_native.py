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

from replicator import native
from replicator.libpq import libpq_carrier
from replicator.native import KEYWALK_ENV, PURE_PYTHON_ENV, RELAY_ENV
from replicator.native import relay as native_relay
from replicator.native import relay_unavailable as unavailable_reason
from tests.support import REPO

SYSTEM_LIBPQ = "/usr/lib/x86_64-linux-gnu/libpq.so.5"


def loaded_files() -> set[str]:
    with open("/proc/self/maps") as maps:
        fields = [line.split(None, 5) for line in maps]
    return {os.path.realpath(f[5].strip()) for f in fields if len(f) == 6}


def test_binds_the_libpq_psycopg_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    monkeypatch.delenv(RELAY_ENV, raising=False)
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
    assert unavailable_reason() is None


def test_refuses_another_libpq_version() -> None:
    from replicator import _relay  # type: ignore[attr-defined]

    carrier = libpq_carrier()
    with pytest.raises(OSError, match=f"is version {pq.version()}, not {pq.version() + 1}"):
        _relay.bind(carrier, pq.version() + 1)
    assert unavailable_reason() is None


@pytest.mark.parametrize("switch", [RELAY_ENV, PURE_PYTHON_ENV])
def test_env_var_forces_the_python_loop_and_says_so_once(
    switch: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for env in (RELAY_ENV, PURE_PYTHON_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv(switch, "1")
    monkeypatch.setattr(native, "_explained", set())
    with caplog.at_level(logging.DEBUG, logger="replicator.native"):
        assert native_relay() is None
        assert native_relay() is None
    said = [r.getMessage() for r in caplog.records if "Python loop" in r.getMessage()]
    assert said == [f"relay: using the Python loop: {switch} is set"]
    monkeypatch.setenv(switch, "0")
    assert native_relay() is not None


@pytest.mark.parametrize("switch", [KEYWALK_ENV, RELAY_ENV, PURE_PYTHON_ENV])
def test_key_walk_has_its_own_switch_and_says_which_runs(
    switch: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for env in (KEYWALK_ENV, RELAY_ENV, PURE_PYTHON_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(native, "_explained", set())
    with caplog.at_level(logging.DEBUG, logger="replicator.native"):
        assert native.keywalk() is not None
        monkeypatch.setenv(switch, "1")
        assert native.keywalk() is None
        assert native.keywalk() is None
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("keywalk: ")]
    assert said[0].startswith("keywalk: merging key streams in C (replicator._relay.keywalk, through ")
    assert said[1:] == [f"keywalk: merging key streams in Python: {switch} is set"]
    # The key walk's own switch leaves the snapshot relay's loop in C; the others turn off both.
    assert (native_relay() is not None) == (switch == KEYWALK_ENV)


def test_a_stale_relay_build_without_the_key_walk_fails_require_and_keeps_the_relay() -> None:
    """A _relay built before keywalk existed: the relay still runs in C, the walk in Python,
    and CI's --require fails, naming the fix."""
    code = (
        "import importlib, sys, types\n"
        "real = importlib.import_module('replicator._relay')\n"
        "stale = types.ModuleType('replicator._relay'); stale.bind = real.bind; stale.pump = real.pump\n"
        "sys.modules['replicator._relay'] = stale\n"
        "from replicator import native\n"
        "assert native.relay() is not None and native.keywalk() is None\n"
        "sys.exit(native.main(['--require']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_PURE_PYTHON")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "relay     C       built, and bound to psycopg's libpq" in done.stdout
    assert (
        "keywalk   Python  the C relay is a build from before keywalk existed; `pip install -e .`"
        in done.stdout
    )


@pytest.mark.skipif(not Path(SYSTEM_LIBPQ).exists(), reason="psycopg's ctypes implementation needs libpq5")
def test_follows_psycopgs_ctypes_implementation() -> None:
    """With PSYCOPG_IMPL=python psycopg calls the system libpq through ctypes; so must we."""
    code = (
        "import json, os; from psycopg import pq; from replicator.native import relay; "
        "n = relay(); print(json.dumps([pq.__impl__, pq.version(), n and n.library, n and n.version]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            "PSYCOPG_IMPL": "python",
            "PYTHONPATH": str(REPO),
            PURE_PYTHON_ENV: "",
            RELAY_ENV: "",
        },
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    impl, version, library, bound_version = json.loads(out)
    assert impl == "python"
    assert library == os.path.realpath(SYSTEM_LIBPQ) and bound_version == version


def test_one_switch_turns_off_both_extensions_and_each_says_why() -> None:
    """REPLICATOR_PURE_PYTHON=1: the relay and the decoder both run in Python, and DEBUG says so."""
    code = (
        "import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s')\n"
        "from replicator.decoding import pgoutput, wal2json; from replicator import native\n"
        "assert pgoutput.NATIVE is None and native.relay() is None and native.keywalk() is None\n"
        "assert wal2json.NATIVE is None and wal2json.Wal2JsonDecoder(print).native_pump() is None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), PURE_PYTHON_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"replicator.native pgoutput: decoding rows in Python: {PURE_PYTHON_ENV} is set" in done.stderr
    assert f"replicator.native wal2json: decoding actions in Python: {PURE_PYTHON_ENV} is set" in done.stderr
    assert f"replicator.native relay: using the Python loop: {PURE_PYTHON_ENV} is set" in done.stderr
    assert (
        f"replicator.native keywalk: merging key streams in Python: {PURE_PYTHON_ENV} is set" in done.stderr
    )


def test_a_run_says_at_debug_which_implementation_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (PURE_PYTHON_ENV, RELAY_ENV, native.DECODE_ENV):
        monkeypatch.delenv(env, raising=False)
    code = (
        "import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s')\n"
        "from replicator.decoding import pgoutput, wal2json; from replicator import native\n"
        "assert native.bind_pgoutput(pgoutput.NATIVE) and native.relay() is not None\n"
        "assert wal2json.Wal2JsonDecoder(print).native_pump() is not None\n"
        "assert native.keywalk() is not None\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_PURE_PYTHON")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "replicator.native pgoutput: decoding rows in C (replicator._pgoutput)" in done.stderr
    assert "replicator.native pgoutput: reading row messages in C through " in done.stderr
    assert "replicator.native wal2json: decoding actions in C (replicator._wal2json)" in done.stderr
    assert "replicator.native wal2json: reading actions in C through " in done.stderr
    assert "replicator.native relay: C loop bound to " in done.stderr
    assert (
        "replicator.native keywalk: merging key streams in C (replicator._relay.keywalk, through "
        in done.stderr
    )


def test_require_fails_when_an_extension_is_missing() -> None:
    """What CI runs: a missing build is a failure, whatever the switches say."""
    ok = subprocess.run(
        [sys.executable, "-m", "replicator.native", "--require"],
        env={**os.environ, PURE_PYTHON_ENV: "1"},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "relay" in ok.stdout and "keywalk" in ok.stdout and "pgoutput" in ok.stdout
    assert "wal2json" in ok.stdout
    for module, line in (
        ("_pgoutput", "pgoutput  Python  the C decoder is not built"),
        ("_wal2json", "wal2json  Python  the C wal2json decoder is not built"),
    ):
        code = (
            f"import sys; sys.modules['replicator.{module}'] = None\n"
            "from replicator.native import main; sys.exit(main(['--require']))"
        )
        missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert missing.returncode == 1
        assert line in missing.stdout
