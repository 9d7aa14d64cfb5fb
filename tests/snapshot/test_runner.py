"""Snapshot end to end, on real servers: types, identifiers, keys, partitions, filters, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.support import checksum, run_cli, write

TYPE_ZOO = r"""
CREATE EXTENSION citext;
CREATE EXTENSION hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünïcödé');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN email AS citext;
CREATE TYPE address AS (street text, zip integer, tags text[]);
CREATE TYPE tagged AS (m mood, n posint);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TABLE zoo (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, num numeric(14,4), num_free numeric, r4 real, r8 double precision,
    money_v money, b boolean, t text, vc varchar(12), ch char(3), by bytea,
    d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, js json, jb jsonb, x xml, ip inet, net cidr, mac macaddr, bits bit(8), vbits varbit,
    tsv tsvector, pt point, bx box, ir int4range, tr tstzrange, nr numrange, imr int4multirange,
    ia integer[], ta2 text[][], ma mood[], m mood, pi posint, em email, ci citext, hs hstore,
    addr address, addrs address[], tg tagged, fr floatrange, fra floatrange[],
    doubled bigint GENERATED ALWAYS AS (i8 * 2) STORED
);
INSERT INTO zoo (i2, i4, i8, num, num_free, r4, r8, money_v, b, t, vc, ch, by, d, tm, tmtz, ts, tstz, iv,
                 u, js, jb, x, ip, net, mac, bits, vbits, tsv, pt, bx, ir, tr, nr, imr, ia, ta2, ma, m, pi,
                 em, ci, hs, addr, addrs, tg, fr, fra)
SELECT g::smallint, g, g * 1000000000::bigint, g * 1.2345, (g::numeric / 7), g / 3.0, g / 7.0, g * 1.5,
       g % 2 = 0, 'text ' || g || ' ünïcödé ✓', 'vc' || g, 'c' || (g % 10), decode(md5(g::text), 'hex'),
       '2024-01-01'::date + g, '12:34:56.789'::time, '12:34:56+02'::timetz,
       '2024-01-01 00:00:00'::timestamp + g * interval '1 minute',
           '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       g * interval '1 day 2 hours', md5(g::text)::uuid, json_build_object('g', g, 'a', json_build_array(1,
           'x')),
       jsonb_build_object('g', g, 'nested', jsonb_build_object('deep', true), 'num', 1.50),
       ('<r g="' || g || '"/>')::xml, ('10.0.' || (g % 255) || '.1')::inet, '10.1.0.0/16'::cidr,
           '08:00:2b:01:02:03'::macaddr,
       (g % 256)::bit(8), B'101'::varbit, to_tsvector('simple', 'the quick fox ' || g), point(g, -g),
       box(point(0, 0), point(g, g)), int4range(g, g + 10), tstzrange('2024-01-01', '2024-02-01'),
       numrange(1.5, g + 0.5), int4multirange(int4range(1, 3), int4range(g + 5, g + 9)),
       ARRAY[g, g + 1, NULL], ARRAY[['a', 'b'], ['c', NULL]], ARRAY['sad', 'happy']::mood[], 'ünïcödé', g,
       'User' || g || '@Example.com', 'CaseInsensitive', hstore('k', g::text),
       ROW('main st', g, ARRAY['x', 'y'])::address, ARRAY[ROW('a', 1, NULL)::address, NULL],
       ROW('ok', g)::tagged, floatrange(0.5, g), ARRAY[floatrange(1, 2)]
FROM generate_series(1, 500) g;
-- a row of NULLs in every nullable column
INSERT INTO zoo (i2) VALUES (NULL);
"""


def _configs(
    tmp_path: Path, source_db: Database, dest_db: Database, extractor: str | None = None
) -> list[str]:
    args = [
        "run", "snapshot",
        "--source", str(source_db.write_config(tmp_path / "source.yaml")),
        "--destination", str(dest_db.write_config(tmp_path / "destination.yaml")),
    ]
    if extractor:
        args += ["--extractor", str(write(tmp_path / "extractor.yaml", extractor))]
    return args


def test_every_type_family_and_nulls_copy_exactly(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(TYPE_ZOO)
    assert run_cli(*_configs(tmp_path, source_db, dest_db, "snapshot:\n  min-job-size-rows: 100\n")) == 0
    assert checksum(dest_db, "public", "zoo") == checksum(source_db, "public", "zoo")
    # Same column types, spelled the same way, and user types recreated faithfully.
    type_query = (
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'public.zoo'::regclass AND attnum > 0 ORDER BY attnum"
    )
    assert dest_db.fetchall(type_query) == source_db.fetchall(type_query)
    enum_query = "SELECT enum_range(NULL::mood)::text"
    assert dest_db.fetchone(enum_query) == source_db.fetchone(enum_query)
    # The generated column stays generated (pgoutput does not send its values later).
    assert (
        dest_db.fetchone(
            "SELECT attgenerated FROM pg_attribute WHERE attrelid = 'zoo'::regclass AND attname = 'doubled'"
        )
        == "s"
    )
    assert (
        dest_db.fetchone(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'zoo'::regclass AND "
            "contype = 'p'"
        )
        == "PRIMARY KEY (id)"
    )
    # The domain's check came along.
    assert "VALUE > 0" in dest_db.fetchone(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = 'posint'::regtype"
    )


IDENTIFIERS = r'''
CREATE SCHEMA "Mixed Schema";
CREATE TABLE "Mixed Schema"."Ünïcode Tåble" ("Weird ""col""" integer, "select" text, "CamelKey" integer,
    "ключ" text,
    PRIMARY KEY ("CamelKey", "ключ"));
INSERT INTO "Mixed Schema"."Ünïcode Tåble" SELECT g, 'v' || g, g, 'k' || (g % 3) FROM generate_series(1,
    300) g;
CREATE TABLE no_key (a integer, b text);
INSERT INTO no_key SELECT g % 10, 'dup' FROM generate_series(1, 100) g;
CREATE TABLE empty_table (id integer PRIMARY KEY, v text);
CREATE TABLE toasted (id integer PRIMARY KEY, big text, blob bytea);
INSERT INTO toasted SELECT g, repeat(md5(g::text), 3200), decode(repeat(md5((g * 7)::text), 3200), 'hex')
FROM generate_series(1, 20) g;
CREATE TABLE events (id bigint, at date NOT NULL, payload jsonb, PRIMARY KEY (id,
    at)) PARTITION BY RANGE (at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
    PARTITION BY HASH (id);
CREATE TABLE events_2024_a PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE events_2024_b PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO events SELECT g, '2023-01-01'::date + (g % 700), jsonb_build_object('g',
    g) FROM generate_series(1, 3000) g;
ANALYZE;
'''


def test_identifiers_keys_toast_partitions_and_empty_tables(
    source_db: Database, dest_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source_db.execute(IDENTIFIERS)
    args = _configs(tmp_path, source_db, dest_db, "snapshot:\n  threads: 3\n  min-job-size-rows: 200\n")
    assert run_cli(*args) == 0
    for schema, table in [("Mixed Schema", "Ünïcode Tåble"), ("public", "no_key"), ("public", "empty_table"),
                          ("public", "toasted"), ("public", "events")]:
        assert checksum(dest_db, schema, table) == checksum(source_db, schema, table), table
    assert checksum(dest_db, "public", "events")[0] == 3000
    assert checksum(dest_db, "public", "toasted")[0] == 20
    assert dest_db.fetchone("SELECT min(length(big)) FROM toasted") == 102400
    # The partitioned table landed as one plain table; its partitions are not separate tables.
    assert dest_db.fetchone("SELECT relkind FROM pg_class WHERE relname = 'events'") == "r"
    assert dest_db.fetchone("SELECT count(*) FROM pg_class WHERE relname LIKE 'events\\_2%'") == 0
    # Composite primary keys are rebuilt in their order.
    assert dest_db.fetchone(
        """SELECT pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = '"Mixed Schema"."Ünïcode Tåble"'::regclass AND contype = 'p'"""
    ) == 'PRIMARY KEY ("CamelKey", "ключ")'
    assert dest_db.fetchone("SELECT count(*) FROM pg_constraint WHERE conrelid = 'no_key'::regclass") == 0
    assert "public.no_key" in caplog.text and "no primary key" in caplog.text


def test_filter_selects_tables_columns_and_rows(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(
        """CREATE TABLE customers (id integer PRIMARY KEY, name text, "FB" text, "IG" text, secret text);
           INSERT INTO customers SELECT g, 'n' || g, 'fb' || g, 'ig' || g, 's' || g FROM generate_series(1,
               1000) g;
           CREATE TABLE orders (id integer PRIMARY KEY, amount numeric);
           INSERT INTO orders SELECT g, g FROM generate_series(1, 1000) g;
           CREATE TABLE ignored (id integer PRIMARY KEY);"""
    )
    filt = write(
        tmp_path / "filter.yaml",
        f"""allow:
  catalog: {source_db.name}
  schema: public
  types: [TABLE]
  allow:
    customers:
      allow: ["FB, IG", name]
      conditions: "id <= 100 AND name <> 'n7'"
    ORDERS:
""",
    )
    assert run_cli(*_configs(tmp_path, source_db, dest_db), "--filter", filt) == 0
    tables = dest_db.fetchall("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert tables == [("customers",), ("orders",)]
    cols = dest_db.fetchall(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attnum > 0 ORDER BY "
        "attnum"
    )
    assert cols == [("id",), ("name",), ("FB",), ("IG",)]  # the key comes along; `secret` does not
    assert dest_db.fetchone("SELECT count(*) FROM customers") == 99
    assert dest_db.fetchone("SELECT count(*) FROM customers WHERE name = 'n7'") == 0
    assert checksum(dest_db, "public", "orders") == checksum(source_db, "public", "orders")


def test_split_key_chunks_with_and_without_hints(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(
        """CREATE TABLE big (id bigint PRIMARY KEY, at timestamptz, v text);
           INSERT INTO big SELECT g, '2024-01-01'::timestamptz + g * interval '1 minute', md5(g::text)
           FROM generate_series(1, 20000) g;
           INSERT INTO big VALUES (0, NULL, 'null key');
           CREATE TABLE stamped (id bigint PRIMARY KEY, at timestamptz);
           INSERT INTO stamped SELECT g,
               CASE WHEN g % 100 = 0 THEN NULL ELSE '2024-01-01'::timestamptz + g * interval '1 second' END
           FROM generate_series(1, 5000) g;
           ANALYZE;"""
    )
    extractor = """snapshot:
  threads: 2
  min-job-size-rows: 1000
  max-jobs-per-chunk: 8
  _traceDBTasks: true
  per-table-config:
  - schema: public
    tables:
      big:
        split-key: id
        split-hints:
          row-count-estimate: 20000
          split-key-min-value: 1
          split-key-max-value: 15000
      stamped:
        split-key: at
"""
    assert run_cli(*_configs(tmp_path, source_db, dest_db, extractor)) == 0
    for table in ("big", "stamped"):
        assert checksum(dest_db, "public", table) == checksum(source_db, "public", table)
    chunks = dest_db.fetchall(
        "SELECT table_name, count(*), bool_and(kind = 'key') FROM _replicator.snapshot_chunks GROUP BY 1 "
        "ORDER BY 1"
    )
    assert chunks == [("big", 8, True), ("stamped", 5, True)]


def test_existing_destination_table_is_emptied_and_reruns_skip_done_tables(
    source_db: Database, dest_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source_db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM "
        "generate_series(1, 50) g"
    )
    dest_db.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1000, 'stale')")
    args = _configs(tmp_path, source_db, dest_db)
    assert run_cli(*args) == 0
    assert checksum(dest_db, "public", "t") == checksum(source_db, "public", "t")
    assert "emptying it" in caplog.text
    source_db.execute("INSERT INTO t VALUES (51, 'new')")
    assert run_cli(*args) == 0  # already done: nothing copied
    assert dest_db.fetchone("SELECT count(*) FROM t") == 50
    assert run_cli(*args, "--fresh") == 0
    assert checksum(dest_db, "public", "t") == checksum(source_db, "public", "t")


def test_live_progress_display(source_db: Database, dest_db: Database, tmp_path: Path) -> None:
    """The terminal display (rich) runs through a whole snapshot; the copy is still exact."""
    from replicator.config import load_connection, load_extractor
    from replicator.job import Job
    from replicator.snapshot.runner import run_snapshot

    source_db.execute(
        "CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM "
        "generate_series(1, 5000) g"
    )
    job = Job(
        load_connection(source_db.write_config(tmp_path / "s.yaml"), "source"),
        load_connection(dest_db.write_config(tmp_path / "d.yaml"), "destination"),
        None,
        load_extractor(write(tmp_path / "e.yaml", "snapshot:\n  min-job-size-rows: 1000\n")),
        progress=True,
    )
    summary = run_snapshot(job)
    assert summary.rows == 5000 and summary.tables == 1
    assert checksum(dest_db, "public", "t") == checksum(source_db, "public", "t")
