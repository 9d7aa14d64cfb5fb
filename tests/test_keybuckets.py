"""Key bucket summaries (``replicator.keybuckets``): the same numbers on a real server as the
arithmetic the comparison relies on, at negative keys and at both ends of bigint."""

from __future__ import annotations

import random

import pytest
from psycopg import sql

from replicator import keybuckets
from replicator.keybuckets import Buckets, Selection
from tests.conftest import Database

INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1


def _summaries(db: Database, keys: list[int], shift: int) -> dict[int, keybuckets.Summary]:
    query = sql.SQL("SELECT {} FROM unnest(%s::int8[]) AS k GROUP BY 1").format(
        Buckets(shift).select_list(sql.Identifier("k"))
    )
    with db.connect() as conn:
        return keybuckets.summaries(conn.execute(query, (keys,)).fetchall(), "test")


def _hashes(db: Database, key: int) -> tuple[int, int]:
    with db.connect() as conn:
        query = sql.SQL("SELECT {} FROM (SELECT %s::int8 AS k) AS s").format(
            keybuckets.hash_sql(sql.Identifier("k"))
        )
        row = conn.execute(query, (key,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("shift", [0, 4, 30])
def test_one_extra_key_is_named_by_the_sums_anywhere_in_the_range_of_bigint(
    source_db: Database, shift: int
) -> None:
    rng = random.Random(shift)
    keys = sorted({INT8_MIN, INT8_MIN + 1, INT8_MAX, INT8_MAX - 1, -1, 0, 1}
                  | {rng.randrange(-1000, 1000) for _ in range(300)})  # fmt: skip
    buckets = Buckets(shift)
    for extra in (INT8_MIN, INT8_MAX, -1, 0, keys[len(keys) // 2]):
        source = _summaries(source_db, [k for k in keys if k != extra], shift)
        dest = _summaries(source_db, keys, shift)
        bucket = extra >> shift
        assert buckets.differing(source, dest) == Selection(shift, (bucket,))
        assert buckets.single_extra(bucket, source.get(bucket), dest[bucket]) == extra
        assert keybuckets.single_matches(source.get(bucket), dest[bucket], _hashes(source_db, extra))
        assert not keybuckets.single_matches(source.get(bucket), dest[bucket], _hashes(source_db, extra ^ 1))


def test_an_equal_count_with_other_keys_differs_and_names_no_key(source_db: Database) -> None:
    """{1600, 1601} against {1600, 1602}: same count, one bucket; and one more key that is not
    alone ({1, 4} against {2}: offset sums say 3, which the hashes deny)."""
    buckets = Buckets(4)
    a, b = _summaries(source_db, [1600, 1601], 4), _summaries(source_db, [1600, 1602], 4)
    assert buckets.differing(a, b).buckets == (100,)
    assert buckets.single_extra(100, a[100], b[100]) is None
    c, d = _summaries(source_db, [2], 4), _summaries(source_db, [1, 4], 4)
    assert buckets.single_extra(0, c[0], d[0]) == 3
    assert not keybuckets.single_matches(c[0], d[0], _hashes(source_db, 3))


def test_selection_bounds_cover_each_bucket_exactly_at_the_ends_of_bigint(source_db: Database) -> None:
    keys = [INT8_MIN, INT8_MIN + 5, -17, -16, -1, 0, 15, 16, INT8_MAX - 3, INT8_MAX]
    shift = 4
    only = Selection(shift, tuple(sorted({k >> shift for k in keys[:3] + keys[-2:]})))
    key = sql.Identifier("k")
    inner = sql.SQL("SELECT k FROM unnest(%s::int8[]) AS k WHERE {}").format(only.in_bucket(key))
    with source_db.connect() as conn:
        found = [r[0] for r in conn.execute(only.keys(inner, key, "k"), (keys,)).fetchall()]
    assert found == [k for k in keys if (k >> shift) in only.buckets]
