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
                        conn.execute("INSERT INTO accounts (email) VALUES (%s) RETURNING id",
                                     (f"w{self.writes}@example.com",))
                        conn.execute("INSERT INTO transfers (account_id, amount) VALUES (%s, %s)",
                                     (rng.randint(1, 200), rng.randint(1, 99)))
                        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (rng.randint(1, 200),))
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
    assert env.dest.fetchone("SELECT attidentity FROM pg_attribute WHERE attrelid = 'transfers'::regclass "
                             "AND attname = 'id'") == "a"
    env.dest.execute("INSERT INTO accounts (email) VALUES ('after@example.com')")
    env.dest.execute("INSERT INTO transfers (account_id, amount) VALUES (1, 5)")
    assert env.dest.fetchone("SELECT max(id) FROM accounts") == env.source.fetchone("SELECT max(id) FROM accounts") + 1
    with pytest.raises(psycopg.errors.GeneratedAlways):
        env.dest.execute("INSERT INTO transfers (id, account_id, amount) VALUES (1, 1, 1)")
    # The slot and publication are gone; a later run refuses to write into the promoted destination.
    assert env.source.fetchone("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (env.slot,)) == 0
    assert env.source.fetchone("SELECT count(*) FROM pg_publication") == 0
    assert env.run("realtime", "--once") == 2
    print(f"switchover end to end: {seconds:.1f} s")
