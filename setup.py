"""Only the optional C part of the pgoutput decoder lives here; everything else is in pyproject.toml.

The extension is optional: without a compiler the install still succeeds and
replicator/decoding/pgoutput.py uses its pure-Python row decoder (same results, slower).
"""

from setuptools import Extension, setup

pgoutput = Extension(
    "replicator._pgoutput",
    sources=["replicator/_pgoutput.c"],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    optional=True,
)

setup(ext_modules=[pgoutput])
