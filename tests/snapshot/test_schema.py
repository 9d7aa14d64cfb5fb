"""Schema parity: a snapshot gives each table what the source table has besides its rows."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import Database
from tests.support import checksum, run_cli, write

SCHEMA = r"""
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE COLLATION german (provider = icu, locale = 'de-DE');
CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 5;
CREATE TABLE customers (
    id serial CONSTRAINT customers_pk PRIMARY KEY,
    email text COLLATE ci NOT NULL UNIQUE,
    name text COLLATE german,
    created timestamptz NOT NULL DEFAULT now(),
    status text DEFAULT 'new' CHECK (status IN ('new', 'active')),
    rng int4range,
    doc jsonb,
    EXCLUDE USING gist (rng WITH &&)
);
CREATE INDEX customers_lower_name ON customers (lower(name));
CREATE INDEX customers_partial ON customers (created DESC, id) WHERE status = 'active';
CREATE INDEX customers_doc ON customers USING gin (doc);
CREATE INDEX customers_created_brin ON customers USING brin (created);
CREATE INDEX customers_name_hash ON customers USING hash (name);
CREATE UNIQUE INDEX customers_name_lower_unique ON customers (lower(name), status);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 10) PRIMARY KEY,
    invoice bigint NOT NULL DEFAULT nextval('invoice_numbers'),
    customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    total numeric(10,2) CONSTRAINT positive_total CHECK (total >= 0),
    CONSTRAINT orders_invoice_unique UNIQUE (invoice) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX orders_customer ON orders (customer_id);
INSERT INTO customers (email, name, status, rng, doc)
SELECT 'user' || g || '@example.com', 'Name ' || g, CASE WHEN g % 2 = 0 THEN 'active' ELSE 'new' END,
       int4range(g * 10, g * 10 + 5), jsonb_build_object('g', g)
FROM generate_series(1, 300) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 300, g FROM generate_series(1, 1000) g;
"""

INDEXES = """SELECT c.relname, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = ANY(ARRAY['public.customers'::regclass, 'public.orders'::regclass])
             ORDER BY 1"""
CONSTRAINTS = """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated
                 FROM pg_constraint
                 WHERE conrelid = ANY(ARRAY['public.customers'::regclass, 'public.orders'::regclass])
                 ORDER BY 1, 2"""
DEFAULTS = """SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attnotnull,
                     (SELECT collname FROM pg_collation WHERE oid = a.attcollation)
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE c.relname IN ('customers', 'orders') AND c.relkind = 'r' AND a.attnum > 0
              ORDER BY 1, 2"""
SEQUENCES = """SELECT schemaname, sequencename, data_type::text, start_value, increment_by, min_value,
                      max_value, cache_size, cycle, last_value FROM pg_sequences ORDER BY 1, 2"""


def snapshot_args(tmp_path: Path, source: Database, dest: Database, *extra: str) -> list[str]:
    return [
        "run",
        "snapshot",
        "--no-progress",
        "--source",
        str(source.write_config(tmp_path / "source.yaml")),
        "--destination",
        str(dest.write_config(tmp_path / "destination.yaml")),
        *extra,
    ]


def test_snapshot_builds_every_index_constraint_default_sequence_and_collation(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(SCHEMA)
    assert run_cli(*snapshot_args(tmp_path, source_db, dest_db)) == 0
    for table in ("customers", "orders"):
        assert checksum(dest_db, "public", table) == checksum(source_db, "public", table)
    assert dest_db.fetchall(INDEXES) == source_db.fetchall(INDEXES)
    assert dest_db.fetchall(CONSTRAINTS) == source_db.fetchall(CONSTRAINTS)
    # Identity columns are BY DEFAULT while replicating ('d'); switchover makes them ALWAYS.
    expected = [row if row[3] != "a" else (*row[:3], "d", *row[4:]) for row in source_db.fetchall(DEFAULTS)]
    assert dest_db.fetchall(DEFAULTS) == expected
    assert dest_db.fetchall(SEQUENCES) == source_db.fetchall(SEQUENCES)
    # The destination can take new rows through its defaults, after the source's.
    dest_db.execute("INSERT INTO customers (email) VALUES ('new@example.com')")
    dest_db.execute("INSERT INTO orders (customer_id, total) VALUES (1, 5)")
    assert dest_db.fetchone("SELECT max(id) FROM customers") == 301
    assert dest_db.fetchone("SELECT max(invoice) FROM orders") == 1000 + 5 * 1000
    # The case-insensitive collation holds at the destination too.
    with pytest.raises(psycopg.errors.UniqueViolation):
        dest_db.execute("INSERT INTO customers (email) VALUES ('USER1@EXAMPLE.COM')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        dest_db.execute("INSERT INTO orders (customer_id, total) VALUES (100000, 1)")


def test_fresh_reload_with_foreign_keys_between_the_tables(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    source_db.execute(SCHEMA)
    args = snapshot_args(tmp_path, source_db, dest_db)
    assert run_cli(*args) == 0
    source_db.execute("INSERT INTO orders (customer_id, total) VALUES (2, 7)")
    assert run_cli(*args, "--fresh") == 0  # TRUNCATE customers alone would be refused by the key
    assert checksum(dest_db, "public", "orders") == checksum(source_db, "public", "orders")
    assert dest_db.fetchall(INDEXES) == source_db.fetchall(INDEXES)
    assert dest_db.fetchall(CONSTRAINTS) == source_db.fetchall(CONSTRAINTS)


def test_a_foreign_key_from_a_table_outside_the_replication_is_refused_before_anything_is_emptied(
    source_db: Database, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_db.execute(SCHEMA)
    args = snapshot_args(tmp_path, source_db, dest_db)
    assert run_cli(*args) == 0
    dest_db.execute("CREATE TABLE local_notes (customer_id integer REFERENCES customers (id))")
    capsys.readouterr()
    assert run_cli(*args, "--fresh") == 1
    err = capsys.readouterr().err
    assert (
        "public.local_notes has foreign key local_notes_customer_id_fkey referencing public.customers" in err
    )
    assert "nothing was changed" in err
    assert dest_db.fetchone("SELECT count(*) FROM orders") == 1000


def test_objects_the_destination_cannot_have_are_named_not_fatal(
    source_db: Database, dest_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source_db.execute(
        """CREATE FUNCTION shout(text) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT upper($1) $$;
           CREATE TABLE regions (code text PRIMARY KEY);
           CREATE TABLE shops (id integer PRIMARY KEY, region text REFERENCES regions (code), name text,
                               secret text CHECK (secret <> ''), label text DEFAULT shout('x'));
           CREATE INDEX shops_loud ON shops (shout(name));
           CREATE INDEX shops_secret ON shops (secret);
           CREATE INDEX shops_name ON shops (name);
           CREATE TABLE events (id integer, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
           CREATE INDEX events_at ON events (at DESC);
           CREATE INDEX events_2024_only ON events_2024 (id);
           INSERT INTO regions VALUES ('eu'); INSERT INTO shops VALUES (1, 'eu', 'a', 's');
           INSERT INTO events VALUES (1, '2024-05-01');"""
    )
    filt = write(tmp_path / "filter.yaml", (
        "allow:\n  schema: public\n  allow:\n"
        "    shops:\n      allow: [id, region, name, label]\n    events:\n"
    ))  # fmt: skip
    with caplog.at_level("WARNING"):
        assert run_cli(*snapshot_args(tmp_path, source_db, dest_db, "--filter", str(filt))) == 0
    for note in (
        "public.shops: foreign key shops_region_fkey references public.regions, which the filter leaves "
        "out",
        "public.shops: check constraint shops_secret_check reads column(s) secret, which the filter leaves "
        "out",
        "public.shops: index shops_secret reads column(s) secret",
        "public.shops: index shops_loud: function public.shout(text) does not exist",
        "public.shops: default of column label (public.shout('x'::text)): function public.shout(text) does "
        "not exist",
        "public.events: index public.events_2024_only exists on a partition only",
    ):
        assert note in caplog.text
    have = dest_db.fetchall(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('shops', 'events') ORDER BY 1"
    )
    assert have == [
        ("events_at", "CREATE INDEX events_at ON public.events USING btree (at DESC)"),
        ("events_pkey", "CREATE UNIQUE INDEX events_pkey ON public.events USING btree (id, at)"),
        ("shops_name", "CREATE INDEX shops_name ON public.shops USING btree (name)"),
        ("shops_pkey", "CREATE UNIQUE INDEX shops_pkey ON public.shops USING btree (id)"),
    ]


def test_the_first_delta_pass_and_its_fresh_reload_empty_tables_held_by_foreign_keys(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    """The first pass of delta-snapshot empties the destination tables a snapshot left there (with
    the foreign key between them), and so does ``--fresh``: neither may be refused by the key."""
    source_db.execute(SCHEMA)
    args = snapshot_args(tmp_path, source_db, dest_db)
    assert run_cli(*args) == 0
    delta = [a if a != "snapshot" else "delta-snapshot" for a in args]
    source_db.execute("INSERT INTO orders (customer_id, total) VALUES (3, 9)")
    assert run_cli(*delta, "--once") == 0
    source_db.execute("DELETE FROM orders WHERE id = 100")
    assert run_cli(*delta, "--once", "--fresh") == 0
    for table in ("customers", "orders"):
        assert checksum(dest_db, "public", table) == checksum(source_db, "public", table)
    assert dest_db.fetchall(CONSTRAINTS) == source_db.fetchall(CONSTRAINTS)


def test_a_foreign_key_of_tables_the_user_created_is_made_again_after_the_load(
    source_db: Database, dest_db: Database, tmp_path: Path
) -> None:
    """The destination schema made beforehand (as with ``pg_dump --schema-only``): the key between
    the tables is dropped to load them, and must be there again, validated, at the end."""
    source_db.execute(SCHEMA)
    dest_db.execute(
        """CREATE TABLE customers (id integer PRIMARY KEY, email text, name text, created timestamptz,
                                   status text, rng int4range, doc jsonb);
           CREATE TABLE orders (id bigint PRIMARY KEY, invoice bigint,
                                customer_id integer REFERENCES customers (id), total numeric(10,2));
           INSERT INTO customers (id) VALUES (1); INSERT INTO orders (id, customer_id) VALUES (1, 1);"""
    )
    assert run_cli(*snapshot_args(tmp_path, source_db, dest_db)) == 0
    assert dest_db.fetchall(
        "SELECT conname, convalidated FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid = 'orders'::regclass"
    ) == [("orders_customer_id_fkey", True)]
    assert checksum(dest_db, "public", "orders") == checksum(source_db, "public", "orders")
    assert dest_db.fetchone("SELECT count(*) FROM _replicator.dropped_foreign_keys") == 0
