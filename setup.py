"""Only the optional C parts live here; everything else is in pyproject.toml.

The extensions are optional: without a compiler the install still succeeds and the pure-Python
code paths are used (same results, slower; ``replicator/native.py`` decides and says why):

- ``replicator._relay``: the snapshot relay's per-row loop (replicator/relay.py falls back);
- ``replicator._pgoutput``: the pgoutput row decoder (replicator/decoding/pgoutput.py falls back);
- ``replicator._wal2json``: the wal2json action decoder (replicator/decoding/wal2json.py falls back).

None is linked against libpq: the functions are looked up at run time in the libpq psycopg
has loaded (dlopen RTLD_NOLOAD + dladdr; see the comments at the top of each .c file). That
lookup is tested on Linux only, so the extensions are built on Linux only.
"""

import os
import sys

from setuptools import Extension, setup

CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
# CI builds with REPLICATOR_WERROR=1: a warning there is a failure (and a missing build too,
# since the extensions stop being optional).
STRICT = os.environ.get("REPLICATOR_WERROR", "") not in ("", "0")
if STRICT:
    CFLAGS.append("-Werror")


def extension(name: str, *headers: str) -> Extension:
    """replicator.<name> from replicator/<name>.c, rebuilt when one of its headers changes."""
    return Extension(
        f"replicator.{name}",
        sources=[f"replicator/{name}.c"],
        depends=[f"replicator/{h}" for h in headers],
        libraries=["dl"],
        extra_compile_args=CFLAGS,
        optional=not STRICT,
    )


relay = extension("_relay", "_libpq_bind.h")
pgoutput = extension("_pgoutput", "_libpq_bind.h", "_events.h", "_pump.h")
wal2json = extension("_wal2json", "_libpq_bind.h", "_events.h", "_pump.h")

setup(ext_modules=[relay, pgoutput, wal2json] if sys.platform.startswith("linux") else [])
