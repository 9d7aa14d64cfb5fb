"""The catalog as the source describes it: here, the one replica identity rule."""

from __future__ import annotations

from replicator.catalog import load_catalog
from tests.conftest import Database


def test_which_tables_updates_and_deletes_can_be_replicated(source_db: Database) -> None:
    source_db.execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int);"
        "CREATE TABLE full_ (id int); ALTER TABLE full_ REPLICA IDENTITY FULL;"
        "CREATE TABLE nothing (id int PRIMARY KEY); ALTER TABLE nothing REPLICA IDENTITY NOTHING;"
        "CREATE TABLE byindex (id int NOT NULL); CREATE UNIQUE INDEX byindex_id ON byindex (id);"
        "ALTER TABLE byindex REPLICA IDENTITY USING INDEX byindex_id;"
        "CREATE TABLE dropped (id int NOT NULL); CREATE UNIQUE INDEX dropped_id ON dropped (id);"
        "ALTER TABLE dropped REPLICA IDENTITY USING INDEX dropped_id; DROP INDEX dropped_id"
    )
    with source_db.connect() as conn:
        catalog = load_catalog(conn)
    gaps = {
        name: catalog.tables[("public", name)].identity_gap
        for name in ("t", "u", "full_", "nothing", "byindex", "dropped")
    }
    assert gaps == {
        "t": None,
        "u": "no primary key and REPLICA IDENTITY DEFAULT",
        "full_": None,
        "nothing": "REPLICA IDENTITY NOTHING",
        "byindex": None,
        "dropped": "REPLICA IDENTITY USING INDEX of an index that no longer exists",
    }
