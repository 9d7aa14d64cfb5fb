"""Where psycopg's own libpq lives, for the C extensions that must call that very library.

``replicator._relay`` and ``replicator._pgoutput`` are not linked against libpq: they look its
functions up from an object psycopg has already loaded (see ``_libpq_bind.h``).
"""

from __future__ import annotations

from typing import Protocol, cast

from psycopg import pq


def libpq_carrier() -> str:
    """A file psycopg has loaded whose dependency tree holds (or which is) the libpq it calls."""
    if pq.__impl__ == "binary":
        import psycopg_binary.pq

        return str(psycopg_binary.pq.__file__)
    if pq.__impl__ == "c":
        import psycopg_c.pq

        return str(psycopg_c.pq.__file__)
    from psycopg.pq import _pq_ctypes

    return str(_pq_ctypes.libname)  # type: ignore[attr-defined]  # set at import, not in its stubs


class _WithPointer(Protocol):
    @property
    def pgconn_ptr(self) -> int | None: ...


def pgconn_ptr(pgconn: pq.abc.PGconn) -> int | None:
    """The address of the ``PGconn`` a psycopg connection wraps (None once closed), for our C
    code. Both psycopg implementations have it; its abstract class does not declare it."""
    return cast(_WithPointer, pgconn).pgconn_ptr
