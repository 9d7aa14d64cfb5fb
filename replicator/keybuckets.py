"""Key buckets: a per-range summary of an integer key, computed the same way by both servers.

A delta pass finds deletes by comparing key sets (``delta/buckets.py``). Streaming every key of
both sides costs an ordered scan of each side's key index; where most heap pages changed since
the last vacuum (on the destination after every pass, on a busy source), each of those keys
costs a heap visit too. Asking each server instead for a summary per *bucket* of keys
(``key >> shift``: 2^shift consecutive key values) needs one sequential scan and a hash
aggregate on each side, and sends a few thousand rows; only the buckets whose summaries differ
are then streamed and walked.

The summary of a bucket is its key count and the sums of two independent 32-bit hashes of its
keys (PostgreSQL's own ``hashint8``, and the high half of ``hashint8extended`` with a seed;
both exist since PostgreSQL 11, and summing ``integer`` keeps a ``bigint`` accumulator, much
cheaper than ``numeric``). Keys are unique on both sides (a primary key or unique index), so two
buckets with the same keys have the same summary; two different key sets of the same count have
the same summary only if both hash sums of their difference cancel out: a chance of about
2^-64 per bucket.

Only single-column ``smallint``/``integer``/``bigint`` keys of the same type on both sides have
buckets (``BUCKET_OIDS``); other keys are walked whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from psycopg import sql

from replicator.errors import ReplicatorError

BUCKET_OIDS = frozenset({20, 21, 23})  # int8, int2, int4
HASH_SEED = 7  # any constant: both sides use the same

MAX_SHIFT = 30  # a key's offset in its bucket fits an integer, their sum a bigint
MAX_GROUPS = 400_000  # summaries held in memory per side (~60 MB); a query returns at most one more

# Planner settings for a summary: it reads every row, so a sequential scan (each page once,
# where an index scan visits a page per key on pages not all-visible) and a hash aggregate (the
# planner guesses a group per row and, for the LIMIT, would sort them all instead).
SEQUENTIAL_HASHED = ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan", "enable_sort")

Summary = tuple[int, int, int, int]
"""(key count, sum of the keys' offsets in the bucket, sum of hashint8(key), sum of the high 32
bits of hashint8extended(key, HASH_SEED))."""

RANGES_ALIAS = "_replicator_key_buckets"


@dataclass(frozen=True)
class Buckets:
    """Key values ``b << shift`` to ``((b + 1) << shift) - 1`` form bucket ``b``."""

    shift: int

    def select_list(self, key: sql.Composable) -> sql.Composable:
        """The columns of a summary query, grouped by its first (``GROUP BY 1``)."""
        assert 0 <= self.shift <= MAX_SHIFT
        as_int8 = sql.SQL("{}::int8").format(key)
        return sql.SQL(
            "{k} >> {s}, count(*), sum(({k} & {mask})::int4), sum(hashint8({k})), "
            "sum((hashint8extended({k}, {seed}) >> 32)::int4)"
        ).format(
            k=as_int8, s=sql.Literal(self.shift), mask=sql.Literal((1 << self.shift) - 1),
            seed=sql.Literal(HASH_SEED),
        )  # fmt: skip

    def single_extra(self, bucket: int, source: Summary | None, destination: Summary) -> int | None:
        """The key the destination's bucket would have if its only difference from the source's
        were one more key: its offset is the difference of the offset sums. (A candidate only:
        ``single_matches`` checks that its hashes account for the whole difference.)"""
        count, offsets = (source[0], source[1]) if source is not None else (0, 0)
        offset = destination[1] - offsets
        if destination[0] - count != 1 or not 0 <= offset < 1 << self.shift:
            return None
        return (bucket << self.shift) + offset

    def differing(self, source: Mapping[int, Summary], destination: Mapping[int, Summary]) -> Selection:
        """The buckets whose summaries differ (a bucket on one side only differs), in key order."""
        found = sorted(b for b in source.keys() | destination.keys() if source.get(b) != destination.get(b))
        return Selection(self.shift, tuple(found))


@dataclass(frozen=True)
class Selection:
    """Some buckets of ``2^shift`` key values, in key order."""

    shift: int
    buckets: tuple[int, ...]

    def in_bucket(self, key: sql.Composable) -> sql.Composable:
        """``key`` is in the current bucket of ``keys``' list (a condition of its ``inner``)."""
        r = sql.Identifier(RANGES_ALIAS)
        return sql.SQL("{k} >= {r}.lower AND {k} <= {r}.upper").format(k=key, r=r)

    def keys(self, inner: sql.Composable, key: sql.Composable, name: str) -> sql.Composable:
        """``SELECT key FROM buckets, LATERAL (inner ORDER BY key LIMIT 2^shift) ORDER BY key``:
        ``inner`` is ``SELECT key FROM table WHERE ... AND in_bucket(key)``.

        Each bucket is one index range scan. ``LIMIT 2^shift`` changes no result (a bucket of
        that many integer values holds at most that many unique keys), but it keeps the planner
        from flattening the subquery into a join that scans the whole index once per bucket, and
        tells it how few rows a bucket has (else it guesses thousands, and compiles the query)."""
        lowers = "{" + ",".join(str(b << self.shift) for b in self.buckets) + "}"
        uppers = "{" + ",".join(str(((b + 1) << self.shift) - 1) for b in self.buckets) + "}"
        return sql.SQL(
            "SELECT s.{o} FROM unnest({lo}::int8[], {hi}::int8[]) AS {r}(lower, upper) "
            "CROSS JOIN LATERAL ({inner} ORDER BY {k} LIMIT {n}) AS s ORDER BY s.{o}"
        ).format(
            o=sql.Identifier(name), lo=sql.Literal(lowers), hi=sql.Literal(uppers),
            r=sql.Identifier(RANGES_ALIAS), inner=inner, k=key, n=sql.Literal(1 << self.shift),
        )  # fmt: skip


def single_matches(source: Summary | None, destination: Summary, hashes: tuple[int, int]) -> bool:
    """Whether one key with these ``hashes`` (``hash_sql``) is all that tells the buckets apart."""
    base = source if source is not None else (0, 0, 0, 0)
    return (destination[2] - base[2], destination[3] - base[3]) == hashes


def hash_sql(key: sql.Composable) -> sql.Composable:
    """The two hashes of ``key`` (an int8 expression) that a summary sums."""
    return sql.SQL("hashint8({k}), (hashint8extended({k}, {seed}) >> 32)::int4").format(
        k=key, seed=sql.Literal(HASH_SEED)
    )


class NullKey(ReplicatorError):
    """A key column held NULL (a unique index allows it; comparing keys cannot)."""


def summaries(rows: Iterable[tuple[int | None, int, int, int, int]], side: str) -> dict[int, Summary]:
    found = {}
    for b, n, o, s, x in rows:
        if b is None:
            raise NullKey(f"the {side} has {n:,} row(s) with a NULL key; keys cannot be compared")
        found[int(b)] = (int(n), int(o), int(s), int(x))
    return found
