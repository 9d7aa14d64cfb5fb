"""Realtime test set-up: a source with a slot config, a destination, and a random workload."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support import checksum, run_cli, write


@dataclass
class Env:
    source: Database
    dest: Database
    tmp: Path
    slot: str
    plugin: str = "pgoutput"
    extractor_text: str = "realtime:\n  heartbeat:\n    interval-ms: 200\n"
    filter_text: str | None = None  # a filter config (none: every table)

    def source_config(self, **extra: object) -> Path:
        cfg = {"replication-slots": {self.slot: [self.plugin]}, "publication": f"{self.slot}_pub", **extra}
        if self.plugin == "wal2json":
            # The workloads here have numeric columns but no NaN (test_decoders.py has them).
            cfg.setdefault("wal2json-nan-becomes-null", True)
        return self.source.write_config(self.tmp / "source.yaml", **cfg)

    def dest_config(self, **extra: object) -> Path:
        return self.dest.write_config(self.tmp / "destination.yaml", **extra)

    def extractor(self) -> Path:
        return write(self.tmp / "extractor.yaml", self.extractor_text)

    def args(self, mode: str, *extra: str) -> list[str]:
        filter_args = (
            ["--filter", str(write(self.tmp / "filter.yaml", self.filter_text))] if self.filter_text else []
        )
        return [
            "run", mode, "--no-progress", "--source", str(self.source_config()),
            "--destination", str(self.dest_config()), "--extractor", str(self.extractor()), *filter_args,
            *extra,
        ]

    def run(self, mode: str, *extra: str) -> int:
        return run_cli(*self.args(mode, *extra))

    def assert_equal(self, *tables: str, schema: str = "public") -> None:
        for t in tables:
            assert checksum(self.dest, schema, t) == checksum(self.source, schema, t), t


@pytest.fixture(params=["pgoutput", "wal2json"])
def env(
    request: pytest.FixtureRequest, source_db: Database, dest_db: Database, tmp_path: Path
) -> Iterator[Env]:
    e = Env(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}", plugin=request.param)
    yield e
    _drop_slots(source_db)


@pytest.fixture
def pg_env(source_db: Database, dest_db: Database, tmp_path: Path) -> Iterator[Env]:
    """pgoutput only (for tests about the pipeline rather than the decoder)."""
    e = Env(source_db, dest_db, tmp_path, slot=f"slot_{source_db.name}")
    yield e
    _drop_slots(source_db)


def _drop_slots(db: Database) -> None:
    # Slots hold WAL on the shared test cluster; and a test killed mid-stream may leave one active.
    with db.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = %s AND "
            "active",
            (db.name,),
        )
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND "
            "NOT active",
            (db.name,),
        )


WORKLOAD_SCHEMA = """
CREATE TABLE items (id bigint PRIMARY KEY, name text, qty integer, price numeric(10,2), doc jsonb, big text);
INSERT INTO items SELECT g, 'item ' || g, g % 50, g * 0.5, jsonb_build_object('g', g),
       CASE WHEN g % 20 = 0 THEN repeat(md5(g::text), 3200) END
FROM generate_series(1, 2000) g;
CREATE TABLE pairs (a integer, b integer, v text, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT g / 10, g % 10, 'v' || g FROM generate_series(1, 1000) g;
"""


def random_workload(db: Database, rng: random.Random, transactions: int, next_id: list[int]) -> None:
    """Inserts, updates (some of TOASTed rows, some of keys), deletes, in many transactions."""
    with db.connect() as conn:
        for _ in range(transactions):
            with conn.transaction():
                for _ in range(rng.randint(1, 20)):
                    r = rng.random()
                    target = rng.randint(1, next_id[0])
                    if r < 0.35:
                        next_id[0] += 1
                        conn.execute(
                            "INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            (next_id[0], f"new {next_id[0]}", rng.randint(0, 9), 1.25, '{"new": true}',
                             "t" * 120_000 if rng.random() < 0.1 else None),
                        )
                    elif r < 0.6:
                        conn.execute(
                            "UPDATE items SET qty = qty + 1, doc = doc || '{\"u\": 1}' WHERE id = %s",
                            (target,),
                        )
                    elif r < 0.7:
                        # Moves the row: a primary-key update, possibly with an unchanged TOASTed value.
                        next_id[0] += 1
                        conn.execute("UPDATE items SET id = %s WHERE id = %s", (next_id[0], target))
                    elif r < 0.8:
                        conn.execute("DELETE FROM items WHERE id = %s", (target,))
                    elif r < 0.9:
                        conn.execute("UPDATE pairs SET v = v || 'x' WHERE a = %s", (target % 100,))
                    else:
                        conn.execute("DELETE FROM pairs WHERE a = %s AND b = %s", (target % 100, target % 10))
