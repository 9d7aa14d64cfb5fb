"""Only the optional C part of the pgoutput decoder lives here; everything else is in pyproject.toml.

The extension is optional: without a compiler the install still succeeds and
replicator/decoding/pgoutput.py uses its pure-Python row decoder (same results, slower).
"""

from setuptools import Extension, setup

pgoutput = Extension(
    "replicator._pgoutput",
    sources=["replicator/_pgoutput.c"],
    # Deliberately not linked against libpq: pump() calls the libpq psycopg has loaded, found at
    # run time (see the comment at the top of _pgoutput.c).
    libraries=["dl"],
    extra_compile_args=["-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    optional=True,
)

setup(ext_modules=[pgoutput])
