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

relay = Extension(
    "replicator._relay",
    sources=["replicator/_relay.c"],
    depends=["replicator/_libpq_bind.h"],
    libraries=["dl"],
    extra_compile_args=CFLAGS,
    optional=not STRICT,
)

pgoutput = Extension(
    "replicator._pgoutput",
    sources=["replicator/_pgoutput.c"],
    depends=["replicator/_libpq_bind.h", "replicator/_events.h", "replicator/_pump.h"],
    libraries=["dl"],
    extra_compile_args=CFLAGS,
    optional=not STRICT,
)

wal2json = Extension(
    "replicator._wal2json",
    sources=["replicator/_wal2json.c"],
    depends=["replicator/_libpq_bind.h", "replicator/_events.h", "replicator/_pump.h"],
    libraries=["dl"],
    extra_compile_args=CFLAGS,
    optional=not STRICT,
)

setup(ext_modules=[relay, pgoutput, wal2json] if sys.platform.startswith("linux") else [])
