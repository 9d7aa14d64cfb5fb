"""The key-range comparison (keys the walk cannot order: numeric here): edges of ranges, emptied
tables, composite keys, and that digests spare work."""

from __future__ import annotations

import pytest

from tests.delta.conftest import DeltaSetup

# Counts the DELETE statements the walk runs at the destination (one per range it had to compare key by key).
COUNT_DELETES = """
CREATE TABLE public.delete_statements (n integer);
CREATE FUNCTION public.count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.delete_statements VALUES (1); RETURN NULL; END $$;
CREATE TRIGGER count_delete AFTER DELETE ON public.{table} FOR EACH STATEMENT EXECUTE FUNCTION
    public.count_delete();
-- writer sessions run with session_replication_role = replica: only ALWAYS triggers fire there
ALTER TABLE public.{table} ENABLE ALWAYS TRIGGER count_delete;
"""


@pytest.fixture
def setup(delta: DeltaSetup) -> DeltaSetup:
    # Numeric keys whose text order differs from their order (9 > 10 as text): ranges must follow the
    # key's order.
    delta.source.execute(
        "CREATE TABLE t (id numeric PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM "
        "generate_series(1, 1000) g"
    )
    delta.extractor = "delta-snapshot:\n  threads: 1\n  min-job-size-rows: 100\n"
    delta.once()
    delta.dest.execute(COUNT_DELETES.format(table="t"))
    return delta


def _ranges_compared_key_by_key(setup: DeltaSetup) -> int:
    return int(setup.dest.fetchone("SELECT count(*) FROM delete_statements"))


def test_matching_ranges_are_not_compared_key_by_key(setup: DeltaSetup) -> None:
    setup.source.execute("UPDATE t SET v = 'changed' WHERE id % 10 = 0; INSERT INTO t VALUES (5000, 'new')")
    setup.once()
    assert _ranges_compared_key_by_key(setup) == 0
    setup.source.execute("DELETE FROM t WHERE id = 457")
    setup.once()
    # The range holding 457, and the next one (deletes seldom come alone), which finds none.
    assert _ranges_compared_key_by_key(setup) == 2
    setup.assert_same("t")


def test_deletes_at_range_edges_and_past_the_last_key(setup: DeltaSetup) -> None:
    # 100 and 101 straddle the first boundary; 1000 and 5000... are past the source's last key.
    setup.dest.execute("INSERT INTO t VALUES (2000, 'only at the destination'), (3000, 'same')")
    setup.source.execute("DELETE FROM t WHERE id IN (1, 100, 101, 200, 999, 1000)")
    setup.once()
    setup.assert_same("t")


def test_a_table_emptied_at_the_source_is_emptied_at_the_destination(setup: DeltaSetup) -> None:
    setup.source.execute("DELETE FROM t")
    setup.once()
    assert setup.dest.fetchone("SELECT count(*) FROM t") == 0


def test_composite_keys_with_text_walk_in_order(delta: DeltaSetup) -> None:
    delta.source.execute(
        """CREATE TABLE c (region text, day date, n numeric, v text, PRIMARY KEY (region, day, n));
           INSERT INTO c SELECT 'r' || (g % 7), '2024-01-01'::date + (g % 30), g, 'v'
           FROM generate_series(1, 2000) g;"""
    )
    delta.extractor = "delta-snapshot:\n  min-job-size-rows: 150\n"
    delta.once()
    delta.source.execute(
        "DELETE FROM c WHERE n % 13 = 0 OR region = 'r3'; INSERT INTO c VALUES ('r3', '2025-01-01', 1, "
        "'back')"
    )
    delta.once()
    delta.assert_same("c")
