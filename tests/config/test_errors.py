"""Bad configs: each names the file, the line and the key, exits 2, and shows no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import Database
from tests.support import run_cli, write

GOOD_SOURCE = """type: POSTGRESQL
host: 127.0.0.1
port: 5432
database: db
username: replicator
password: s3cret-Passw0rd
"""


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = run_cli(*args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _snapshot_args(source: Path, dest: Path, *extra: str | Path) -> list[str | Path]:
    return ["run", "snapshot", "--source", source, "--destination", dest, *extra]


@pytest.mark.parametrize(
    ("source_text", "expected"),
    [
        (GOOD_SOURCE.replace("port: 5432", "port: 70000"), "source.yaml:3: port: input should be less than or equal to 65535"),
        (GOOD_SOURCE + "max-retrys: 3\n", "source.yaml:7: max-retrys: unknown key; did you mean 'max-retries'?"),
        (GOOD_SOURCE.replace("POSTGRESQL", "MYSQL"), "source.yaml:1: type: input should be 'POSTGRESQL'"),
        (GOOD_SOURCE.replace("host: 127.0.0.1\n", ""), "source.yaml:1: host: required key is missing"),
        (GOOD_SOURCE + "ssl:\n  ssl-mode: verify-all\n", "source.yaml:8: ssl.ssl-mode: input should be 'disable'"),
        (GOOD_SOURCE + "ssl:\n  ssl-mode: verify-full\n  root-cert: /no/such/ca.pem\n", "source.yaml:9: ssl.root-cert: file not found: /no/such/ca.pem"),
        (GOOD_SOURCE + "replication-slots:\n  my_slot: [pgoutputt]\n", "source.yaml:8: replication-slots.my_slot[0]: input should be 'pgoutput' or 'wal2json'"),
        (GOOD_SOURCE + "replication-slots:\n  My-Slot: [pgoutput]\n", "slot name 'My-Slot' is invalid"),
        (GOOD_SOURCE + "deletes: soft\n", "source.yaml:7: deletes: only valid in a destination connection config"),
        (GOOD_SOURCE.replace("port: 5432", "port: 5432\nport: 5433"), "source.yaml:4: key 'port' appears twice (first on line 3)"),
        (GOOD_SOURCE.replace("database: db", "database: [db"), "source.yaml:5: not valid YAML"),
        (GOOD_SOURCE.replace("password: s3cret-Passw0rd", "password: ${REPLICATOR_TEST_UNSET_VAR}"), "source.yaml:6: password: environment variable REPLICATOR_TEST_UNSET_VAR is not set"),
        ("- just\n- a list\n", "source.yaml:1: the source connection file must be a mapping of keys, not a list"),
        ("", "source.yaml: the source connection file is empty"),
    ],
)
def test_bad_connection_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], source_text: str, expected: str) -> None:
    source = write(tmp_path / "source.yaml", source_text)
    dest = write(tmp_path / "dest.yaml", GOOD_SOURCE)
    code, err = _run(capsys, *_snapshot_args(source, dest))
    assert code == 2
    assert expected in err
    assert "s3cret-Passw0rd" not in err


def test_password_never_echoed_even_when_its_type_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "source.yaml", GOOD_SOURCE.replace("password: s3cret-Passw0rd", "password: {x: s3cret-Passw0rd}"))
    code, err = _run(capsys, *_snapshot_args(source, source))
    assert code == 2 and "source.yaml:6: password: input should be a valid string" in err
    assert "s3cret" not in err


def test_destination_refuses_source_only_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write(tmp_path / "source.yaml", GOOD_SOURCE)
    dest = write(tmp_path / "dest.yaml", GOOD_SOURCE + "publication: pub\n")
    code, err = _run(capsys, *_snapshot_args(source, dest))
    assert code == 2 and "dest.yaml:7: publication: only valid in a source connection config" in err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, *_snapshot_args(tmp_path / "nope.yaml", tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: file not found" in err


@pytest.mark.parametrize(
    ("extractor", "expected"),
    [
        ("snapshot:\n  threads: four\n", "extractor.yaml:2: snapshot.threads: input should be a valid integer"),
        ("snapshot:\n  threads: 0\n", "extractor.yaml:2: snapshot.threads: input should be greater than or equal to 1"),
        ("snapshot:\n  min-job-size: 10\n", "extractor.yaml:2: snapshot.min-job-size: unknown key; did you mean 'min-job-size-rows'?"),
        ("snapshots:\n  threads: 2\n", "extractor.yaml:1: snapshots: unknown key; did you mean 'snapshot'?"),
        (
            "snapshot:\n  per-table-config:\n  - schema: public\n    tables:\n      t:\n        split-keys: id\n",
            "extractor.yaml:6: snapshot.per-table-config[0].tables.t.split-keys: unknown key; did you mean 'split-key'?",
        ),
        ("realtime:\n  start-position:\n    start-lsn: nonsense\n", "extractor.yaml:3: realtime.start-position.start-lsn: start-lsn must look like 16/B374D848"),
    ],
)
def test_bad_extractor_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], extractor: str, expected: str) -> None:
    source = write(tmp_path / "source.yaml", GOOD_SOURCE)
    ext = write(tmp_path / "extractor.yaml", extractor)
    code, err = _run(capsys, *_snapshot_args(source, source, "--extractor", ext))
    assert code == 2
    assert expected in err


def test_private_keys_are_ignored(tmp_path: Path) -> None:
    from replicator.config import load_extractor

    ext = write(tmp_path / "extractor.yaml", "snapshot:\n  threads: 3\n  _traceDBTasks: true\n")
    assert load_extractor(ext).value.snapshot.threads == 3


SCHEMA = """CREATE TABLE orders (id integer PRIMARY KEY, amount numeric, note text);
CREATE TABLE customers (id integer PRIMARY KEY, name text);"""


@pytest.mark.parametrize(
    ("filter_text", "extractor", "expected"),
    [
        ("allow:\n  schema: public\n  allow:\n    order:\n", None, "filter.yaml:4: allow.order: no table 'order' in schema public; did you mean 'orders'?"),
        ("allow:\n  schema: public\n  allow:\n    orders:\n      allow: [amount, notes]\n", None, "filter.yaml:5: allow: table public.orders has no column 'notes'; did you mean 'note'?"),
        ("allow:\n  catalog: otherdb\n  schema: public\n", None, "filter.yaml:2: catalog: 'otherdb' is not the source database"),
        ("allow:\n  schema: pubic\n", None, "filter.yaml:2: schema: no tables in schema 'pubic'; did you mean 'public'?"),
        ("allow:\n  schema: public\n  allow:\n    orders:\n      conditions: \"amount >>> 3\"\n", None, "filter.yaml:5: conditions: not a valid predicate on public.orders"),
        ("allow:\n  schema: public\n  types: [VIEW]\n", None, "filter.yaml:3: allow.types[0]: input should be 'TABLE'"),
        (None, "snapshot:\n  per-table-config:\n  - schema: public\n    tables:\n      orders:\n        split-key: note\n", "split-key: column 'note' of public.orders has type text"),
        (None, "snapshot:\n  per-table-config:\n  - schema: public\n    tables:\n      orders:\n        split-key: nope\n", "extractor.yaml:6: split-key: table public.orders has no column 'nope'"),
        (None, "snapshot:\n  per-table-config:\n  - schema: public\n    tables:\n      ordres:\n", "extractor.yaml:5: tables.ordres: no table 'ordres' in schema 'public'; did you mean 'orders'?"),
    ],
)
def test_configs_checked_against_the_source(
    source_db: Database,
    dest_db: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    filter_text: str | None,
    extractor: str | None,
    expected: str,
) -> None:
    source_db.execute(SCHEMA)
    args = _snapshot_args(source_db.write_config(tmp_path / "source.yaml"), dest_db.write_config(tmp_path / "dest.yaml"))
    if filter_text:
        args += ["--filter", write(tmp_path / "filter.yaml", filter_text)]
    if extractor:
        args += ["--extractor", write(tmp_path / "extractor.yaml", extractor)]
    code, err = _run(capsys, *args)
    assert code == 2, err
    assert expected in err
    # Nothing was created at the destination for a refused config.
    assert dest_db.fetchone("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_unreachable_source_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = yaml.safe_load(GOOD_SOURCE) | {"port": 1, "max-retries": 1, "retry-wait-duration-ms": 10}
    source = write(tmp_path / "source.yaml", yaml.safe_dump(cfg))
    code, err = _run(capsys, *_snapshot_args(source, source))
    assert code == 1
    assert "cannot connect to the source 127.0.0.1:1/db as replicator" in err
    assert "s3cret" not in err
