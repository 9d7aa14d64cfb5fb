"""Where a stream may start (issue 9 items 5 and 6): a start-lsn outside the slot's range and a lost
slot are refused before anything is written; `full` recovers from a lost slot and ends equal."""

from __future__ import annotations

import pytest

from replicator.lsn import Lsn
from tests.realtime.conftest import Env


def _first_realtime_run(pg_env: Env) -> None:
    """A slot and a copied table, no checkpoint yet: the situation in which start-lsn applies."""
    pg_env.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'snap');"
        f"CREATE PUBLICATION {pg_env.slot}_pub FOR TABLE t"
    )
    pg_env.source.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (pg_env.slot,))
    assert pg_env.run("snapshot") == 0


def _slot_confirmed(pg_env: Env) -> Lsn:
    return Lsn.parse(pg_env.source.fetchone(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
    ))


@pytest.mark.parametrize("where", ["past the WAL end", "before the slot"])
def test_a_start_lsn_outside_the_slot_range_is_refused_before_anything_is_confirmed(
    pg_env: Env, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    _first_realtime_run(pg_env)
    pg_env.source.execute("INSERT INTO t VALUES (2, 'after')")
    confirmed = _slot_confirmed(pg_env)
    wal_end = Lsn.parse(pg_env.source.fetchone("SELECT pg_current_wal_lsn()::text"))
    start = Lsn(0xFFFF_FFFF_FFFF_FFFF) if where == "past the WAL end" else Lsn(confirmed - 1)
    pg_env.extractor_text = (
        f"realtime:\n  heartbeat:\n    enable: false\n  start-position:\n    start-lsn: {start}\n"
    )
    capsys.readouterr()
    assert pg_env.run("realtime", "--once") == 2
    err = capsys.readouterr().err
    assert "extractor.yaml:5: start-lsn:" in err and str(start) in err, err
    assert str(confirmed) in err and "Traceback" not in err
    # Both bounds are named; the upper one is the WAL end at the time of the check.
    reported_end = Lsn.parse(err.split(" (its confirmed position), ")[1].split(" ")[0])
    assert reported_end >= wal_end
    # Nothing confirmed, nothing recorded, nothing applied.
    assert _slot_confirmed(pg_env) == confirmed
    assert pg_env.dest.fetchone("SELECT count(*) FROM _replicator.slot_checkpoints") == 0
    assert pg_env.dest.fetchall("SELECT id FROM t ORDER BY id") == [(1,)]


def test_a_start_lsn_for_a_slot_that_does_not_exist_yet_is_refused(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text)")
    start = pg_env.source.fetchone("SELECT pg_current_wal_lsn()::text")
    pg_env.extractor_text += f"  start-position:\n    start-lsn: {start}\n"
    assert pg_env.run("realtime", "--once") == 2
    assert "does not exist yet" in capsys.readouterr().err
    assert pg_env.source.fetchone(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (pg_env.slot,)
    ) == 0
    assert pg_env.source.fetchone("SELECT count(*) FROM pg_publication") == 0


def _lose_the_slot(env: Env) -> None:
    env.source.execute("SELECT pg_drop_replication_slot(%s)", (env.slot,))
    # Meanwhile: changes the dropped slot would have carried, deletes included.
    env.source.execute(
        "INSERT INTO t SELECT g, 'new' FROM generate_series(101, 120) g;"
        "UPDATE t SET v = 'changed' WHERE id % 7 = 0;"
        "DELETE FROM t WHERE id % 5 = 0;"
    )


def test_realtime_refuses_a_lost_slot_and_names_the_fix(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); "
                       "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
    assert env.run("full", "--once") == 0
    _lose_the_slot(env)
    capsys.readouterr()
    assert env.run("realtime", "--once") == 1
    err = capsys.readouterr().err
    assert f"replication slot '{env.slot}' no longer exists" in err and "replicator run full" in err, err
    # Refused before touching anything: the slot is not recreated.
    assert env.source.fetchone(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (env.slot,)
    ) == 0


def test_full_recovers_from_a_lost_slot_and_ends_equal(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); "
                       "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
    assert env.run("full", "--once") == 0
    _lose_the_slot(env)
    caplog.clear()
    assert env.run("full", "--once") == 0
    assert "no longer exists" in caplog.text  # said once, as what is being done about it
    assert "not in the destination" not in caplog.text and "another consumer" not in caplog.text
    env.assert_equal("t")
    # And from the new slot on, a plain realtime run streams with nothing to complain about.
    env.source.execute("DELETE FROM t WHERE id < 10; INSERT INTO t VALUES (1000, 'later')")
    caplog.clear()
    assert env.run("realtime", "--once") == 0
    assert "WARNING" not in caplog.text, caplog.text
    env.assert_equal("t")
