"""Publications while streaming: tables without a replica identity are published for inserts and
truncates only, so the source keeps working (issue 9 item 15); a table someone else takes out of the
publication stops the run with its name and the fix (item 7)."""

from __future__ import annotations

import logging
import signal
import time

import psycopg
import pytest

from tests.realtime.conftest import Env
from tests.support import spawn_cli

KEYLESS = """
CREATE TABLE acc (id integer PRIMARY KEY, v integer);
INSERT INTO acc SELECT g, 0 FROM generate_series(1, 10) g;
CREATE TABLE history (tid integer, delta integer, note text);     -- updated and deleted from: warned
INSERT INTO history SELECT g, g, 'snap' FROM generate_series(1, 5) g;
CREATE TABLE applog (at integer, line text);                      -- insert-only, like pgbench_history
INSERT INTO applog SELECT g, 'boot' FROM generate_series(1, 5) g;
"""


def test_keyless_tables_replicate_inserts_and_the_source_keeps_updating_them(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.source.execute(KEYLESS)
    # Statistics say whether a table is updated in place: let them see history's first UPDATE.
    env.source.execute("UPDATE history SET note = 'seen' WHERE tid = 5")
    assert env.run("full", "--once") == 0
    # The source application's own statements keep working on the published tables.
    with env.source.connect() as conn:
        conn.execute("UPDATE history SET delta = 0 WHERE tid = 1")  # fails while updates are published
        conn.execute("DELETE FROM history WHERE tid = 2")
        conn.execute("INSERT INTO history SELECT g, g, 'new' FROM generate_series(10, 14) g")
        conn.execute("INSERT INTO applog SELECT g, 'line ' || g FROM generate_series(10, 20) g")
        conn.execute("UPDATE acc SET v = v + 1 WHERE id <= 3")
    caplog.clear()
    assert env.run("realtime", "--once") == 0
    env.assert_equal("applog", "acc")
    # Inserts arrive; the update and the delete, which the source cannot log by row, do not.
    assert env.dest.fetchone("SELECT count(*) FROM history WHERE note = 'new'") == 5
    unchanged = env.dest.fetchall("SELECT tid, delta FROM history WHERE tid IN (1, 2) ORDER BY tid")
    assert unchanged == [(1, 1), (2, 2)]
    said = {
        r.getMessage().split(":")[0]: r.levelno
        for r in caplog.records
        if "INSERT and TRUNCATE only" in r.getMessage()
    }
    assert said == {"public.history": logging.WARNING, "public.applog": logging.INFO}, said
    assert "ALTER TABLE public.history REPLICA IDENTITY FULL" in caplog.text
    # A TRUNCATE is replicated too.
    env.source.execute("TRUNCATE applog")
    assert env.run("realtime", "--once") == 0
    assert env.dest.fetchone("SELECT count(*) FROM applog") == 0
    if env.plugin == "pgoutput":
        pubs = env.source.fetchall(
            "SELECT pubname, pubupdate, pubdelete FROM pg_publication p JOIN pg_publication_tables t "
            "USING (pubname) WHERE tablename = 'history'"
        )
        assert pubs == [(f"{env.slot}_pub_insert_only", False, False)]


def test_a_publication_of_ours_that_publishes_updates_of_a_keyless_table_is_refused(
    pg_env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an earlier version created: the fix is printed, nothing is changed."""
    pg_env.source.execute(KEYLESS + f"CREATE PUBLICATION {pg_env.slot}_pub FOR TABLE acc, history, applog")
    pg_env.extractor_text = "realtime:\n  heartbeat:\n    enable: false\n"
    assert pg_env.run("realtime", "--once") == 1
    err = capsys.readouterr().err
    assert "public.history has no replica identity and the publication publishes its updates" in err
    assert f'ALTER PUBLICATION "{pg_env.slot}_pub" DROP TABLE "public"."history";' in err


def _wait_streaming(env: Env, child: object) -> None:
    deadline = time.monotonic() + 90
    while not env.source.fetchone(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s AND active", (env.slot,)
    ):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()  # type: ignore[attr-defined]
        time.sleep(0.1)


def test_a_table_taken_out_of_the_publication_while_streaming_stops_the_run(pg_env: Env) -> None:
    pg_env.source.execute(
        "CREATE TABLE a (id integer PRIMARY KEY); CREATE TABLE b (id integer PRIMARY KEY, v text);"
        "CREATE TABLE c (id integer PRIMARY KEY)"
    )
    assert pg_env.run("full", "--once") == 0
    child = spawn_cli(*pg_env.args("realtime"))
    try:
        _wait_streaming(pg_env, child)
        # DROP TABLE is a schema change, not this error: the run goes on.
        pg_env.source.execute("DROP TABLE c")
        time.sleep(1.0)  # five heartbeat intervals
        assert child.poll() is None, child.communicate()
        pg_env.source.execute(f'ALTER PUBLICATION "{pg_env.slot}_pub" DROP TABLE b')
        pg_env.source.execute("INSERT INTO b VALUES (1, 'never streamed'); INSERT INTO a VALUES (1)")
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.communicate(timeout=30)
    assert child.returncode == 1, err
    assert "no longer in the publication: public.b" in err and "Traceback" not in err
    assert f'ALTER PUBLICATION "{pg_env.slot}_pub" ADD TABLE "public"."b";' in err
    assert "public.c was dropped at the source" in err


def test_a_renamed_table_is_still_itself(pg_env: Env) -> None:
    pg_env.source.execute("CREATE TABLE a (id integer PRIMARY KEY)")
    assert pg_env.run("full", "--once") == 0
    child = spawn_cli(*pg_env.args("realtime"))
    try:
        _wait_streaming(pg_env, child)
        pg_env.source.execute("ALTER TABLE a RENAME TO a2")
        time.sleep(1.0)
        assert child.poll() is None, child.communicate()
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    with pytest.raises(psycopg.errors.UndefinedTable):
        pg_env.source.execute("SELECT * FROM a")


def test_a_keyless_table_joining_a_running_job_never_leaves_the_slot_unreadable(pg_env: Env) -> None:
    """pgoutput (before PostgreSQL 18) reads publications as of each change it decodes: one created
    after the slot's position makes every change before it fail with 'publication ... does not exist',
    run after run. So the insert-only publication is made with the main one, empty if need be, and a
    keyless table that joins later is added to it by the fix the refusal prints."""
    env = pg_env
    env.source.execute("CREATE TABLE acc (id integer PRIMARY KEY, v integer); INSERT INTO acc VALUES (1, 0)")
    assert env.run("full", "--once") == 0
    env.source.execute(
        "UPDATE acc SET v = 1; CREATE TABLE applog (at integer, line text);"
        "INSERT INTO applog VALUES (1, 'a')"
    )
    code, err = _run_capture(env, "realtime", "--once")
    assert code != 0 and "does not exist" not in err, err
    fix = f'ALTER PUBLICATION "{env.slot}_pub_insert_only" ADD TABLE "public"."applog"'
    assert fix in err, err
    env.source.execute(fix)
    env.source.execute("INSERT INTO applog VALUES (2, 'b'); UPDATE acc SET v = 2")
    code, err = _run_capture(env, "realtime", "--once")
    assert code == 0, err
    assert env.dest.fetchall("SELECT at FROM applog") == [(2,)]  # realtime copies no rows from before
    assert env.dest.fetchall("SELECT v FROM acc") == [(2,)]


def test_a_slot_older_than_a_missing_insert_only_publication_is_refused_before_anything(pg_env: Env) -> None:
    """A job made before the insert-only publication was created with the main one: creating it now
    would leave the slot unreadable, so the run refuses, says why and what to do, and creates nothing."""
    env = pg_env
    env.source.execute("CREATE TABLE acc (id integer PRIMARY KEY, v integer); INSERT INTO acc VALUES (1, 0)")
    assert env.run("full", "--once") == 0
    env.source.execute(f"DROP PUBLICATION IF EXISTS {env.slot}_pub_insert_only")
    env.source.execute("CREATE TABLE applog (at integer, line text); INSERT INTO applog VALUES (1, 'a')")
    code, err = _run_capture(env, "realtime", "--once")
    assert code != 0 and "REPLICA IDENTITY FULL" in err and "older than" in err, err
    assert env.source.fetchall(
        "SELECT pubname FROM pg_publication WHERE pubname = %s", (f"{env.slot}_pub_insert_only",)
    ) == []


def _run_capture(env: Env, mode: str, *extra: str) -> tuple[int, str]:
    child = spawn_cli(*env.args(mode, *extra))
    _, err = child.communicate(timeout=120)
    return child.returncode, err
