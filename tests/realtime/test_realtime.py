"""Realtime end to end on real servers, through both decoders: the destination ends equal to the source."""

from __future__ import annotations

import random
import re
import signal
import time

import pytest

from tests.realtime.conftest import WORKLOAD_SCHEMA, Env, random_workload
from tests.snapshot.test_runner import TYPE_ZOO
from tests.support import spawn_cli


def test_every_type_family_through_the_stream(env: Env) -> None:
    env.source.execute(TYPE_ZOO.replace("FROM generate_series(1, 500) g;", "FROM generate_series(1, 50) g;"))
    assert env.run("full", "--once") == 0
    env.assert_equal("zoo")
    # Every type family again, this time arriving as changes: inserts, updates, deletes.
    env.source.execute(
        TYPE_ZOO.split("INSERT INTO zoo", 1)[1]
        .join(["INSERT INTO zoo", ""])
        .replace("generate_series(1, 500)", "generate_series(501, 600)")
    )
    env.source.execute(
        "UPDATE zoo SET t = t || ' changed', jb = jb || '{\"x\": [1, 2]}', ma = ARRAY['ok']::mood[], addr = "
        "NULL WHERE id % 3 = 0"
    )
    env.source.execute("DELETE FROM zoo WHERE id % 5 = 0")
    assert env.run("realtime", "--once") == 0
    env.assert_equal("zoo")


def test_toast_unchanged_key_updates_truncate_and_new_columns(env: Env) -> None:
    env.source.execute(
        """CREATE TABLE docs (id integer PRIMARY KEY, title text, body text);
           INSERT INTO docs SELECT g, 't' || g, repeat(md5(g::text), 3200) FROM generate_series(1, 50) g;
           CREATE TABLE scratch (id integer PRIMARY KEY, v text);
           INSERT INTO scratch SELECT g, 'v' FROM generate_series(1, 100) g;"""
    )
    assert env.run("full", "--once") == 0
    env.source.execute(
        """UPDATE docs SET title = 'renamed' WHERE id <= 10;             -- body unchanged (TOAST)
           UPDATE docs SET id = id + 1000 WHERE id BETWEEN 11 AND 20;   -- key moves, body unchanged
           UPDATE docs SET id = id + 2000, title = 'both' WHERE id = 21;
           BEGIN; UPDATE docs SET title = 'x' WHERE id = 22; UPDATE docs SET id = 3022 WHERE id = 22; COMMIT;
           TRUNCATE scratch;
           INSERT INTO scratch VALUES (1, 'after truncate');
           ALTER TABLE docs ADD COLUMN tags text[];
           UPDATE docs SET tags = ARRAY['a', 'b'] WHERE id > 40;"""
    )
    assert env.run("realtime", "--once") == 0
    env.assert_equal("docs", "scratch")
    assert env.dest.fetchone("SELECT min(length(body)) FROM docs") == 102400


def test_partitioned_table_lands_in_one_table(env: Env) -> None:
    env.source.execute(
        """CREATE TABLE events (id bigint, at date NOT NULL, v text, PRIMARY KEY (id,
            at)) PARTITION BY RANGE (at);
           CREATE TABLE events_a PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           CREATE TABLE events_b PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
           INSERT INTO events SELECT g, '2024-01-01'::date + g, 'v' FROM generate_series(1, 600) g;"""
    )
    assert env.run("full", "--once") == 0
    env.source.execute(
        """INSERT INTO events SELECT g, '2024-01-01'::date + (g % 600), 'new' FROM generate_series(1000,
            1100) g;
           UPDATE events SET v = 'changed' WHERE id % 7 = 0;
           UPDATE events SET at = at + 200 WHERE id BETWEEN 300 AND 320;  -- moves rows across partitions
           DELETE FROM events WHERE id % 11 = 0;"""
    )
    assert env.run("realtime", "--once") == 0
    env.assert_equal("events")
    assert (
        env.dest.fetchone("SELECT count(*) FROM pg_class WHERE relname LIKE 'events\\_%' AND relkind = 'r'")
        == 0
    )


def test_large_transaction_streams_with_bounded_memory(pg_env: Env) -> None:
    pg_env.source.execute("CREATE TABLE bulk (id bigint PRIMARY KEY, v text)")
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
    child = spawn_cli(*pg_env.args("realtime", "--once"))
    peak_kb = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
        except FileNotFoundError:
            break
        time.sleep(0.05)
    out, err = child.communicate()
    assert child.returncode == 0, err
    pg_env.assert_equal("bulk")
    # One 200,000-row source transaction, applied in flushes inside one destination transaction.
    assert peak_kb < 200_000, f"peak RSS {peak_kb} kB"


def test_soft_deletes_keep_rows_flagged(pg_env: Env) -> None:
    pg_env.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM "
        "generate_series(1, 10) g"
    )
    pg_env.dest_config = lambda **kw: pg_env.dest.write_config(
        pg_env.tmp / "destination.yaml", deletes="soft"
    )  # type: ignore[method-assign]
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute(
        "DELETE FROM t WHERE id <= 3; UPDATE t SET v = 'w' WHERE id = 4; DELETE FROM t WHERE id = 5; INSERT "
        "INTO t VALUES (5, 'back')"
    )
    assert pg_env.run("realtime", "--once") == 0
    rows = pg_env.dest.fetchall("SELECT id, v, __replicator_is_deleted FROM t WHERE id <= 6 ORDER BY id")
    assert rows == [
        (1, "v", True),
        (2, "v", True),
        (3, "v", True),
        (4, "w", False),
        (5, "back", False),
        (6, "v", False),
    ]
    pg_env.source.execute("TRUNCATE t")
    assert pg_env.run("realtime", "--once") == 0
    assert pg_env.dest.fetchone("SELECT count(*) FROM t WHERE NOT __replicator_is_deleted") == 0
    assert pg_env.dest.fetchone("SELECT count(*) FROM t") == 10


def test_full_with_writes_during_the_snapshot(pg_env: Env) -> None:
    pg_env.source.execute(
        WORKLOAD_SCHEMA
        + "INSERT INTO items SELECT g, 'filler', 0, 0, '{}', NULL FROM generate_series(10000, 200000) g;"
    )
    pg_env.extractor_text += "snapshot:\n  threads: 2\n  min-job-size-rows: 5000\n"
    child = spawn_cli(*pg_env.args("full"))
    rng = random.Random(3)
    next_id = [300_000]
    try:
        # Keep writing while the snapshot runs, and a little after it is done.
        deadline = time.monotonic() + 120
        while not _snapshot_done(pg_env) and time.monotonic() < deadline:
            random_workload(pg_env.source, rng, 5, next_id)
        random_workload(pg_env.source, rng, 20, next_id)
        time.sleep(1)
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "realtime stopped" in out
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("items", "pairs")


def _snapshot_done(env: Env) -> bool:
    if env.dest.fetchone("SELECT to_regclass('_replicator.snapshot_tables')") is None:
        return False
    return bool(env.dest.fetchone(
        "SELECT count(*) = 2 AND bool_and(status = 'done') FROM _replicator.snapshot_tables"
    ))


def test_sigterm_during_the_snapshot_stops_cleanly_and_resumes(pg_env: Env) -> None:
    pg_env.source.execute(
        WORKLOAD_SCHEMA
        + "INSERT INTO items SELECT g, 'filler', 0, 0, '{}', NULL FROM generate_series(10000, 300000) g;"
    )
    pg_env.extractor_text += "snapshot:\n  threads: 1\n  min-job-size-rows: 2000\n  max-jobs-per-chunk: 100\n"
    child = spawn_cli(*pg_env.args("full"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            pg_env.dest.fetchone("SELECT to_regclass('_replicator.snapshot_chunks')") is not None
            and pg_env.dest.fetchone(
                "SELECT count(*) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL"
            )
        ):
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "snapshot interrupted" in err and "Traceback" not in err
    assert pg_env.run("full", "--once") == 0
    pg_env.assert_equal("items", "pairs")


def test_heartbeat_moves_the_slot_on_an_idle_database(pg_env: Env) -> None:
    pg_env.source.execute("CREATE TABLE quiet (id integer PRIMARY KEY)")
    assert pg_env.run("full", "--once") == 0
    before = pg_env.source.fetchone(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
    )
    child = spawn_cli(*pg_env.args("realtime"))
    # Nothing but the heartbeat writes to this source, so a slot that moves past `before` was moved by
    # it. Wait for that (a fixed sleep raced the child's start-up on a loaded machine), then stop.
    try:
        _wait_for(
            lambda: pg_env.source.fetchone(
                "SELECT confirmed_flush_lsn > %s FROM pg_replication_slots WHERE slot_name = %s",
                (before, pg_env.slot),
            )
        )
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    beats = pg_env.source.fetchone('SELECT "timestamp" FROM replicate_io_cdc_heartbeat')
    assert beats is not None


def test_replication_connection_terminated_is_survived(pg_env: Env) -> None:
    pg_env.source.execute(WORKLOAD_SCHEMA)
    assert pg_env.run("full", "--once") == 0
    child = spawn_cli(*pg_env.args("realtime"))
    rng = random.Random(11)
    next_id = [5000]
    try:
        for _ in range(3):
            random_workload(pg_env.source, rng, 30, next_id)
            target = pg_env.source.fetchone("SELECT pg_current_wal_lsn()")
            # Wait until the stream is up and has applied the workload, then cut it.
            _wait_for(
                lambda target=target: pg_env.source.fetchone(
                    "SELECT confirmed_flush_lsn >= %s AND active FROM pg_replication_slots WHERE slot_name "
                    "= %s",
                    (target, pg_env.slot),
                )
            )
            assert (
                pg_env.source.fetchone(
                    "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE "
                    "slot_name = %s AND active",
                    (pg_env.slot,),
                )
                == 1
            )
        random_workload(pg_env.source, rng, 30, next_id)
        target = pg_env.source.fetchone("SELECT pg_current_wal_lsn()")
        _wait_for(
            lambda: pg_env.source.fetchone(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (target, pg_env.slot),
            )
        )
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert err.count(f"streaming slot {pg_env.slot} failed, trying again") == 3
    pg_env.assert_equal("items", "pairs")


def _wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail("condition not reached in time")


def test_sql_log_reader(pg_env: Env) -> None:
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml",
        **{
            "replication-slots": {pg_env.slot: ["pgoutput"]},
            "publication": "p_sql",
            "log-reader-type": "SQL",
        },
    )
    pg_env.source.execute(WORKLOAD_SCHEMA)
    assert pg_env.run("full", "--once") == 0
    random_workload(pg_env.source, random.Random(5), 40, [5000])
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal("items", "pairs")


def test_several_slots_split_the_tables(pg_env: Env) -> None:
    slots = {f"{pg_env.slot}_a": ["pgoutput"], f"{pg_env.slot}_b": ["pgoutput"]}
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml", **{"replication-slots": slots, "publication": "p_multi"})
    pg_env.source.execute(
        "".join(
            f"CREATE TABLE t{i} (id integer PRIMARY KEY, v text); INSERT INTO t{i} SELECT g, 'v' FROM "
            "generate_series(1, 100) g;"
            for i in range(6)
        )
    )
    assert pg_env.run("full", "--once") == 0
    used = pg_env.source.fetchall(
        "SELECT pubname, count(*) FROM pg_publication_tables WHERE pubname LIKE 'p_multi_%' GROUP BY 1 "
        "ORDER BY 1"
    )
    assert len(used) == 2
    pg_env.source.execute(
        "".join(
            f"UPDATE t{i} SET v = 'w{i}' WHERE id % 2 = 0; DELETE FROM t{i} WHERE id > 90;" for i in range(6)
        )
    )
    assert pg_env.run("realtime", "--once") == 0
    pg_env.assert_equal(*[f"t{i}" for i in range(6)])


def test_keyless_tables_are_named_up_front(pg_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    pg_env.source.execute(
        "CREATE TABLE loose (a integer, b text); CREATE TABLE full_ident (a integer, b text); ALTER TABLE "
        "full_ident REPLICA IDENTITY FULL"
    )
    assert pg_env.run("full", "--once") == 0
    assert "public.loose: no primary key and REPLICA IDENTITY DEFAULT" in caplog.text
    assert "ALTER TABLE public.loose REPLICA IDENTITY FULL" in caplog.text
    assert "public.full_ident: no primary key" not in caplog.text


def test_pgoutput_slot_needs_a_publication_name(pg_env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml", **{"replication-slots": {pg_env.slot: ["pgoutput"]}})
    assert pg_env.run("realtime", "--once") == 2
    err = capsys.readouterr().err
    assert "source.yaml:1: publication: required for pgoutput slots" in err and "Traceback" not in err


def test_start_lsn_skips_what_came_before(pg_env: Env) -> None:
    # A first realtime run: the slot exists, the destination has the table but no checkpoint yet
    # (any earlier realtime or full run records one, and then the checkpoint decides).
    pg_env.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'snap');"
        f"CREATE PUBLICATION {pg_env.slot}_pub FOR TABLE t"
    )
    pg_env.source.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (pg_env.slot,))
    assert pg_env.run("snapshot") == 0
    pg_env.source.execute("INSERT INTO t VALUES (2, 'before')")
    start = pg_env.source.fetchone("SELECT pg_current_wal_lsn()::text")
    pg_env.source.execute("INSERT INTO t VALUES (3, 'after')")
    pg_env.extractor_text = (
        f"realtime:\n  heartbeat:\n    enable: false\n  start-position:\n    start-lsn: {start}\n"
    )
    assert pg_env.run("realtime", "--once") == 0
    assert pg_env.dest.fetchall("SELECT id FROM t ORDER BY id") == [(1,), (3,)]


def test_wal_retention_over_the_maximum_stops_the_pipeline(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    monitoring = {"max-wal-size-gb": 0.0001, "alert-threshold-percent": 50}  # ~100 kB: already exceeded
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml",
        **{
            "replication-slots": {pg_env.slot: ["pgoutput"]},
            "publication": f"{pg_env.slot}_pub",
            "log-monitoring": monitoring,
        },
    )
    assert pg_env.run("realtime", "--once") == 1
    err = capsys.readouterr().err
    assert (
        f"slot '{pg_env.slot}' holds" in err
        and "log-monitoring.max-wal-size-gb" in err
        and "Traceback" not in err
    )


def test_streaming_logs_its_progress(
    pg_env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_env.source.execute("CREATE TABLE ticks (id integer PRIMARY KEY, v text)")
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("INSERT INTO ticks SELECT g, 'v' FROM generate_series(1, 300) g")
    monkeypatch.setattr("replicator.realtime.pipeline.PROGRESS_EVERY_S", 0.0)
    caplog.clear()
    assert pg_env.run("realtime", "--once") == 0
    lines = [r.getMessage() for r in caplog.records if "changes/s" in r.getMessage()]
    assert lines, caplog.text
    match = re.search(r"(\d+) changes in (\d+) transactions read", lines[-1])
    assert match is not None, lines[-1]
    assert int(match[1]) >= 300 and int(match[2]) >= 1  # the heartbeat may add its own
