"""What a folded batch becomes on its way to a PostgreSQL destination: operations sorted by the
statement that applies them, rows in COPY's text format, deleted keys as an array literal.

Pure Python, no database: the pipeline has the applier ``prepare()`` each unit on its reading
thread, so the thread that owns the destination connection spends its time in statements (see
realtime/worker.py). Texts hold every column of the stream; the writer uses them when the
destination stores every one of those columns (the usual case) and otherwise works out its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any, cast

from replicator.decoding.changes import Value
from replicator.decoding.fold import Folded, Prepared, TableBatch, Upsert
from replicator.destinations.postgres.pipelined import MAX_ROWS, text_array

# COPY text format: backslash, and the characters that would end a field or a row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def prepare(batch: TableBatch, texts: bool = True, row_texts: bool = True) -> Prepared:
    """Sort the batch's operations (and, with ``texts``, format them: deleted keys, and with
    ``row_texts`` the rows for COPY); remembered on the batch."""
    prepared = Prepared.sort(batch)
    deletes, fresh, existing = prepared.deletes, prepared.fresh, prepared.existing
    if len(existing) >= SORT_MIN_ROWS:
        order = index_order(batch)
        if order is not None:
            try:
                if not _looks_sorted(existing, order):
                    existing.sort(key=order)
            except (TypeError, ValueError):  # a NULL in an integer key: any order is as correct
                pass
    if texts:
        width = len(batch.relation.columns)
        if fresh and row_texts:
            prepared.fresh_text = copy_text([op.values for op in fresh], width)
        if existing and row_texts:
            prepared.existing_text = copy_text([op.values for op in existing], width)
        if deletes and len(batch.key_positions) == 1:
            prepared.deleted_keys = array_literal([k[0] for k in deletes])
    batch.prepared = prepared
    return prepared


# Updated rows are staged in the order of their key (``index_order``) from this many on: the merge
# then probes the key's index and visits the table's pages in order, not at random. Measured on
# pgbench_accounts (500k rows), 2,400 rows updated from a stage: 16.9 -> 14.6 ms; from arrays
# (pipelined.py): 20.5 -> 18.1 ms. Sorting 10,000 rows costs about 1 ms of the reading thread, so
# rows that already come in key order (a range updated at once) are left as they are
# (``_looks_sorted``). New rows are COPYed straight into their table: no probe to put in order.
SORT_MIN_ROWS = 64
_SAMPLES = 32  # rows looked at to tell whether a batch already comes in key order

# Integer types (int2, int4, int8, oid): their text sorts as the number it spells, not as text.
_INTEGER_OIDS = frozenset({20, 21, 23, 26})


def _looks_sorted(rows: list[Upsert], order: Callable[[Upsert], Any]) -> bool:
    """Whether ``_SAMPLES`` rows spread over ``rows`` are in key order: rows in random order almost
    never pass (32 random keys in order: 1 in 32!), a range updated in key order always does."""
    sample = [order(r) for r in rows[:: max(1, len(rows) // _SAMPLES)]]
    return all(a <= b for a, b in pairwise(sample))


def index_order(batch: TableBatch) -> Callable[[Upsert], Any] | None:
    """A sort key putting rows in (about) the order of the destination key's index: numbers for
    integer columns, the text itself otherwise (the order of a C collation, and of uuid). Only
    locality depends on it, never correctness: the rows' keys are distinct, and every statement
    applies them as a set (a NULL in an integer key column raises TypeError: the caller then keeps
    the order as it was)."""
    positions = batch.key_positions
    columns = batch.relation.columns
    if not positions or any(p >= len(columns) for p in positions):
        return None
    integer = [columns[p].type_oid in _INTEGER_OIDS for p in positions]
    if len(positions) == 1:
        (p,) = positions
        if integer[0]:
            return lambda op: int(cast(str, op.values[p]))
        return lambda op: str(op.values[p])
    return lambda op: tuple(
        int(cast(str, op.values[p])) if is_int else str(op.values[p])
        for p, is_int in zip(positions, integer, strict=True)
    )


def prepare_all(folded: Folded) -> Folded:
    """Prepare every keyed batch; COPY texts only for batches too large for a pipelined write
    (``pipelined.MAX_ROWS``): smaller ones are written from their values, and formatting them here
    cost the reader about 0.5 ms per 140-transaction pgbench commit, before the hand-over. A small
    batch that is staged after all (a condition, a nullable key...) is formatted by the writer."""
    for batch in folded.batches.values():
        if not batch.keyless:
            prepare(batch, row_texts=len(batch.ops) > MAX_ROWS)
    return folded


def copy_text(rows: Sequence[Sequence[Value]], width: int) -> str:
    """Rows of text values (None: NULL), each ``width`` long, in COPY's text format.

    No value is UNCHANGED_TOAST here: rows with such values are never staged whole (partial
    updates stage only the columns that came, see apply.py).

    Values almost never hold a backslash, tab, newline or carriage return, so rows are joined
    as they are and the whole text is checked once for those characters (a few fast scans);
    only if one is found is every value escaped. NULLs travel as NUL characters, which no
    PostgreSQL text value can contain, until the check is done.
    """
    if not rows:
        return ""
    texts = cast(Sequence[Sequence[str]], rows)  # None is handled below; see the docstring for the rest
    join = "\t".join
    text = "\n".join(
        [join(r) if None not in r else join(["\0" if v is None else v for v in r]) for r in texts]
    )
    n = len(rows)
    if "\\" in text or "\r" in text or text.count("\n") != n - 1 or text.count("\t") != n * (width - 1):
        return "".join(map(_copy_line, cast(Sequence[Sequence[str | None]], rows)))
    if "\0" in text:
        text = text.replace("\0", "\\N")
    return text + "\n"


def _copy_line(row: Sequence[str | None]) -> str:
    return "\t".join("\\N" if v is None else v.translate(_COPY_ESCAPES) for v in row) + "\n"


def array_literal(values: Sequence[Value]) -> str | None:
    """A PostgreSQL array literal of text-format values (None if one is NULL: stage those instead),
    as ``pipelined.text_array`` writes it."""
    if None in values:
        return None
    return text_array(cast(Sequence[str], values))  # key values: never UNCHANGED_TOAST in a delete
