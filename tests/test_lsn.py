"""Lsn: parsing, printing, ordering, and psycopg adaptation as pg_lsn."""

from __future__ import annotations

import pytest

from replicator.lsn import Lsn
from tests.conftest import Database


def test_parse_format_and_order() -> None:
    lsn = Lsn.parse("16/B374D848")
    assert int(lsn) == (0x16 << 32) | 0xB374D848
    assert str(lsn) == f"{lsn}" == "16/B374D848" and repr(lsn) == "Lsn('16/B374D848')"
    assert Lsn.parse("0/0") == Lsn(0) < Lsn.parse("0/1") < Lsn.parse("1/0") < lsn
    assert lsn - Lsn.parse("16/B374D800") == 0x48  # a byte distance
    assert str(Lsn(2**64 - 1)) == "FFFFFFFF/FFFFFFFF"
    assert max(Lsn(5), Lsn(7)) == 7 and isinstance(max(Lsn(5), Lsn(7)), Lsn)


@pytest.mark.parametrize("bad", ["", "16", "16/", "/1", "x/1", "1/2/3", "123456789/0"])
def test_rejects_what_is_not_an_lsn(bad: str) -> None:
    with pytest.raises(ValueError, match="an LSN looks like 16/B374D848"):
        Lsn.parse(bad)
    with pytest.raises(ValueError, match="64-bit"):
        Lsn(-1)


def test_round_trips_through_postgresql_as_pg_lsn(source_db: Database) -> None:
    with source_db.connect() as conn:
        lsn = Lsn.parse("16/B374D848")
        assert conn.execute("SELECT %s, pg_typeof(%s)::text", (lsn, lsn)).fetchone() == (lsn, "pg_lsn")
        row = conn.execute("SELECT '1/2'::pg_lsn", binary=True).fetchone()
        assert row == (Lsn.parse("1/2"),) and type(row[0]) is Lsn  # type: ignore[index]
