"""``replicator demo``: two throwaway local servers, sample data, a replication you can watch.

Everything it does is what a user would do by hand: write the YAML configs (they are kept,
and printed, so they can be copied), run the snapshot through the same code path as
``replicator run snapshot``, then check the destination against the source.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import psycopg
import yaml
from psycopg import sql

from replicator.config import load_connection, load_extractor, load_filter
from replicator.job import Job
from replicator.localpg import LocalCluster, start_cluster
from replicator.modes.snapshot import format_summary
from replicator.snapshot.runner import run_snapshot

log = logging.getLogger("replicator.demo")

SAMPLE_SCHEMA = """
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN quantity AS integer CHECK (VALUE > 0);
CREATE TABLE customers (
    id uuid PRIMARY KEY, name text NOT NULL, email text, country char(2),
    signed_up timestamptz NOT NULL, preferences jsonb, vip boolean
);
CREATE TABLE products (
    sku text PRIMARY KEY, title text NOT NULL, price numeric(10, 2) NOT NULL, tags text[],
    dims point, available daterange, description_tsv tsvector
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id uuid NOT NULL, status order_status NOT NULL,
    placed_at timestamptz NOT NULL, total numeric(12, 2), note text, client_ip inet
);
CREATE TABLE order_items (
    order_id bigint, line smallint, sku text NOT NULL, qty quantity NOT NULL, unit_price numeric(10, 2),
    subtotal numeric(12, 2) GENERATED ALWAYS AS (qty * unit_price) STORED,
    PRIMARY KEY (order_id, line)
);
CREATE TABLE page_views (id bigint, at timestamptz NOT NULL, path text, meta jsonb, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE page_views_2025 PARTITION OF page_views FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE page_views_2026 PARTITION OF page_views FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE audit_log (at timestamptz, actor text, action text, payload bytea);
"""

SAMPLE_DATA = """
INSERT INTO customers
SELECT md5('c' || g)::uuid, 'Customer ' || g, 'user' || g || '@example.com', (ARRAY['US','DE','FR','JP','BR'])[1 + g % 5],
       '2024-01-01'::timestamptz + g * interval '7 minutes',
       jsonb_build_object('newsletter', g % 3 = 0, 'lang', (ARRAY['en','de','fr'])[1 + g % 3]), g % 50 = 0
FROM generate_series(1, {customers}) g;
INSERT INTO products
SELECT 'SKU-' || g, 'Product ' || g, (g % 500) + 0.99, ARRAY['tag' || g % 7, 'tag' || g % 11],
       point(g % 30, g % 40), daterange('2025-01-01', NULL), to_tsvector('simple', 'product number ' || g)
FROM generate_series(1, {products}) g;
INSERT INTO orders (customer_id, status, placed_at, total, note, client_ip)
SELECT md5('c' || (1 + g % {customers}))::uuid, (ARRAY['new','paid','shipped','cancelled'])[1 + g % 4]::order_status,
       '2025-01-01'::timestamptz + g * interval '1 minute', (g % 1000) * 1.25,
       CASE WHEN g % 10 = 0 THEN repeat('a long note ', 20) END, ('10.0.' || (g % 250) || '.' || (g % 200))::inet
FROM generate_series(1, {orders}) g;
INSERT INTO order_items (order_id, line, sku, qty, unit_price)
SELECT o, l, 'SKU-' || (1 + (o * l) % {products}), 1 + (o + l) % 5, ((o * l) % 500) + 0.99
FROM generate_series(1, {orders}) o, generate_series(1, 2) l;
INSERT INTO page_views
SELECT g, '2025-06-01'::timestamptz + g * interval '90 seconds', '/page/' || g % 100,
       jsonb_build_object('ua', 'demo', 'ms', g % 900)
FROM generate_series(1, {views}) g;
INSERT INTO audit_log
SELECT now() - g * interval '1 second', 'user' || g % 20, 'login', decode(md5(g::text), 'hex')
FROM generate_series(1, {audit}) g;
ANALYZE;
"""


def load_sample_data(conninfo: str, rows: int) -> None:
    sizes = {
        "customers": max(rows // 10, 10),
        "products": max(rows // 100, 10),
        "orders": rows,
        "views": rows,
        "audit": max(rows // 5, 10),
    }
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(SAMPLE_SCHEMA)
        conn.execute(SAMPLE_DATA.format(**sizes))


def write_configs(workdir: Path, source: LocalCluster, dest: LocalCluster) -> dict[str, Path]:
    files = {
        "source": workdir / "source.yaml",
        "destination": workdir / "destination.yaml",
        "extractor": workdir / "extractor.yaml",
        "filter": workdir / "filter.yaml",
    }
    files["source"].write_text(yaml.safe_dump(source.connection_config("shop"), sort_keys=False))
    files["destination"].write_text(yaml.safe_dump(dest.connection_config("shop_replica"), sort_keys=False))
    files["extractor"].write_text(
        "snapshot:\n  threads: 2\n  min-job-size-rows: 50000\n  per-table-config:\n"
        "  - schema: public\n    tables:\n      orders:\n        split-key: id\n"
    )
    files["filter"].write_text(
        "allow:\n  catalog: shop\n  schema: public\n  types: [TABLE]\n  allow:\n"
        "    customers:\n    products:\n    orders:\n    order_items:\n    page_views:\n    audit_log:\n"
    )
    return files


def compare(source: str, dest: str, tables: list[str]) -> list[tuple[str, int, int]]:
    out = []
    with psycopg.connect(source) as s, psycopg.connect(dest) as d:
        for t in tables:
            q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            out.append((t, s.execute(q).fetchone()[0], d.execute(q).fetchone()[0]))  # type: ignore[index]
    return out


def run_demo(rows: int = 200_000, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    workdir.chmod(0o755)
    print(f"demo: starting two throwaway PostgreSQL servers under {workdir}")
    source = start_cluster(workdir / "source-server")
    dest = start_cluster(workdir / "destination-server")
    try:
        source.create_database("shop")
        dest.create_database("shop_replica")
        print(f"demo: loading sample data (orders: {rows:,} rows; enums, domains, jsonb, arrays, a partitioned table ...)")
        load_sample_data(source.conninfo("shop"), rows)
        files = write_configs(workdir, source, dest)
        print(f"demo: configs written to {workdir} (copy them as a start for your own):")
        for name in ("source", "extractor", "filter"):
            print(f"--- {files[name].name}\n{files[name].read_text()}")
        print(f"demo: running: replicator run snapshot --source {files['source']} --destination "
              f"{files['destination']} --filter {files['filter']} --extractor {files['extractor']}")
        job = Job(
            source=load_connection(files["source"], "source"),
            destination=load_connection(files["destination"], "destination"),
            filter=load_filter(files["filter"]),
            extractor=load_extractor(files["extractor"]),
        )
        summary = run_snapshot(job)
        print(format_summary(summary))
        tables = ["customers", "products", "orders", "order_items", "page_views", "audit_log"]
        print(f"{'table':<14}{'source rows':>14}{'destination rows':>18}")
        ok = True
        for t, s_rows, d_rows in compare(source.conninfo("shop"), dest.conninfo("shop_replica"), tables):
            ok &= s_rows == d_rows
            print(f"{t:<14}{s_rows:>14,}{d_rows:>18,}")
        print("demo: destination matches source" if ok else "demo: MISMATCH between source and destination")
        if keep:
            print(f"demo: servers left running:\n  source:      psql \"{source.conninfo('shop')}\"\n"
                  f"  destination: psql \"{dest.conninfo('shop_replica')}\"")
        return 0 if ok else 1
    finally:
        if not keep:
            source.destroy()
            dest.destroy()
