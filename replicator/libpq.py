"""Where psycopg's own libpq lives, for the C extensions that must call that very library.

``replicator._relay`` and ``replicator._pgoutput`` are not linked against libpq: they look its
functions up from an object psycopg has already loaded (see ``_libpq_bind.h``).
"""

from __future__ import annotations

from psycopg import pq


def libpq_carrier() -> str:
    """A file psycopg has loaded whose dependency tree holds (or which is) the libpq it calls."""
    if pq.__impl__ == "binary":
        import psycopg_binary.pq  # type: ignore[import-not-found]

        return str(psycopg_binary.pq.__file__)
    if pq.__impl__ == "c":
        import psycopg_c.pq  # type: ignore[import-not-found]

        return str(psycopg_c.pq.__file__)
    from psycopg.pq import _pq_ctypes  # type: ignore[attr-defined]

    return str(_pq_ctypes.libname)
