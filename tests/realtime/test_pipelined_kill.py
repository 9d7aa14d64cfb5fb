"""A SIGKILL while a pipelined destination commit (destinations/postgres/pipelined.py) is in flight.

The whole commit (BEGIN, the statements, the checkpoint, COMMIT) is already in the destination
server's hands when our process dies: the server may still commit it, or not. Either way the
changes and the checkpoint go together, so the next run resumes exactly after what the
destination holds: nothing lost, nothing twice (the keyless table would show a duplicate).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.realtime.conftest import Env
from tests.support import spawn_cli

SUMS = "SELECT (SELECT sum(v) FROM a), (SELECT sum(v) FROM b), (SELECT coalesce(sum(delta), 0) FROM h)"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigkill_with_a_pipelined_commit_in_flight_loses_nothing_and_duplicates_nothing(pg_env: Env) -> None:
    pg_env.source.execute(
        "CREATE TABLE a (id integer PRIMARY KEY, v bigint NOT NULL); INSERT INTO a VALUES (1, 0);"
        "CREATE TABLE b (id integer PRIMARY KEY, v bigint NOT NULL); INSERT INTO b VALUES (1, 0);"
        "CREATE TABLE h (delta bigint NOT NULL)"
    )
    assert pg_env.run("full", "--once") == 0

    def transaction(delta: int) -> None:
        with pg_env.source.connect() as conn, conn.transaction():
            conn.execute("UPDATE a SET v = v + %s", (delta,))
            conn.execute("UPDATE b SET v = v + %s", (delta,))
            conn.execute("INSERT INTO h VALUES (%s)", (delta,))

    child = spawn_cli(*pg_env.args("realtime"))
    try:
        transaction(1)
        wait_for(lambda: pg_env.dest.fetchone("SELECT count(*) FROM h") == 1, "the first change not applied")
        with pg_env.dest.connect() as locker:
            # The next commit's UPDATE of b waits behind this lock, the rest of its pipeline queued.
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
            transaction(2)
            wait_for(
                lambda: pg_env.dest.fetchone(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'replicator%%' "
                    "AND wait_event_type = 'Lock'"
                ) == 1,
                "the pipelined commit never waited on the lock",
            )
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            locker.execute("COMMIT")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    # Whatever the orphaned backend did, the destination shows whole source transactions.
    wait_for(
        lambda: pg_env.dest.fetchone(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'replicator%%'"
        ) == 0,
        "the killed run's destination session lingers",
    )
    with pg_env.dest.connect() as conn:
        sums = conn.execute(SUMS).fetchone()
    assert sums is not None and len(set(sums)) == 1 and sums[0] in (1, 3), sums
    transaction(4)
    assert pg_env.run("realtime", "--once") == 0
    for table in ("a", "b", "h"):
        pg_env.assert_equal(table)
    assert pg_env.dest.fetchone("SELECT count(*) FROM h") == 3  # none twice, none lost
