"""``verify`` while realtime streams and the source keeps writing: in-flight changes are not corruption."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.realtime.conftest import Env, _drop_slots
from tests.support import run_cli
from tests.switchover.conftest import start_streaming, stop, verify_args


@pytest.fixture
def env(source_db: Database, dest_db: Database, tmp_path: Path) -> Iterator[Env]:
    e = Env(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}")
    e.extractor_text = (
        "realtime:\n  heartbeat:\n    interval-ms: 300\n  fetch-duration-per-extractor-slot-s: 0.2\n"
    )
    yield e
    _drop_slots(source_db)


def test_verify_under_live_writes_reports_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.source.execute(
        "CREATE TABLE hot (id integer PRIMARY KEY, v integer, t text);"
        "INSERT INTO hot SELECT g, 0, md5(g::text) FROM generate_series(1, 200000) g;"
    )
    child = start_streaming(env)
    halt = threading.Event()
    writes = [0]

    def write() -> None:
        rng = random.Random(3)
        with env.source.connect() as conn:
            while not halt.is_set():
                with conn.transaction():
                    for _ in range(20):
                        conn.execute("UPDATE hot SET v = v + 1 WHERE id = %s", (rng.randint(1, 200000),))
                    conn.execute("DELETE FROM hot WHERE id = %s", (rng.randint(1, 200000),))
                    conn.execute(
                        "INSERT INTO hot VALUES (%s, 0, 'new') ON CONFLICT DO NOTHING",
                        (rng.randint(200001, 400000),),
                    )
                writes[0] += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        time.sleep(1)
        for _ in range(2):
            capsys.readouterr()
            status = run_cli(*verify_args(env))
            out = capsys.readouterr().out
            assert status == 0, out
            assert "public.hot: equal" in out
            print(out)
        assert writes[0] > 20
    finally:
        halt.set()
        writer.join()
        stop(child)
