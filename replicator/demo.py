"""``replicator demo``: two throwaway local servers, sample data, a replication you can watch.

Everything it does is what a user would do by hand: write the YAML configs (they are kept,
and printed, so they can be copied) and run the `full` mode through the same code path as
``replicator run full``: a snapshot, then changes streamed while a simulated shop writes to
the source. At the end the destination is compared with the source, row for row.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from replicator.config import load_connection, load_extractor, load_filter
from replicator.job import Job
from replicator.localpg import LocalCluster, start_cluster
from replicator.modes.full import run_until as full_mode
from replicator.signals import interrupt_on_signals

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
    files["source"].write_text(yaml.safe_dump(source.connection_config(
        "shop", **{"replication-slots": {"demo_slot": ["pgoutput"]}, "publication": "demo_pub"}), sort_keys=False))
    files["destination"].write_text(yaml.safe_dump(dest.connection_config("shop_replica"), sort_keys=False))
    files["extractor"].write_text(
        "snapshot:\n  threads: 2\n  min-job-size-rows: 50000\n  per-table-config:\n"
        "  - schema: public\n    tables:\n      orders:\n        split-key: id\n"
        "      audit_log:\n        row-identifier-key: [at, actor]\n"
        "realtime:\n  fetch-duration-per-extractor-slot-s: 0.5\n  heartbeat:\n    interval-ms: 1000\n"
    )
    files["filter"].write_text(
        "allow:\n  catalog: shop\n  schema: public\n  types: [TABLE]\n  allow:\n"
        "    customers:\n    products:\n    orders:\n    order_items:\n    page_views:\n    audit_log:\n"
    )
    return files


WORKLOAD = [
    # new orders with their items
    """WITH o AS (INSERT INTO orders (customer_id, status, placed_at, total, client_ip)
                 SELECT md5('c' || (1 + (random() * 999)::int))::uuid, 'new', now(), round((random() * 500)::numeric, 2), '10.9.8.7'
                 RETURNING id)
       INSERT INTO order_items (order_id, line, sku, qty, unit_price)
       SELECT o.id, l, 'SKU-' || (1 + (random() * 9)::int), 1 + (random() * 3)::int, 9.99 FROM o, generate_series(1, 2) l""",
    # orders move through their life
    "UPDATE orders SET status = 'paid' WHERE id IN (SELECT id FROM orders WHERE status = 'new' ORDER BY random() LIMIT 3)",
    "UPDATE orders SET status = 'shipped', note = 'shipped at ' || now() WHERE id = (SELECT max(id) - (random() * 50)::int FROM orders)",
    # cancelled orders are purged
    """WITH gone AS (DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE status = 'cancelled' LIMIT 2) RETURNING id)
       DELETE FROM order_items WHERE order_id IN (SELECT id FROM gone)""",
    "INSERT INTO page_views SELECT (random() * 1e9)::bigint, now(), '/live', '{\"ua\": \"demo\"}' FROM generate_series(1, 5)",
    "UPDATE customers SET preferences = preferences || jsonb_build_object('seen', now()) WHERE id = md5('c' || (1 + (random() * 999)::int))::uuid",
]


def write_changes(conninfo: str, stop: threading.Event, counter: list[int]) -> None:
    """A shop at work: a few dozen small transactions a second until ``stop``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                # Every transaction takes an order; two other things happen around it.
                for statement in [WORKLOAD[0], *random.sample(WORKLOAD[1:], 2)]:
                    conn.execute(statement)
            counter[0] += 1
            time.sleep(0.02)


def checksums(conninfo: str, tables: list[str]) -> dict[str, tuple[int, str]]:
    out = {}
    with psycopg.connect(conninfo) as conn:
        for t in tables:
            q = sql.SQL("SELECT count(*), md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM {} r")
            row = conn.execute(q.format(sql.Identifier(t))).fetchone()
            assert row is not None
            out[t] = (int(row[0]), str(row[1]))
    return out


def _one(conninfo: str, query: str) -> Any:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


def run_demo(rows: int = 200_000, seconds: float = 20.0, keep: bool = False) -> int:
    # A closed terminal (SIGHUP) or a kill (SIGTERM) must not leave two servers running.
    with interrupt_on_signals():
        return _run_demo(rows, seconds, keep)


def _run_demo(rows: int, seconds: float, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    workdir.chmod(0o755)
    print(f"demo: starting two throwaway PostgreSQL servers under {workdir}", flush=True)
    servers: list[LocalCluster] = []
    try:
        source = start_cluster(workdir / "source-server")
        servers.append(source)
        dest = start_cluster(workdir / "destination-server")
        servers.append(dest)
    except BaseException:
        for server in servers:
            server.destroy()
        raise
    src_info, dst_info = source.conninfo("shop"), dest.conninfo("shop_replica")
    try:
        source.create_database("shop")
        dest.create_database("shop_replica")
        print(f"demo: loading sample data (orders: {rows:,} rows; enums, domains, jsonb, arrays, a partitioned table ...)")
        load_sample_data(src_info, rows)
        files = write_configs(workdir, source, dest)
        print(f"demo: configs written to {workdir} (copy them as a start for your own):")
        for name in ("source", "extractor", "filter"):
            print(f"--- {files[name].name}\n{files[name].read_text()}")
        print(f"demo: running: replicator run full --source {files['source']} --destination {files['destination']} "
              f"--filter {files['filter']} --extractor {files['extractor']}")
        job = Job(
            source=load_connection(files["source"], "source"),
            destination=load_connection(files["destination"], "destination"),
            filter=load_filter(files["filter"]),
            extractor=load_extractor(files["extractor"]),
        )
        ok = _replicate_and_watch(job, src_info, dst_info, seconds)
        if keep:
            print(f"demo: servers left running:\n  source:      psql \"{src_info}\"\n  destination: psql \"{dst_info}\"")
        return 0 if ok else 1
    finally:
        if not keep:
            source.destroy()
            dest.destroy()


def _replicate_and_watch(job: Job, src_info: str, dst_info: str, seconds: float) -> bool:
    stop, writing = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def replicate() -> None:
        try:
            full_mode(job, stop)
        except BaseException as e:  # shown by the main thread
            failure.append(e)

    runner = threading.Thread(target=replicate, name="replication")
    runner.start()
    while runner.is_alive() and not _snapshot_done(dst_info):
        time.sleep(0.2)
    txns = [0]
    writer = threading.Thread(target=write_changes, args=(src_info, writing, txns), name="shop")
    if runner.is_alive():
        print(f"demo: snapshot done; now the shop gets busy for {seconds:.0f} s and changes stream across:")
        writer.start()
    try:
        started = time.monotonic()
        while runner.is_alive() and time.monotonic() - started < seconds:
            time.sleep(1)
            _show(src_info, dst_info, time.monotonic() - started, txns[0])
        writing.set()
        if writer.is_alive():
            writer.join()
        target = _one(src_info, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline and not _one(
            src_info, f"SELECT confirmed_flush_lsn >= '{target}' FROM pg_replication_slots WHERE slot_name = 'demo_slot'"
        ):
            time.sleep(0.2)
        _show(src_info, dst_info, time.monotonic() - started, txns[0])
    finally:
        writing.set()
        stop.set()
        runner.join()
    if failure:
        raise failure[0]
    tables = ["customers", "products", "orders", "order_items", "page_views", "audit_log"]
    want, got = checksums(src_info, tables), checksums(dst_info, tables)
    print(f"{'table':<14}{'source rows':>14}{'destination rows':>18}  content")
    for t in tables:
        print(f"{t:<14}{want[t][0]:>14,}{got[t][0]:>18,}  {'identical' if want[t] == got[t] else 'DIFFERENT'}")
    same = want == got
    print("demo: destination matches source, row for row" if same else "demo: MISMATCH between source and destination")
    return same


def _snapshot_done(dst_info: str) -> bool:
    try:
        return bool(_one(dst_info, "SELECT count(*) = 6 AND bool_and(status = 'done') FROM _replicator.snapshot_tables"))
    except psycopg.Error:
        return False


def _show(src_info: str, dst_info: str, elapsed: float, txns: int) -> None:
    lag = _one(src_info, "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'demo_slot'")
    s_orders, d_orders = _one(src_info, "SELECT count(*) FROM orders"), _one(dst_info, "SELECT count(*) FROM orders")
    print(f"  {elapsed:5.1f} s  {txns:5,} source transactions   orders: source {s_orders:,} / destination {d_orders:,}"
          f"   slot lag {int(lag or 0) / 1024:,.0f} kB", flush=True)
