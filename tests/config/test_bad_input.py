"""Hostile or careless input files and flags (issue 9 items 16, 17, 18): exit 2, a clear message, no hang."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from replicator.cli import build_parser
from tests.config.test_errors import GOOD_SOURCE
from tests.conftest import Database
from tests.support import REPO, run_cli, write

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
) + "type: POSTGRESQL\n"


def _cli_in_child(*args: str | Path, timeout: float = 30) -> tuple[int, str]:
    """Run the CLI in a child limited to 1 GB of memory, so a blow-up fails the test instead of the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "replicator", *map(str, args)], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=limit, check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"replicator {' '.join(map(str, args))} still running after {timeout} s")
    return proc.returncode, proc.stderr


def _snapshot(source: Path | str, tmp_path: Path) -> list[str | Path]:
    return ["run", "snapshot", "--source", source, "--destination", write(tmp_path / "dest.yaml", GOOD_SOURCE)]


def test_an_alias_bomb_is_refused_quickly_in_little_memory(tmp_path: Path) -> None:
    code, err = _cli_in_child(*_snapshot(write(tmp_path / "source.yaml", BILLION_LAUGHS), tmp_path))
    assert code == 2, err
    assert "source.yaml:" in err and "aliases expand to more than 100,000 values" in err


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path) -> None:
    code, err = _cli_in_child(*_snapshot(write(tmp_path / "source.yaml", GOOD_SOURCE + "x: &x [*x]\n"), tmp_path))
    assert code == 2 and "an alias refers to the value that contains it" in err, err


def test_dev_zero_is_refused_not_read(tmp_path: Path) -> None:
    code, err = _cli_in_child(*_snapshot("/dev/zero", tmp_path))
    assert code == 2 and "/dev/zero: not a regular file (a character device)" in err, err


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "source.yaml"
    os.mkfifo(fifo)
    code, err = _cli_in_child(*_snapshot(fifo, tmp_path), timeout=20)
    assert code == 2 and f"{fifo}: not a regular file (a FIFO)" in err, err


def test_a_file_over_one_megabyte_or_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = write(tmp_path / "source.yaml", GOOD_SOURCE + ("# padding\n" * 120_000))
    assert run_cli(*_snapshot(big, tmp_path)) == 2
    assert "source.yaml: larger than 1 MB" in capsys.readouterr().err
    assert run_cli(*_snapshot(tmp_path, tmp_path)) == 2
    assert "not a regular file (a directory)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, value_line, message",
    [
        ("port", "port: ${REPLICATOR_TEST_SECRET}", "source.yaml:3: port: input should be a valid integer"),
        ("log-reader-type", "log-reader-type: ${REPLICATOR_TEST_SECRET}", "source.yaml:7: log-reader-type: input should be"),
        ("max-connections", "max-connections: x${REPLICATOR_TEST_SECRET}", "source.yaml:7: max-connections:"),
    ],
)
def test_a_value_from_an_environment_variable_is_never_echoed(
    key: str, value_line: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATOR_TEST_SECRET", "S3cr3t-from-the-vault")
    text = GOOD_SOURCE.replace("port: 5432", value_line) if key == "port" else GOOD_SOURCE + value_line + "\n"
    assert run_cli(*_snapshot(write(tmp_path / "source.yaml", text), tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and "${REPLICATOR_TEST_SECRET}" in err
    assert "S3cr3t" not in err


def test_an_environment_value_in_a_validator_message_is_hidden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATOR_TEST_SECRET", "S3cr3t-from-the-vault")
    extractor = write(tmp_path / "extractor.yaml", "realtime:\n  start-position:\n    start-lsn: ${REPLICATOR_TEST_SECRET}\n")
    assert run_cli(*_snapshot(write(tmp_path / "source.yaml", GOOD_SOURCE), tmp_path), "--extractor", extractor) == 2
    err = capsys.readouterr().err
    assert "extractor.yaml:3: realtime.start-position.start-lsn: start-lsn must look like 16/B374D848" in err
    assert "S3cr3t" not in err


def test_a_missing_key_has_a_line_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "source.yaml", "# a comment\n\n" + GOOD_SOURCE.replace("host: 127.0.0.1\n", ""))
    extractor = write(tmp_path / "extractor.yaml", "realtime:\n  heartbeat:\n    enable: true\n  start-position: {}\n"
                      "delta-snapshot:\n  per-table-config:\n  - schema: public\n")
    assert run_cli(*_snapshot(source, tmp_path)) == 2
    assert "source.yaml:3: host: required key is missing" in capsys.readouterr().err
    bad_store = write(tmp_path / "s2.yaml", GOOD_SOURCE.replace("password: s3cret-Passw0rd\n", "")
                      + "credential-store:\n  type: AWS_SECRETS_MANAGER\n")
    assert run_cli(*_snapshot(bad_store, tmp_path)) == 2
    assert "s2.yaml:6: credential-store.secret-id: required key is missing" in capsys.readouterr().err
    del extractor


def test_password_with_a_credential_store_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "source.yaml", GOOD_SOURCE + "credential-store:\n  type: AWS_SECRETS_MANAGER\n  secret-id: s\n")
    assert run_cli(*_snapshot(source, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "source.yaml:6: password: not allowed together with credential-store" in err
    assert "s3cret-Passw0rd" not in err


def test_an_unknown_key_under_a_filter_table_lists_the_real_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    filt = write(tmp_path / "filter.yaml", "allow:\n  schema: public\n  allow:\n    orders:\n      colums: [a]\n")
    assert run_cli(*_snapshot(write(tmp_path / "source.yaml", GOOD_SOURCE), tmp_path), "--filter", filt) == 2
    assert "filter.yaml:5: allow.allow.orders.colums: unknown key; allowed keys: allow, conditions" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "snapshot", "--source", "s", "--destination", "d", "--log-level", "DEBUG"],
        ["--log-level", "DEBUG", "run", "snapshot", "--source", "s", "--destination", "d"],
        ["check", "--source", "s", "--log-level", "DEBUG"],
        ["status", "--destination", "d", "--log-level", "DEBUG"],
        ["handoff", "--stack-outputs", "-", "--log-level", "DEBUG"],
        ["demo", "--log-level", "DEBUG"],
    ],
)
def test_log_level_is_accepted_before_and_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).log_level == "DEBUG"


def test_log_level_before_the_command_is_kept_when_not_repeated() -> None:
    args = build_parser().parse_args(["--log-level", "ERROR", "run", "snapshot", "--source", "s", "--destination", "d"])
    assert args.log_level == "ERROR"
    assert build_parser().parse_args(["run", "snapshot", "--source", "s", "--destination", "d"]).log_level == "INFO"


def test_a_name_matching_two_tables_by_case_names_both(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute('CREATE TABLE "Foo" (id integer PRIMARY KEY); CREATE TABLE foo (id integer PRIMARY KEY)')
    filt = write(tmp_path / "filter.yaml", f"allow:\n  catalog: {source_db.name}\n  schema: public\n  allow:\n    FOO:\n")
    code = run_cli("run", "snapshot", "--no-progress", "--source", source_db.write_config(tmp_path / "source.yaml"),
                   "--destination", dest_db.write_config(tmp_path / "destination.yaml"), "--filter", filt)
    assert code == 2
    assert """'FOO' matches "Foo" and "foo" when case is ignored""" in capsys.readouterr().err
