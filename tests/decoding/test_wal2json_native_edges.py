"""The C wal2json decoder (replicator._wal2json) at its edges: fuzzed input, its Python callback
misbehaving, error paths, and no leaks over many malformed messages.

tests/decoding/test_wal2json_native.py compares it with the Python decoder on real and hand-written
output; here a fixed-seed slice of bench/fuzz_wal2json.py's mutation fuzzer does the same on
mutated transactions (run the long one under AddressSanitizer, docs/development.md).
"""

from __future__ import annotations

import gc
import importlib
import random
import sys
import tracemalloc
from datetime import datetime
from typing import Any

import pytest

from bench.fuzz_wal2json import TABLES, corpus, describe, fuzz, mutate
from replicator.decoding import wal2json
from replicator.decoding.changes import UNCHANGED_TOAST, Begin, Change, Commit, Op
from replicator.decoding.wal2json import Wal2JsonDecoder
from replicator.lsn import Lsn

MODULE = importlib.import_module("replicator._wal2json")
assert wal2json._configure(MODULE) is None

BEGIN = b'{"action":"B","xid":7,"timestamp":"2026-11-30 03:31:42+00","lsn":"0/1"}'
# An UPDATE of "gen" (key k, k2) that lists neither key column: its new key is UNCHANGED_TOAST.
UPDATE_WITHOUT_KEY = (
    b'{"action":"U","lsn":"0/2","schema":"public","table":"gen",'
    b'"columns":[{"name":"x","typeoid":1700,"value":"1"}],'
    b'"identity":[{"name":"k","typeoid":23,"value":1},{"name":"k2","typeoid":23,"value":2}]}'
)


def test_fuzzed_transactions_decode_the_same_in_c() -> None:
    summary = fuzz(20261130, 4000, MODULE, exact=True)  # exact buffers: for runs under ASan
    assert not summary.mismatches, summary.mismatches[:3]
    # The mutations leave most messages intact: C must still decode the bulk of them itself.
    assert summary.decoded_in_c > 20000


def test_a_shape_callback_replacing_the_cache_does_not_make_c_write_into_freed_memory() -> None:
    """C held the decoder's _native_shapes borrowed while _native_shape (Python) ran: a callback
    replacing the dict freed it under C, which then wrote the shape into whatever reused it."""

    class Replacing(Wal2JsonDecoder):
        def _native_shape(self, *args: Any) -> Any:
            self._native_shapes = {}  # the old dict's last reference goes...
            self.reused: dict[Any, Any] = {}  # ...and dict's free list hands its memory out here
            return super()._native_shape(*args)

    decoder = Replacing(describe)
    out: list[Any] = []
    txn = corpus()[0]
    assert MODULE.step(decoder, txn[0], out) and MODULE.step(decoder, txn[1], out)
    assert decoder.reused == {}
    assert [type(e) for e in out] == [Begin, Change]


def test_a_failing_key_comparison_raises_its_own_error_once() -> None:
    """A failed comparison of the old and new key (-1) kept the loop going: the next comparison ran
    with the error set, and Python reported a SystemError instead of the error."""
    calls: list[Any] = []

    class Toast:
        def __eq__(self, other: object) -> bool:
            calls.append(other)
            raise ValueError("cannot compare")

        __hash__ = object.__hash__

    MODULE.configure(
        Change, Lsn, Op.INSERT, Op.UPDATE, Op.DELETE, Toast(), Begin, Commit, datetime.fromisoformat
    )
    try:
        decoder = Wal2JsonDecoder(describe)
        out: list[Any] = []
        assert MODULE.step(decoder, BEGIN, out)
        with pytest.raises(ValueError, match="cannot compare"):
            MODULE.step(decoder, UPDATE_WITHOUT_KEY, out)
        assert len(calls) == 1 and out == []
    finally:
        assert wal2json._configure(MODULE) is None


def test_a_shape_that_does_not_fit_is_reported_and_not_kept() -> None:
    """A _native_shape result that does not fit its columns was cached before it was checked: every
    later message of that column list failed, even once the callback was right again."""

    class OnceWrong(Wal2JsonDecoder):
        wrong = True

        def _native_shape(self, *args: Any) -> Any:
            got = super()._native_shape(*args)
            if self.wrong:
                self.wrong = False
                return (*got[:4], got[4] + 1)  # one column too many for an identical order
            return got

    decoder = OnceWrong(describe)
    out: list[Any] = []
    insert = corpus()[0][1]
    assert MODULE.step(decoder, BEGIN, out)
    with pytest.raises(TypeError, match="does not fit"):
        MODULE.step(decoder, insert, out)
    assert decoder._native_shapes == {}
    assert MODULE.step(decoder, insert, out)
    assert [type(e) for e in out] == [Begin, Change]


def test_many_malformed_messages_leak_nothing() -> None:
    """Every way out of C (handed back, decoded, raised) gives back what it took: memory and
    references (which tracemalloc does not see for None, True and the like)."""
    rng = random.Random(3)
    everything = [m for txn in corpus() for m in txn]
    messages = [mutate(rng, rng.choice(everything), everything) for _ in range(1000)] + everything * 30
    decoder = Wal2JsonDecoder(describe)
    watched: list[Any] = [None, True, False, UNCHANGED_TOAST, Op.INSERT, Op.UPDATE, Op.DELETE]
    watched += [sys.intern("t"), sys.intern("f"), decoder._native_shapes]
    watched += [info.relation for info in TABLES.values()]

    def run(n: int) -> int:
        decoded = 0
        for i in range(n):
            out: list[Any] = []
            decoded += MODULE.step(decoder, messages[i % len(messages)], out)
        return decoded

    run(2 * len(messages))  # shapes cached (the second pass still adds some), free lists filled
    gc.collect()
    refs = [sys.getrefcount(o) for o in watched]
    decoded = run(20000)
    gc.collect()
    deltas = [sys.getrefcount(o) - r for o, r in zip(watched, refs, strict=True)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoded += run(20000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert decoded > 15000
    assert grown < 64 * 1024, grown
    # The last message's state may hold one reference more or less than the first's.
    assert all(abs(d) <= 2 for d in deltas), deltas
