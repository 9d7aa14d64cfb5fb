"""``replicator switchover`` end to end, while ``run full`` streams, on real servers."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from tests.realtime.conftest import Env
from tests.support import run_cli
from tests.switchover.conftest import start_streaming, stop, switchover_args

SCHEMA = """
CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL UNIQUE, balance numeric NOT NULL DEFAULT 0);
CREATE TABLE transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id integer NOT NULL REFERENCES accounts (id),
    amount numeric NOT NULL CHECK (amount <> 0)
);
INSERT INTO accounts (email) SELECT 'a' || g || '@example.com' FROM generate_series(1, 200) g;
INSERT INTO transfers (account_id, amount) SELECT 1 + g % 200, g FROM generate_series(1, 500) g;
"""


class Writer(threading.Thread):
    """An application writing to the source until told to stop."""

    def __init__(self, env: Env):
        super().__init__(daemon=True)
        self.env = env
        self.halt = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        try:
            with self.env.source.connect() as conn:
                while not self.halt.is_set():
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO accounts (email) VALUES (%s) RETURNING id",
                            (f"w{self.writes}@example.com",),
                        )
                        conn.execute(
                            "INSERT INTO transfers (account_id, amount) VALUES (%s, %s)",
                            (rng.randint(1, 200), rng.randint(1, 99)),
                        )
                        conn.execute(
                            "UPDATE accounts SET balance = balance + 1 WHERE id = %s", (rng.randint(1, 200),)
                        )
                    self.writes += 1
                    time.sleep(0.005)
        except BaseException as e:  # reported by the test
            self.error = e


def test_switchover_with_a_writer_that_stops(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    try:
        writer = Writer(env)
        writer.start()
        time.sleep(3)
        writer.halt.set()  # the application stops writing, as the README's first variant says
        writer.join()
        assert writer.error is None and writer.writes > 20
        capsys.readouterr()
        started = time.monotonic()
        assert run_cli(*switchover_args(env, "--drop-slot")) == 0
        seconds = time.monotonic() - started
        out = capsys.readouterr().out
        out_child, err_child = child.communicate(timeout=60)  # the stream stopped by itself
    finally:
        stop(child)
    assert child.returncode == 0, err_child
    assert "promoted by `replicator switchover`" in err_child
    steps = [line.split(",", 2)[0] for line in out.splitlines() if not line.startswith(" ")]
    assert steps == ["marker", "sequences", "validate", "verify", "record", "cleanup"], out
    assert "record, " in out and "the running stream stopped by itself" in out
    assert "verify, " in out and "2 table(s) equal" in out
    # Sequences exactly the source's; identity as the source has it; the destination takes new rows.
    seqs = "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"
    assert env.dest.fetchall(seqs) == env.source.fetchall(seqs)
    assert (
        env.dest.fetchone(
            "SELECT attidentity FROM pg_attribute WHERE attrelid = 'transfers'::regclass AND attname = 'id'"
        )
        == "a"
    )
    env.dest.execute("INSERT INTO accounts (email) VALUES ('after@example.com')")
    env.dest.execute("INSERT INTO transfers (account_id, amount) VALUES (1, 5)")
    assert (
        env.dest.fetchone("SELECT max(id) FROM accounts")
        == env.source.fetchone("SELECT max(id) FROM accounts") + 1
    )
    with pytest.raises(psycopg.errors.GeneratedAlways):
        env.dest.execute("INSERT INTO transfers (id, account_id, amount) VALUES (1, 1, 1)")
    # The slot and publication are gone; a later run refuses to write into the promoted destination.
    assert (
        env.source.fetchone("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (env.slot,))
        == 0
    )
    assert env.source.fetchone("SELECT count(*) FROM pg_publication") == 0
    assert env.run("realtime", "--once") == 2
    print(f"switchover end to end: {seconds:.1f} s")


def test_read_only_source_ends_the_writers_and_keeps_the_heartbeat(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    app = env.source.connect(application_name="the-app")  # opened before: it could still write
    undo = f"ALTER DATABASE {env.source.name} RESET default_transaction_read_only"
    try:
        app.execute("INSERT INTO accounts (email) VALUES ('before@example.com')")
        capsys.readouterr()
        assert (
            run_cli(*switchover_args(env, "--read-only-source")) == 1
        )  # without --terminate: named, refused
        out = capsys.readouterr().out
        assert (
            "writers, " in out and "FAILED: 1 session(s) opened before the database became read-only" in out
        )
        assert "(the-app)" in out and "switchover stopped at step writers" in out
        undo = next(line for line in out.splitlines() if line.startswith("read-only-source")).split(
            "to undo: "
        )[1]
        assert undo == (
            f"BEGIN READ WRITE; ALTER DATABASE {env.source.name} RESET default_transaction_read_only; COMMIT;"
        )
        with env.source.connect() as late, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            late.execute("INSERT INTO accounts (email) VALUES ('late@example.com')")
        assert run_cli(*switchover_args(env, "--read-only-source", "--terminate")) == 0
        out = capsys.readouterr().out
        assert "writers, " in out and "ok: ended 1 session(s)" in out
        assert app.closed or app.broken or _dead(app)
        out_child, err_child = child.communicate(timeout=60)
    finally:
        stop(child)
        app.close()
        with env.source.connect() as conn:  # the undo command, as printed
            conn.execute(undo)
        assert env.source.fetchone("SHOW default_transaction_read_only") == "off"
    assert child.returncode == 0, err_child
    env.assert_equal("accounts", "transfers")


def _dead(conn: psycopg.Connection[object]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_the_marker_step_fails_named_when_nothing_streams(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.source.execute(SCHEMA)
    assert env.run("full", "--once") == 0
    env.source.execute("INSERT INTO accounts (email) VALUES ('unseen@example.com')")
    capsys.readouterr()
    assert run_cli(*switchover_args(env, "--timeout-s", "2")) == 1
    out = capsys.readouterr().out
    assert out.startswith("marker, ") and "FAILED: the destination did not reach the marker" in out
    assert "bytes behind" in out and "switchover stopped at step marker" in out
    assert env.dest.fetchone("SELECT count(*) FROM _replicator.switchovers") == 0


@pytest.mark.parametrize("elsewhere", ["another database", "published tables"])
def test_the_marker_is_reached_under_continuous_writes(
    env: Env, elsewhere: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.source.execute(SCHEMA)
    other = f"{env.source.name}_other"
    env.source.cluster.create_database(other)
    child = start_streaming(env)
    halt = threading.Event()

    def write_forever() -> None:
        dsn = env.source.cluster.conninfo(other if elsewhere == "another database" else env.source.name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            if elsewhere == "another database":
                conn.execute("CREATE TABLE IF NOT EXISTS busy (v integer)")
            while not halt.is_set():
                if elsewhere == "another database":
                    conn.execute("INSERT INTO busy SELECT generate_series(1, 100)")
                else:
                    conn.execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE id = 1 + (random() * 199)::int"
                    )

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    try:
        time.sleep(1)
        capsys.readouterr()
        assert run_cli(*switchover_args(env, "--no-verify", "--timeout-s", "30")) == 0
        out = capsys.readouterr().out
        assert "marker, " in out and "ok: marker" in out and "verify, 0.0, skipped (--no-verify)" in out
    finally:
        halt.set()
        writer.join()
        stop(child)
        with psycopg.connect(env.source.cluster.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {other} WITH (FORCE)")
