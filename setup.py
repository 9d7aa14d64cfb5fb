"""Only the optional C part of the relay lives here; everything else is in pyproject.toml.

The extension is optional: without a compiler the install still succeeds and
replicator/relay.py uses its pure-Python loop. It is built on Linux only, the one platform
where its way of finding psycopg's libpq (dlopen RTLD_NOLOAD + dladdr) is tested.
"""

import sys

from setuptools import Extension, setup

relay = Extension(
    "replicator._relay",
    sources=["replicator/_relay.c"],
    # Deliberately not linked against libpq: the functions are looked up at run time in the
    # libpq psycopg has loaded (see the comment at the top of _relay.c).
    libraries=["dl"],
    extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    optional=True,
)

setup(ext_modules=[relay] if sys.platform.startswith("linux") else [])
