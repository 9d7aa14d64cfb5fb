"""The benchmarks' table: t(id bigint primary key, a text, b numeric, c timestamptz, d jsonb)."""

TABLE_DDL = "CREATE TABLE t (id bigint PRIMARY KEY, a text, b numeric, c timestamptz, d jsonb)"

# Rows first..last (parameters), the same values in every benchmark.
FILL_SQL = """INSERT INTO t SELECT g, md5(g::text), g * 1.5,
    '2025-01-01'::timestamptz + g * interval '1 second',
                     jsonb_build_object('k', g, 'v', md5(g::text))
              FROM generate_series(%s, %s) g"""
