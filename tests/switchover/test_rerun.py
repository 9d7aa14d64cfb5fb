"""``replicator switchover`` against careless operators and crashes: a failed verify, a second run,
a run killed half-way, writers that never stopped."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.realtime.conftest import Env
from tests.support import run_cli, spawn_cli
from tests.switchover.conftest import start_streaming, stop, switchover_args
from tests.switchover.test_switchover import SCHEMA, Writer

IDENTITY = "SELECT attidentity FROM pg_attribute WHERE attrelid = 'transfers'::regclass AND attname = 'id'"


def _wait_for(what: str, check: Callable[[], object], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_failed_verify_leaves_the_stream_applying_rows_with_identity_columns(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """switchover stops at verify (exit 3): nothing is promoted, so the running stream must go on,
    into a table whose identity is GENERATED ALWAYS at the source too. Here the difference verify
    finds is a row the destination has and the source does not have yet: when the source inserts
    that key, the stream's COPY fails and it merges by INSERT, which names the identity column."""
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    try:
        env.dest.execute("INSERT INTO transfers (id, account_id, amount) VALUES (501, 1, 1)")
        capsys.readouterr()
        assert run_cli(*switchover_args(env)) == 3
        out = capsys.readouterr().out
        assert "verify, " in out and "FAILED: 1 table(s) DIFFERENT: public.transfers" in out, out
        assert "switchover stopped at step verify" in out
        assert env.dest.fetchone(IDENTITY) == "d"  # still BY DEFAULT: the stream writes the source's ids
        env.source.execute("INSERT INTO transfers (account_id, amount) VALUES (3, 42)")  # id 501
        _wait_for(
            "the insert to be applied",
            lambda: (
                child.poll() is not None
                or env.dest.fetchone("SELECT amount FROM transfers WHERE id = 501") == 42
            ),
        )
        assert child.poll() is None, stop(child)
    finally:
        out_child, err_child = stop(child)
    assert "GENERATED ALWAYS" not in err_child and "non-DEFAULT" not in err_child, err_child
    env.assert_equal("transfers")


def test_switchover_run_twice_leaves_the_promoted_destination_alone(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    try:
        assert run_cli(*switchover_args(env, "--no-verify")) == 0
        child.communicate(timeout=60)
    finally:
        stop(child)
    assert child.returncode == 0
    # The application now writes to the destination: its sequences move past the source's.
    env.dest.execute("INSERT INTO accounts (email) SELECT 'new' || g FROM generate_series(1, 50) g")
    before = env.dest.fetchall("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    capsys.readouterr()
    started = time.monotonic()
    assert run_cli(*switchover_args(env, "--timeout-s", "20")) == 0
    out = capsys.readouterr().out
    assert time.monotonic() - started < 15  # no wait for a marker that no stream will carry
    steps = [line.split(",", 2)[0] for line in out.splitlines() if not line.startswith(" ")]
    assert steps == ["record", "cleanup"], out
    assert "already promoted at" in out and "left as they are" in out
    assert env.dest.fetchall("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1") == before
    env.dest.execute("INSERT INTO accounts (email) VALUES ('one more')")  # no collision
    assert env.dest.fetchone("SELECT count(*) FROM _replicator.switchovers") == 1
    # Replicating into it again is refused, unless the operator says --fresh.
    assert env.run("snapshot") == 2
    assert env.dest.fetchone("SELECT count(*) FROM accounts WHERE email = 'one more'") == 1
    assert env.run("snapshot", "--fresh") == 0
    assert env.dest.fetchone("SELECT count(*) FROM _replicator.switchovers") == 0
    env.assert_equal("accounts", "transfers")


def test_a_switchover_that_crashed_after_recording_is_finished_by_running_it_again(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed between ``record`` and the identity columns: the next run finishes that part only."""
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    job = env.dest.fetchone("SELECT job FROM _replicator.slot_checkpoints")
    env.dest.execute("INSERT INTO _replicator.switchovers (job, slots) VALUES (%s, %s)", (job, [env.slot]))
    try:
        child.communicate(timeout=60)  # the stream sees the record and stops by itself
    finally:
        stop(child)
    assert child.returncode == 0
    assert env.dest.fetchone(IDENTITY) == "d"
    capsys.readouterr()
    assert run_cli(*switchover_args(env, "--timeout-s", "5")) == 0
    out = capsys.readouterr().out
    assert "already promoted" in out and "identity column(s) GENERATED ALWAYS" in out, out
    assert env.dest.fetchone(IDENTITY) == "a"


def test_a_switchover_killed_while_waiting_is_run_again_and_the_undo_stays_right(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL while waiting for the marker, after the source was made read-only: the second run
    completes, and the undo it prints restores what the database had before the first run."""
    env.source.execute(SCHEMA)
    db = env.source.name
    child = start_streaming(env)
    child.send_signal(signal.SIGSTOP)  # the stream stalls: the marker is not reached
    crashed = spawn_cli(*switchover_args(env, "--read-only-source", "--timeout-s", "120"))
    try:
        _wait_for(
            "the source to become read-only",
            lambda: env.source.fetchone(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = %s AND 'default_transaction_read_only=on' = ANY (s.setconfig)",
                (db,),
            ),
        )
        time.sleep(1)
        crashed.kill()
        crashed.communicate(timeout=30)
        child.send_signal(signal.SIGCONT)
        capsys.readouterr()
        assert run_cli(*switchover_args(env, "--read-only-source", "--terminate")) == 0
        out = capsys.readouterr().out
        child.communicate(timeout=60)
    finally:
        if crashed.poll() is None:
            crashed.kill()
        child.send_signal(signal.SIGCONT)
        stop(child)
    assert child.returncode == 0
    undo = next(line for line in out.splitlines() if line.startswith("read-only-source")).split("to undo: ")[
        1
    ]
    assert undo == f"BEGIN READ WRITE; ALTER DATABASE {db} RESET default_transaction_read_only; COMMIT;"
    with env.source.connect() as conn:
        conn.execute(undo)
    with env.source.connect() as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
    env.assert_equal("accounts", "transfers")


def test_writers_that_never_stopped_leave_no_sequence_behind_its_rows(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """The careless operator switches over while the application still writes to the source: rows
    the stream applies after the ``sequences`` step must not leave a destination sequence behind
    them (the application's first insert at the destination would collide)."""
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    writer = Writer(env)
    writer.start()
    try:
        time.sleep(1)
        assert run_cli(*switchover_args(env, "--no-verify")) == 0
        child.communicate(timeout=60)
    finally:
        writer.halt.set()
        writer.join()
        stop(child)
    assert writer.error is None and child.returncode == 0
    for table in ("accounts", "transfers"):
        top = env.dest.fetchone(f"SELECT max(id) FROM {table}")
        seq = env.dest.fetchone(f"SELECT last_value FROM pg_sequences WHERE sequencename = '{table}_id_seq'")
        assert seq >= top, (table, seq, top)
    env.dest.execute("INSERT INTO accounts (email) VALUES ('first at the destination')")
    env.dest.execute("INSERT INTO transfers (account_id, amount) VALUES (1, 1)")


def test_a_foreign_key_left_not_valid_is_validated_by_the_switchover(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot killed between adding a foreign key NOT VALID and validating it leaves it so:
    the switchover's ``validate`` step finishes it (the source has it valid)."""
    env.source.execute(SCHEMA)
    child = start_streaming(env)
    try:
        env.dest.execute(
            """ALTER TABLE transfers DROP CONSTRAINT transfers_account_id_fkey;
               ALTER TABLE transfers ADD CONSTRAINT transfers_account_id_fkey
                   FOREIGN KEY (account_id) REFERENCES accounts (id) NOT VALID"""
        )
        capsys.readouterr()
        assert run_cli(*switchover_args(env, "--no-verify")) == 0
        out = capsys.readouterr().out
        child.communicate(timeout=60)
    finally:
        stop(child)
    assert "validate, " in out and "ok: validated public.transfers.transfers_account_id_fkey" in out, out
    assert env.dest.fetchone(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'transfers_account_id_fkey'"
    )


def test_with_several_slots_the_marker_waits_for_each(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    slots = {f"{env.slot}_a": ["pgoutput"], f"{env.slot}_b": ["pgoutput"]}
    env.source_config = lambda **kw: env.source.write_config(  # type: ignore[method-assign]
        env.tmp / "source.yaml", **{"replication-slots": slots, "publication": "p_multi"}
    )
    env.source.execute(
        "".join(
            f"CREATE TABLE t{i} (id serial PRIMARY KEY, v text); INSERT INTO t{i} (v) SELECT 'v' "
            "FROM generate_series(1, 100);"
            for i in range(6)
        )
    )
    child = spawn_cli(*env.args("full"))
    try:
        _wait_for(
            "both slots to stream",
            lambda: child.poll() is not None
            or (
                env.source.fetchone(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s AND active",
                    (f"{env.slot}_%",),
                )
                == 2
                and env.dest.fetchone("SELECT to_regclass('_replicator.slot_checkpoints') IS NOT NULL")
                and env.dest.fetchone("SELECT count(*) FROM _replicator.slot_checkpoints") == 2
            ),
            timeout_s=120,
        )
        assert child.poll() is None, child.communicate()
        env.source.execute("".join(f"INSERT INTO t{i} (v) VALUES ('last');" for i in range(6)))
        capsys.readouterr()
        assert run_cli(*switchover_args(env, "--drop-slot")) == 0
        out = capsys.readouterr().out
        child.communicate(timeout=60)
    finally:
        stop(child)
    assert child.returncode == 0
    marker = next(line for line in out.splitlines() if line.startswith("marker, "))
    assert f"{env.slot}_a (at " in marker and f"{env.slot}_b (at " in marker, out
    assert "6 table(s) equal" in out, out
    env.assert_equal(*[f"t{i}" for i in range(6)])
    assert env.dest.fetchall("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1") == (
        env.source.fetchall("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    )
