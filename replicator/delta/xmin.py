"""xmin mode: find rows changed since the last pass by the transaction that wrote them.

Every row version carries ``xmin``, the ID of the transaction (or subtransaction) that wrote
it; an UPDATE writes a new version, so a changed row has a new ``xmin``.

Which watermark is safe. A pass reads inside one snapshot S. The rows it cannot see were
written by transactions still in progress at S, or started after it. Those in progress have
IDs >= ``S.xmin`` (the oldest transaction running at S; a subtransaction's ID is larger than
its parent's), and later ones >= ``S.xmax``. A transaction that had not written anything
yet at S has no ID at all, and gets one >= ``S.xmax`` when it does. So every row a later
pass may need has ``xmin >= S.xmin``: that is the watermark, stored as a 64-bit ``xid8``.
Rows committed between ``S.xmin`` and ``S.xmax`` that S did see are read again next pass;
reading a row twice is harmless (the destination upserts by key), missing one is not. A long
transaction holds ``S.xmin`` back, so while it stays open every pass re-reads what was
committed since it began, and its rows arrive in the first pass after it commits.

Deliberately *not* used: the exact snapshot (``xip`` list). ``pg_current_snapshot()`` lists
top-level transactions only, so a row written by a subtransaction (a savepoint, a PL/pgSQL
EXCEPTION block) of a transaction still running at S would look "visible to S" and be missed.

Wraparound. ``xmin`` is 32 bits and wraps every 2^32 transactions; ``xid8`` (snapshots,
our watermark) counts epochs and never wraps. PostgreSQL guarantees that every row whose xmin
is not frozen is younger than 2^31 transactions (it refuses new transaction IDs otherwise),
so a 32-bit xmin below ``S.xmax`` maps to exactly one 64-bit ID in ``(S.xmax - 2^31, S.xmax)``.
The rows to read are then a window of 32-bit values ``[W mod 2^32, S.xmax mod 2^32)``, which
may wrap past 2^32 (then it is two ranges; the special IDs 0-2 are skipped, they are never
assigned). If the watermark is 2^31 or more transactions old, 32-bit values can no longer be
told apart and the pass reads every row. Frozen rows keep their original xmin (PostgreSQL
9.4+), so a frozen row more than 2^31 transactions old may fall into a later window by
coincidence and be read again: harmless. Rows frozen in the pre-9.4 way (xmin 2) and bootstrap
rows (xmin 1) are never in a window. A watermark ahead of the source's current ID (the source
was replaced by another server) also means "read every row".
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

XID_MODULUS = 1 << 32
MAX_AGE = 1 << 31  # beyond this a 32-bit xmin is ambiguous
FIRST_NORMAL_XID = 3

XMIN = sql.SQL("xmin::text::bigint")  # xid has no ordering operators; its text form is unsigned


@dataclass(frozen=True)
class XidWindow:
    """32-bit xmin values ``[lower, upper)``, modulo 2^32 (``lower > upper`` means it wraps)."""

    lower: int
    upper: int

    @property
    def empty(self) -> bool:
        return self.lower == self.upper

    def contains(self, xmin: int) -> bool:
        if xmin < FIRST_NORMAL_XID or self.empty:
            return False
        if self.lower < self.upper:
            return self.lower <= xmin < self.upper
        return xmin >= self.lower or xmin < self.upper


def window(since: int, upto: int) -> XidWindow | None:
    """Raw xmin values of rows written by transactions ``since <= xid < upto`` (64-bit IDs).

    ``since`` is the stored watermark, ``upto`` the reading snapshot's ``xmax``. None when the
    window cannot be expressed in 32 bits (or the source went backwards): read every row.
    """
    if since > upto or upto - since >= MAX_AGE:
        return None
    return XidWindow(since % XID_MODULUS, upto % XID_MODULUS)


def predicate(w: XidWindow, column: sql.Composable = XMIN) -> sql.Composable:
    """SQL that is true for rows whose xmin is in ``w``."""
    if w.empty:
        return sql.SQL("false")
    lower, upper = sql.Literal(w.lower), sql.Literal(w.upper)
    if w.lower < w.upper:
        return sql.SQL("({x} >= {lo} AND {x} < {hi})").format(x=column, lo=lower, hi=upper)
    return sql.SQL("({x} >= {lo} OR ({x} >= {first} AND {x} < {hi}))").format(
        x=column, lo=lower, hi=upper, first=sql.Literal(FIRST_NORMAL_XID)
    )


def watermark_value(snapshot_xmin: int) -> dict[str, str]:
    return {"xmin": str(snapshot_xmin)}


def since(value: dict[str, object]) -> int | None:
    raw = value.get("xmin")
    return int(str(raw)) if raw is not None else None
