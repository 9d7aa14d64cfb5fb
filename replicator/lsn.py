"""Log sequence numbers: a WAL position, written ``16/B374D848`` by PostgreSQL.

``Lsn`` is an ``int`` (so it orders, hashes and subtracts like one: ``a - b`` is a byte
distance) that prints the PostgreSQL way. Importing this module teaches psycopg to pass an
``Lsn`` as ``pg_lsn`` and to return ``pg_lsn`` columns as ``Lsn``.
"""

from __future__ import annotations

import struct

from psycopg import adapters
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.pq import Format

_MAX = 0xFFFF_FFFF_FFFF_FFFF
_int8 = struct.Struct(">Q")


class Lsn(int):
    """A WAL position; ``Lsn.parse("16/B374D848")``, ``str(lsn) == "16/B374D848"``."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Lsn:
        if not 0 <= value <= _MAX:
            raise ValueError(f"an LSN is a 64-bit unsigned position, got {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Lsn:
        hi, sep, lo = text.strip().partition("/")
        try:
            if not sep or not hi or not lo or len(hi) > 8 or len(lo) > 8:
                raise ValueError
            return cls((int(hi, 16) << 32) | int(lo, 16))
        except ValueError:
            raise ValueError(f"an LSN looks like 16/B374D848, got {text!r}") from None

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFF_FFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(self, spec)


def lsn_from_server(value: int) -> Lsn:
    """An Lsn from a 64-bit position the server sent: no range check (hot path of decoding)."""
    return int.__new__(Lsn, value)


# pg_lsn's type oid: fixed in the catalog since PostgreSQL 9.4.
PG_LSN_OID = 3220


class LsnDumper(Dumper):
    oid = PG_LSN_OID

    def dump(self, obj: Lsn) -> bytes:
        return str(obj).encode()


class LsnLoader(Loader):
    def load(self, data: Buffer) -> Lsn:
        return Lsn.parse(bytes(data).decode())


class LsnBinaryLoader(Loader):
    format = Format.BINARY

    def load(self, data: Buffer) -> Lsn:
        return Lsn(_int8.unpack(data)[0])


adapters.register_dumper(Lsn, LsnDumper)
adapters.register_loader(PG_LSN_OID, LsnLoader)
adapters.register_loader(PG_LSN_OID, LsnBinaryLoader)
