"""The replication user's statements, as ``replicator check`` prints them and provisioning runs them."""

from __future__ import annotations

from replicator.provision import accesssql
from tests.conftest import Database


def test_statement_builders_quote_names(source_db: Database) -> None:
    with source_db.connect() as conn:
        text = accesssql.grant_select('we"ird', ("Sales", "Order Lines")).as_string(conn)
    assert text == 'GRANT SELECT ON "Sales"."Order Lines" TO "we""ird"'
