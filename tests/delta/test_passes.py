"""Delta passes end to end on real servers: changes, long transactions, deletes, soft deletes."""

from __future__ import annotations

import psycopg
import pytest

from tests.delta.conftest import DeltaSetup
from tests.support import checksum

SOURCE = """
CREATE TABLE items (id integer PRIMARY KEY, v text, n numeric);
INSERT INTO items SELECT g, 'v' || g, g / 7.0 FROM generate_series(1, 1000) g;

CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb, updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON events (updated_at);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION touch();
INSERT INTO events SELECT g, jsonb_build_object('g', g) FROM generate_series(1, 800) g;

CREATE SEQUENCE version_seq;
CREATE TABLE versioned (id integer PRIMARY KEY, v text,
    version bigint NOT NULL DEFAULT nextval('version_seq'));
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.version := nextval('version_seq'); RETURN NEW; END $$;
CREATE TRIGGER bump BEFORE UPDATE ON versioned FOR EACH ROW EXECUTE FUNCTION bump();
INSERT INTO versioned SELECT g, 'v' || g FROM generate_series(1, 500) g;

CREATE TABLE pairs (name text, n integer, v text, PRIMARY KEY (name, n));
INSERT INTO pairs SELECT 'name ' || (g % 37), g, 'v' || g FROM generate_series(1, 600) g;
"""

EXTRACTOR = """delta-snapshot:
  threads: 2
  min-job-size-rows: 100
  per-table-config:
  - schema: public
    tables:
      events:
        update-key: updated_at
      versioned:
        update-key: [version]
"""
TABLES = ("items", "events", "versioned", "pairs")


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    delta.source.execute(SOURCE)
    delta.extractor = EXTRACTOR
    return delta


def test_inserts_updates_and_deletes_arrive_pass_after_pass(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.once()
    setup.assert_same(*TABLES)
    first = capsys.readouterr().out
    assert "4 snapshotted (2,900 rows)" in first
    changes = [
        """UPDATE items SET v = 'changed' WHERE id % 50 = 0;
           DELETE FROM items WHERE id IN (1, 2, 500, 1000);
           INSERT INTO items VALUES (5000, 'new', 1);
           UPDATE events SET payload = '{"changed": true}' WHERE id % 40 = 0;
           DELETE FROM events WHERE id = 400;
           INSERT INTO events (id, payload) VALUES (9000, '{}');
           UPDATE versioned SET v = 'changed' WHERE id <= 5;
           DELETE FROM versioned WHERE id = 500;
           UPDATE pairs SET v = 'changed' WHERE n % 100 = 0;
           DELETE FROM pairs WHERE name = 'name 3';""",
        """UPDATE items SET n = -1 WHERE id BETWEEN 100 AND 110;
           INSERT INTO pairs VALUES ('name 3', 1, 'back'), ('zzz', 0, 'last');
           DELETE FROM pairs WHERE n = (SELECT max(n) FROM pairs WHERE name = 'name 1');
           UPDATE versioned SET v = 'again' WHERE id = 1;""",
        "",  # nothing changed
    ]
    for change in changes:
        if change:
            setup.source.execute(change)
        setup.once()
        setup.assert_same(*TABLES)
    out = capsys.readouterr().out
    # xmin tables read exactly the changed rows; update-key tables also re-read the rows at the bound.
    assert "public.items (xmin): 19 upserted, 4 deleted" in out
    assert "public.items (xmin): 11 upserted, 0 deleted" in out
    assert "public.pairs (xmin): 6 upserted, 17 deleted" in out
    assert "public.events (update-key)" in out and "1 deleted" in out
    quiet = out.split("delta-snapshot pass")[-1]
    assert "public.items (xmin): 0 upserted, 0 deleted" in quiet
    assert "public.pairs (xmin): 0 upserted, 0 deleted" in quiet


def test_a_row_committed_by_a_transaction_open_across_the_pass_arrives_xmin(setup: DeltaSetup) -> None:
    setup.once()
    late = psycopg.connect(setup.source.conninfo)  # not autocommit: stays open
    late.execute("INSERT INTO items VALUES (7001, 'late', 0)")  # has a transaction ID now
    quiet = psycopg.connect(setup.source.conninfo)
    quiet.execute("SELECT 1")  # open, no transaction ID yet: it writes after the pass
    with late.transaction():  # and a subtransaction of the long one
        late.execute("UPDATE items SET v = 'late subtransaction' WHERE id = 3")
    setup.source.execute("UPDATE items SET v = 'meanwhile' WHERE id = 4")
    setup.once()
    assert setup.dest.fetchone("SELECT v FROM items WHERE id = 4") == "meanwhile"
    assert setup.dest.fetchone("SELECT count(*) FROM items WHERE id = 7001") == 0
    quiet.execute("INSERT INTO items VALUES (7002, 'quiet', 0)")
    quiet.commit()
    late.commit()
    for conn in (late, quiet):
        conn.close()
    setup.once()
    setup.assert_same("items")
    assert setup.dest.fetchone("SELECT v FROM items WHERE id = 3") == "late subtransaction"


@pytest.mark.parametrize("late_write", ["before the pass", "after the pass"])
def test_a_row_committed_late_with_an_older_update_key_arrives(setup: DeltaSetup, late_write: str) -> None:
    """updated_at = now() is the transaction's start: it commits after a pass that saw newer values."""
    setup.once()
    late = psycopg.connect(setup.source.conninfo)
    started = late.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    if late_write == "before the pass":
        late.execute("INSERT INTO events (id, payload) VALUES (7001, '{\"late\": 1}')")
        late.execute("UPDATE events SET payload = '{\"late\": 2}' WHERE id = 1")
    setup.source.execute("UPDATE events SET payload = '{\"newer\": true}' WHERE id = 2")
    setup.once()
    assert setup.dest.fetchone("SELECT updated_at > %s FROM events WHERE id = 2", (started,))
    if late_write == "after the pass":
        late.execute("INSERT INTO events (id, payload) VALUES (7001, '{\"late\": 1}')")
        late.execute("UPDATE events SET payload = '{\"late\": 2}' WHERE id = 1")
    late.commit()
    late.close()
    assert setup.source.fetchone("SELECT updated_at FROM events WHERE id = 7001") == started
    setup.once()
    setup.assert_same("events")


def test_a_sequence_value_committed_late_arrives(setup: DeltaSetup) -> None:
    setup.once()
    late = psycopg.connect(setup.source.conninfo)
    late.execute("UPDATE versioned SET v = 'late' WHERE id = 10")  # takes the next version
    setup.source.execute("UPDATE versioned SET v = 'newer' WHERE id = 11")  # a larger one, committed first
    setup.once()
    assert setup.dest.fetchone("SELECT v FROM versioned WHERE id = 11") == "newer"
    late.commit()
    late.close()
    assert setup.source.fetchone("SELECT version FROM versioned WHERE id = 10") < setup.source.fetchone(
        "SELECT version FROM versioned WHERE id = 11"
    )
    setup.once()
    setup.assert_same("versioned")


def test_the_update_key_bound_advances_when_nothing_is_open(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.once()
    setup.once()  # reads from the first pass's maxima
    setup.source.execute("UPDATE versioned SET v = 'x' WHERE id IN (7, 8, 9)")
    capsys.readouterr()
    setup.once()
    # The three changed rows plus the row holding the previous maximum (bounds are inclusive).
    assert "public.versioned (update-key): 4 upserted, 0 deleted" in capsys.readouterr().out
    bound = setup.dest.fetchone(
        "SELECT watermark::json->'since'->>0 FROM _replicator.delta_watermarks WHERE table_name = 'versioned'"
    )
    assert int(bound) == setup.source.fetchone("SELECT max(version) FROM versioned")


def test_deletes_stay_without_replicate_deletes(setup: DeltaSetup) -> None:
    setup.extractor = EXTRACTOR.replace("  threads: 2\n", "  threads: 2\n  replicate-deletes: false\n") + (
        "      pairs:\n        replicate-deletes: true\n"
    )
    setup.once()
    setup.source.execute(
        "DELETE FROM items WHERE id <= 10; DELETE FROM events WHERE id <= 10; DELETE FROM pairs WHERE n <= "
        "10;"
        "UPDATE items SET v = 'still replicated' WHERE id = 20"
    )
    setup.once()
    assert setup.dest.fetchone("SELECT count(*) FROM items") == 1000
    assert setup.dest.fetchone("SELECT count(*) FROM events") == 800
    assert setup.dest.fetchone("SELECT v FROM items WHERE id = 20") == "still replicated"
    setup.assert_same("pairs")  # its own per-table setting


def test_soft_deletes_mark_rows_and_a_returning_key_is_live_again(setup: DeltaSetup) -> None:
    setup.dest_extra = {"deletes": "soft"}
    setup.once()
    flag = "__replicator_is_deleted"
    setup.source.execute("DELETE FROM items WHERE id BETWEEN 1 AND 250; DELETE FROM pairs WHERE n > 590")
    setup.once()
    assert setup.dest.fetchone("SELECT count(*) FROM items") == 1000
    assert setup.dest.fetchall(f"SELECT min(id), max(id), count(*) FROM items WHERE {flag}") == [
        (1, 250, 250)
    ]
    assert setup.dest.fetchone(f"SELECT count(*) FROM pairs WHERE {flag}") == 10
    setup.source.execute("INSERT INTO items VALUES (5, 'back', 5)")
    setup.once()
    assert setup.dest.fetchone(f"SELECT {flag} FROM items WHERE id = 5") is False
    live = ["id", "v", "n"]
    assert checksum(setup.source, "public", "items", live) == _live_checksum(setup, "items", live)
    setup.once()  # nothing new: the marked rows are not counted again
    assert setup.dest.fetchone(f"SELECT count(*) FROM items WHERE {flag}") == 249


def _live_checksum(setup: DeltaSetup, table: str, columns: list[str]) -> tuple[int, str]:
    cols = ", ".join(columns)
    row = setup.dest.fetchall(
        f"SELECT count(*), md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) "
        f"FROM (SELECT {cols} FROM {table} WHERE NOT __replicator_is_deleted) r"
    )[0]
    return int(row[0]), str(row[1])


def test_text_keys_compare_bytewise_when_collations_differ(delta: DeltaSetup) -> None:
    """Source orders keys by ICU ('a' < 'B'), destination by C ('B' < 'a'): deletes stay exact."""
    delta.source.execute(
        """CREATE TABLE words (w text COLLATE "und-x-icu" PRIMARY KEY, v integer);
           INSERT INTO words SELECT chr(65 + g % 26) || chr(97 + (g / 26) % 26) || g,
               g FROM generate_series(1, 700) g;
           INSERT INTO words SELECT lower(w) || '~', v FROM words WHERE v % 3 = 0;"""
    )
    delta.dest.execute('CREATE TABLE words (w text COLLATE "C" PRIMARY KEY, v integer)')
    delta.extractor = "delta-snapshot:\n  min-job-size-rows: 50\n"
    delta.once()
    delta.source.execute("DELETE FROM words WHERE v % 11 = 0; UPDATE words SET v = -v WHERE v % 13 = 0")
    delta.once()
    delta.assert_same("words")


def test_rows_leaving_the_filter_condition_are_deleted(delta: DeltaSetup) -> None:
    delta.source.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, region text); "
        "INSERT INTO t SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END FROM generate_series(1, 300) g"
    )
    delta.filter = (
        f"allow:\n  catalog: {delta.source.name}\n  schema: public\n  allow:\n"
        f"    t:\n      conditions: \"region = 'eu'\"\n"
    )
    delta.once()
    assert delta.dest.fetchone("SELECT count(*) FROM t") == 150
    delta.source.execute(
        "UPDATE t SET region = 'us' WHERE id <= 100; UPDATE t SET region = 'eu' WHERE id = 299"
    )
    delta.once()
    assert delta.dest.fetchall("SELECT count(*), min(id) FROM t") == [(101, 102)]
    assert delta.dest.fetchone("SELECT count(*) FROM t WHERE id = 299") == 1


def test_new_tables_join_later_and_fresh_starts_over(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.once()
    setup.source.execute("CREATE TABLE later (id integer PRIMARY KEY); INSERT INTO later VALUES (1), (2)")
    setup.dest.execute("INSERT INTO items VALUES (-1, 'stray', 0)")  # not at the source
    capsys.readouterr()
    setup.once()
    out = capsys.readouterr().out
    assert "public.later (xmin): snapshot" in out and "1 snapshotted (2 rows)" in out
    setup.assert_same("later")
    setup.once("--fresh")
    assert "5 snapshotted" in capsys.readouterr().out
    setup.assert_same(*TABLES, "later")


def test_changing_the_update_key_reads_every_row_once(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.once()
    setup.extractor = EXTRACTOR.replace("update-key: [version]", "update-key: [id]")
    capsys.readouterr()
    setup.once()
    assert "public.versioned (update-key): 500 upserted (read every row)" in capsys.readouterr().out
    setup.once()
    assert "public.versioned (update-key): 1 upserted, 0 deleted" in capsys.readouterr().out


def test_partitioned_tables_and_rows_moving_between_partitions(delta: DeltaSetup) -> None:
    delta.source.execute(
        """CREATE TABLE m (id integer, region text, v text, PRIMARY KEY (id,
            region)) PARTITION BY LIST (region);
           CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
           CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
           INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' FROM generate_series(1,
               600) g;"""
    )
    delta.once()
    delta.source.execute(
        "UPDATE m SET region = 'us' WHERE id BETWEEN 1 AND 40 AND region = 'eu';"  # moves: delete + insert
        "UPDATE m SET v = 'changed' WHERE id % 9 = 0; DELETE FROM m WHERE id % 25 = 0"
    )
    delta.once()
    delta.assert_same("m")
    assert delta.dest.fetchone("SELECT relkind FROM pg_class WHERE relname = 'm'") == "r"


def test_user_types_move_in_text_format_for_rows_and_keys(delta: DeltaSetup) -> None:
    """Binary arrays and composites carry type OIDs that differ between servers: these tables use text."""
    delta.source.execute(
        """CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
           CREATE DOMAIN code AS text CHECK (VALUE ~ '^[a-z]+[0-9]+$');
           CREATE TABLE typed (k code PRIMARY KEY, m mood, ms mood[], tags text[]);
           INSERT INTO typed SELECT 'k' || g, 'ok', ARRAY['sad', 'happy']::mood[], ARRAY['a', 'b']
           FROM generate_series(1, 400) g;"""
    )
    delta.once()
    delta.source.execute(
        "UPDATE typed SET m = 'happy', ms = ARRAY['ok']::mood[] WHERE k IN ('k1', 'k2', 'k300');"
        "DELETE FROM typed WHERE k IN ('k5', 'k399'); INSERT INTO typed VALUES ('zz9', 'sad', NULL, '{}')"
    )
    delta.once()
    delta.assert_same("typed")


def test_an_xmin_watermark_from_another_server_reads_every_row_once(
    setup: DeltaSetup, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    setup.once()
    # As if the source had been replaced by a server whose transaction counter is far behind.
    setup.dest.execute(
        "UPDATE _replicator.delta_watermarks SET watermark = '{\"xmin\": \"99999999999\"}' WHERE kind = "
        "'xmin'"
    )
    setup.source.execute("UPDATE items SET v = 'x' WHERE id = 1")
    capsys.readouterr()
    setup.once()
    out = capsys.readouterr().out
    assert "public.items (xmin): 1,000 upserted (read every row)" in out
    assert "too far back in transaction IDs" in caplog.text
    setup.once()
    assert "public.items (xmin): 0 upserted, 0 deleted" in capsys.readouterr().out
    setup.assert_same(*TABLES)


def test_long_phases_report_progress(
    setup: DeltaSetup, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replicator.delta import work

    setup.once()
    monkeypatch.setattr(work, "LOG_EVERY_S", 0.0)
    setup.source.execute("UPDATE items SET v = 'p' WHERE id <= 300")
    setup.once()
    assert "merging changes: " in caplog.text and "changed rows merged so far" in caplog.text
    # Every key here is walked in one go (integers, text): no key ranges to report.
    assert "key ranges compared" not in caplog.text


def test_status_describes_the_watermarks(setup: DeltaSetup) -> None:
    from replicator.cli import main as cli

    setup.once()
    setup.once()
    lines = _run_status(setup, cli)
    assert any(
        "public.items" in line and "xmin: next pass reads rows written by transaction" in line
        for line in lines
    )
    versioned = next(line for line in lines if "public.versioned" in line and "update-key:" in line)
    bound = setup.source.fetchone("SELECT max(version) FROM versioned")
    assert f"update-key: next pass reads version >= {bound} (" in versioned


def _run_status(setup: DeltaSetup, cli) -> list[str]:  # type: ignore[no-untyped-def]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["status", "--destination", str(setup.tmp / "destination.yaml")]) == 0
    return out.getvalue().splitlines()
