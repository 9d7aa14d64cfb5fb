"""Deletes found by key buckets (``delta/buckets.py``), end to end, adversarially: deletes at
bucket edges and at the ends of bigint, whole buckets gone, a delete and an insert in one bucket
(equal counts), drift at the destination, concurrent writes during passes, SIGKILL, and the keys
that must fall back to the full walk."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from replicator.delta import buckets
from tests.delta.conftest import DeltaSetup
from tests.support import run_cli, spawn_cli

SHIFT = 4  # buckets of 16 key values in the tests that place keys at bucket edges

# Only even ids: odd ones are free, so a key the destination never had can be inserted into
# any bucket. Plus both ends of bigint, and negative keys (``>>`` floors them).
SOURCE = """
CREATE TABLE nums (id bigint PRIMARY KEY, v text);
INSERT INTO nums SELECT 2 * g, 'v' || g FROM generate_series(-2000, 2000) g;
INSERT INTO nums VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max'),
    (-9223372036854775807, 'min+1'), (9223372036854775806, 'max-1');
CREATE TABLE small (id smallint PRIMARY KEY, v text);
INSERT INTO small SELECT g, 'v' FROM generate_series(-32768, 32767, 3) g;
CREATE TABLE mid (id integer PRIMARY KEY, v text);
INSERT INTO mid SELECT g * 5, 'v' FROM generate_series(-3000, 3000) g;
ANALYZE;
"""
TABLES = ("nums", "small", "mid")


@pytest.fixture
def setup(delta: DeltaSetup, caplog: pytest.LogCaptureFixture) -> Iterator[DeltaSetup]:
    delta.source.execute(SOURCE)
    delta.extractor = "delta-snapshot:\n  threads: 2\n"
    with caplog.at_level(logging.DEBUG, logger="replicator.delta.buckets"):
        yield delta


@pytest.fixture
def fixed_shift(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """Buckets of 2^SHIFT values, so that tests can place keys at their edges; records what
    the statistics would have chosen (they must have chosen buckets)."""
    chosen: list[int | None] = []
    real = buckets.choose_shift

    def fixed(*args, **kw):  # type: ignore[no-untyped-def]
        chosen.append(real(*args, **kw))
        return SHIFT

    monkeypatch.setattr(buckets, "choose_shift", fixed)
    return chosen


def _by_buckets(caplog: pytest.LogCaptureFixture, *tables: str) -> None:
    messages = [r.getMessage() for r in caplog.records]
    for table in tables:
        assert any(m.startswith(f"public.{table}: key buckets of 2^") for m in messages), table
        assert any(m.startswith(f"public.{table}: ") and "deletes by key buckets" in m for m in messages), (
            table
        )


def test_the_statistics_choose_buckets_and_spread_deletes_are_found(
    setup: DeltaSetup, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.once()
    setup.source.execute(
        "DELETE FROM nums WHERE id % 74 = 0; UPDATE nums SET v = 'changed' WHERE id % 202 = 0; "
        "DELETE FROM small WHERE id % 37 = 1; DELETE FROM mid WHERE id % 35 = 0"
    )
    gone = setup.dest.fetchone("SELECT count(*) FROM nums WHERE id % 74 = 0")
    caplog.clear()
    capsys.readouterr()
    setup.once()
    setup.assert_same(*TABLES)
    _by_buckets(caplog, *TABLES)
    assert "public.nums (xmin): " in capsys.readouterr().out
    assert f"{gone} deleted (xmin, deletes by key buckets)" in caplog.text
    assert "found from the sums" in caplog.text


def test_deletes_at_bucket_edges_and_ends_of_bigint_whole_buckets_and_several_per_bucket(
    setup: DeltaSetup, fixed_shift: list[int | None], caplog: pytest.LogCaptureFixture
) -> None:
    setup.once()
    edges = [b * 16 for b in (-50, -3, 0, 7, 40)] + [b * 16 + 14 for b in (-60, -1, 0, 9, 41)]
    setup.source.execute("DELETE FROM nums WHERE id = ANY(%s)", (edges,))
    # both edges of one bucket: two deletes, so these buckets are walked, not found from the sums
    both = [k for b in (-7, 5, 33) for k in (b * 16, b * 16 + 14)]
    setup.source.execute("DELETE FROM nums WHERE id = ANY(%s)", (both,))
    setup.source.execute("DELETE FROM mid WHERE id IN (-80, -65, 160, 175)")  # mid: both edges too
    setup.source.execute(
        # both ends of bigint (the first and last buckets there are); a whole bucket (id 320..334),
        # and the last keys of the dense range; two and three deletes in one bucket
        "DELETE FROM nums WHERE id IN (-9223372036854775808, 9223372036854775807) "
        "OR id BETWEEN 320 AND 335 OR id > 3990 AND id < 100000 OR id IN (1602, 1604, 1700, 1702, 1704); "
        "DELETE FROM small WHERE id IN (-32768, 32767) OR id BETWEEN 0 AND 15; "
        "DELETE FROM mid WHERE id IN (-15000, 15000, 0, 5, -5)"
    )
    setup.once()
    setup.assert_same(*TABLES)
    _by_buckets(caplog, *TABLES)
    assert len(fixed_shift) == len(TABLES) and all(s is not None for s in fixed_shift)


def test_a_delete_and_an_insert_in_one_bucket_leave_its_count_equal(
    setup: DeltaSetup, fixed_shift: list[int | None]
) -> None:
    """The source's bucket 100 (keys 1600..1615) loses 1602 and gains 1603, which the destination
    does not have yet: the counts are equal on both sides, and the delete must still be found."""
    setup.once()
    setup.source.execute(
        "DELETE FROM nums WHERE id = 1602; INSERT INTO nums VALUES (1603, 'new'); "
        "DELETE FROM nums WHERE id IN (1630, 1650); INSERT INTO nums VALUES (1631, 'n'), (1655, 'n')"
    )
    setup.once()
    setup.assert_same(*TABLES)
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id IN (1602, 1630, 1650)") == 0


def test_a_row_the_source_never_had_is_deleted_as_the_walk_deletes_it(
    setup: DeltaSetup, fixed_shift: list[int | None]
) -> None:
    """Drift: rows written at the destination behind our back, in buckets where nothing else
    changed (one alone: found from the sums) and beside a source delete (walked)."""
    setup.once()
    setup.dest.execute("INSERT INTO nums VALUES (2001, 'drift'), (2033, 'drift')")
    setup.source.execute("DELETE FROM nums WHERE id = 2034")
    setup.once()
    setup.assert_same(*TABLES)


def test_equal_counts_hiding_a_missing_key_stop_the_table_as_the_walk_does(
    setup: DeltaSetup, fixed_shift: list[int | None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Drift the other way: the destination lost 1000 (a key the source keeps) and the source
    deleted 1002, in the same bucket: equal counts. The bucket must be walked, which sees a
    source key the destination lacks: that table's pass is refused, as the full walk refuses it."""
    setup.once()
    setup.dest.execute("DELETE FROM nums WHERE id = 1000")
    setup.source.execute("DELETE FROM nums WHERE id = 1002; DELETE FROM mid WHERE id = 10")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    out, err = capsys.readouterr()
    assert "1 table(s) FAILED: public.nums" in out
    assert "public.nums: comparing keys found 1 source keys that the destination lacks" in err
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id = 1002") == 1  # nothing deleted
    setup.assert_same("small", "mid")


def test_a_bucket_whose_sums_point_at_a_key_nobody_has_is_walked(
    setup: DeltaSetup, fixed_shift: list[int | None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bucket 100 (1600..1615): the source deleted 1602; the destination also drifted, with an
    extra 1609 and without 1604. One key more at the destination, offsets 2 + 9 - 4 = 7: the sums
    point at 1607, which neither side has. Only the hash sums show that 1607 is not the whole
    difference: the bucket is walked, which sees the missing 1604 and stops the table."""
    setup.once()
    setup.source.execute("DELETE FROM nums WHERE id = 1602")
    setup.dest.execute("DELETE FROM nums WHERE id = 1604; INSERT INTO nums VALUES (1609, 'drift')")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    err = capsys.readouterr().err
    assert "public.nums: comparing keys found 1 source keys that the destination lacks" in err


def test_a_candidate_key_the_source_still_has_is_never_deleted(
    setup: DeltaSetup, fixed_shift: list[int | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the hash sums ever to agree by chance, the source's own answer still decides: here
    they are made to agree always, and a bucket whose offset sum points at a key the source has
    must not lose that key (it is walked instead)."""
    monkeypatch.setattr("replicator.keybuckets.single_matches", lambda *a: True)
    setup.once()
    # Destination bucket 100 (1600..1615): lacks 1602 and has 1601 and 1605 extra. One key more,
    # offset sum difference 1 + 5 - 2 = 4: the sums point at 1604, which both sides have.
    setup.dest.execute("DELETE FROM nums WHERE id = 1602; INSERT INTO nums VALUES (1601, 'x'), (1605, 'x')")
    assert run_cli(*setup.args("--once")) == 1  # walked: the missing 1602 stops the table
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id = 1604") == 1


def test_concurrent_writes_during_passes_then_one_quiet_pass_is_exact(setup: DeltaSetup) -> None:
    setup.once()
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with psycopg.connect(setup.source.conninfo, autocommit=True) as conn:
                k = 0
                while not stop.is_set():
                    k += 1
                    conn.execute(
                        "DELETE FROM nums WHERE id = (SELECT id FROM nums WHERE id BETWEEN -4000 AND 4000 "
                        "ORDER BY hashint8(id + %s) LIMIT 1)",
                        (k,),
                    )
                    conn.execute("INSERT INTO nums VALUES (%s, 'w') ON CONFLICT DO NOTHING", (2 * k + 1,))
                    conn.execute("UPDATE nums SET v = v || '+' WHERE id = %s", (4 * k,))
                    conn.execute("DELETE FROM mid WHERE id = %s", (5 * k - 7000,))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(4):
            setup.once()
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    setup.once()
    setup.assert_same(*TABLES)


def test_sigkill_while_the_buckets_are_compared_then_the_next_pass_is_exact(setup: DeltaSetup) -> None:
    """The kill lands while the destination's summary waits on a lock the test holds; the pass
    had merged nothing yet (its changes wait for the deletes, in one transaction)."""
    setup.once()
    setup.source.execute("DELETE FROM nums WHERE id % 30 = 0; UPDATE nums SET v = 'k' WHERE id % 22 = 0")
    before = setup.dest.fetchone("SELECT count(*) FROM nums")
    holder = setup.dest.connect()
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE nums IN ACCESS EXCLUSIVE MODE")
    child = spawn_cli(*setup.args("--once"))
    try:
        deadline = time.monotonic() + 60
        while not setup.dest.fetchone(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%% >> %%'"
        ):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the summary never started"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        holder.close()
    assert setup.dest.fetchone("SELECT count(*) FROM nums") == before
    setup.once()
    setup.assert_same(*TABLES)


def test_keys_without_buckets_fall_back_to_the_full_walk(
    delta: DeltaSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Text, uuid, composite and timestamp keys, and an integer key without statistics."""
    delta.source.execute(
        """
        CREATE TABLE words (w text PRIMARY KEY);
        INSERT INTO words SELECT 'w' || g FROM generate_series(1, 2000) g;
        CREATE TABLE ids (id uuid PRIMARY KEY);
        INSERT INTO ids SELECT md5(g::text)::uuid FROM generate_series(1, 2000) g;
        CREATE TABLE pairs (a integer, b integer, PRIMARY KEY (a, b));
        INSERT INTO pairs SELECT g / 10, g % 10 FROM generate_series(1, 2000) g;
        CREATE TABLE times (at timestamptz PRIMARY KEY);
        INSERT INTO times SELECT '2024-01-01'::timestamptz + g * interval '1 s'
            FROM generate_series(1, 2000) g;
        ANALYZE words, ids, pairs, times;
        CREATE TABLE fresh (id bigint PRIMARY KEY);
        INSERT INTO fresh SELECT g FROM generate_series(1, 2000) g;
        """
    )
    delta.extractor = "delta-snapshot:\n  threads: 2\n"
    delta.once()
    delta.source.execute(
        "DELETE FROM words WHERE w LIKE '%7'; DELETE FROM ids WHERE id::text LIKE 'a%'; "
        "DELETE FROM pairs WHERE b = 3; DELETE FROM times WHERE extract(second FROM at) = 5; "
        "DELETE FROM fresh WHERE id % 9 = 0"
    )
    caplog.clear()
    delta.once()
    tables = ("words", "ids", "pairs", "times", "fresh")
    delta.assert_same(*tables)
    assert caplog.text.count("deletes by one key walk") == len(tables)
    assert "deletes by key buckets" not in caplog.text


def test_more_buckets_than_memory_allows_walk_every_key(
    setup: DeltaSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Statistics can be stale (a table grew since its last ANALYZE): a summary of more buckets
    than ``MAX_GROUPS`` is not compared (its buckets were cut at an arbitrary point); every key
    is walked instead."""
    monkeypatch.setattr("replicator.keybuckets.MAX_GROUPS", 50)
    monkeypatch.setattr(buckets, "choose_shift", lambda *a: 0)
    setup.once()
    setup.source.execute("DELETE FROM nums WHERE id % 6 = 0; DELETE FROM mid WHERE id % 15 = 0")
    setup.once()
    setup.assert_same(*TABLES)
    assert "more than 50 key buckets (stale statistics?): walking every key" in caplog.text


def test_soft_deletes_flag_the_keys_found_from_the_sums_and_by_walking(
    setup: DeltaSetup, fixed_shift: list[int | None]
) -> None:
    setup.dest_extra = {"deletes": "soft"}
    setup.once()
    # 1602: alone in its bucket (found from the sums); 1700 and 1702: walked
    setup.source.execute("DELETE FROM nums WHERE id IN (1602, 1700, 1702); DELETE FROM mid WHERE id = 25")
    setup.once()
    flagged = "SELECT array_agg(id ORDER BY id) FROM {} WHERE __replicator_is_deleted"
    assert setup.dest.fetchone(flagged.format("nums")) == [1602, 1700, 1702]
    assert setup.dest.fetchone(flagged.format("mid")) == [25]
    # Flagged keys are not live: the next pass sees the same key sets on both sides.
    setup.source.execute("INSERT INTO nums VALUES (1602, 'back')")
    setup.once()
    assert setup.dest.fetchone(flagged.format("nums")) == [1700, 1702]
    assert setup.dest.fetchone("SELECT v FROM nums WHERE id = 1602") == "back"


def test_rows_that_stop_matching_the_conditions_are_deleted(
    setup: DeltaSetup, fixed_shift: list[int | None], caplog: pytest.LogCaptureFixture
) -> None:
    setup.filter = f"""allow:
  catalog: {setup.source.name}
  schema: public
  allow:
    nums:
      conditions: "v <> 'hidden'"
"""
    setup.once()
    setup.source.execute(
        "UPDATE nums SET v = 'hidden' WHERE id IN (1602, 1700, 1702); DELETE FROM nums WHERE id = 40"
    )
    setup.once()
    _by_buckets(caplog, "nums")
    assert setup.dest.fetchone("SELECT count(*) FROM nums WHERE id IN (40, 1602, 1700, 1702)") == 0
    assert setup.dest.fetchone("SELECT count(*) FROM nums") == setup.source.fetchone(
        "SELECT count(*) FROM nums WHERE v <> 'hidden'"
    )


def test_a_null_key_at_the_destination_stops_that_table_not_the_pass(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """A destination key under a unique index (not a primary key) can be NULL; the summary would
    put it in a bucket of its own. That table's pass fails, as the full walk's does; the rest go on."""
    setup.once()
    setup.dest.execute(
        "ALTER TABLE nums DROP CONSTRAINT nums_pkey, ALTER COLUMN id DROP NOT NULL; "
        "CREATE UNIQUE INDEX nums_id ON nums (id); "
        "INSERT INTO nums VALUES (NULL, 'null')"
    )
    setup.source.execute("DELETE FROM nums WHERE id = 40; DELETE FROM mid WHERE id = 25")
    capsys.readouterr()
    assert run_cli(*setup.args("--once")) == 1
    out, err = capsys.readouterr()
    assert "1 table(s) FAILED: public.nums" in out
    assert "the destination has 1 row(s) with a NULL key" in err
    setup.assert_same("mid", "small")
