"""Fixtures of the provisioning tests: a source database with two schemas, and a role name of its own."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.conftest import Database

_n = itertools.count()


@pytest.fixture
def user() -> str:
    # Roles are cluster-wide: every test gets its own name.
    return f"repl_{os.getpid()}_{next(_n)}"


@pytest.fixture
def db(source_db: Database) -> Database:
    source_db.execute("CREATE SCHEMA sales")
    source_db.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    source_db.execute("CREATE TABLE sales.orders (id int PRIMARY KEY, total numeric)")
    source_db.execute("INSERT INTO public.items VALUES (1, 'a')")
    source_db.execute("INSERT INTO sales.orders VALUES (1, 9.5)")
    return source_db
