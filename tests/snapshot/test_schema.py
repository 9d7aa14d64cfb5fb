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

INDEXES = """SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = ANY(ARRAY['public.customers'::regclass, 'public.orders'::regclass])
             ORDER BY 1"""
CONSTRAINTS = """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint
                 WHERE conrelid = ANY(ARRAY['public.customers'::regclass, 'public.orders'::regclass])
                 ORDER BY 1, 2"""
DEFAULTS = """SELECT c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attnotnull,
                     (SELECT collname FROM pg_collation WHERE oid = a.attcollation)
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE c.relname IN ('customers', 'orders') AND c.relkind = 'r' AND a.attnum > 0
              ORDER BY 1, 2"""
SEQUENCES = """SELECT schemaname, sequencename, data_type::text, start_value, increment_by, min_value, max_value,
                      cache_size, cycle, last_value FROM pg_sequences ORDER BY 1, 2"""


def snapshot_args(tmp_path: Path, source: Database, dest: Database, *extra: str) -> list[str]:
    return [
        "run", "snapshot", "--no-progress",
        "--source", str(source.write_config(tmp_path / "source.yaml")),
        "--destination", str(dest.write_config(tmp_path / "destination.yaml")), *extra,
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
