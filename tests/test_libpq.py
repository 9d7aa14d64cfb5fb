"""libpq_carrier(): the C extensions find psycopg's own libpq from a file psycopg has loaded."""

from __future__ import annotations

import os

import psycopg

from replicator.libpq import libpq_carrier
from tests.test_native import loaded_files


def test_the_carrier_is_already_loaded_by_psycopg() -> None:
    psycopg.pq.version()  # psycopg's libpq wrapper is loaded once it is used
    carrier = libpq_carrier()
    assert os.path.isfile(carrier)
    assert os.path.realpath(carrier) in loaded_files()
