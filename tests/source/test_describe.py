"""Catalog descriptions match what pgoutput says in its Relation messages."""

from __future__ import annotations

from replicator.decoding.changes import Change, ReplicaIdentity
from replicator.source.describe import describe_table
from tests.replication import Replication


def test_describes_tables_like_pgoutput_relation_messages(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE d (a int, b varchar(7), c numeric(9, 2), g int GENERATED ALWAYS AS (a + 1) STORED,"
        " PRIMARY KEY (b, a));"
        "CREATE TABLE f (a int, b text); ALTER TABLE f REPLICA IDENTITY FULL;"
        "CREATE TABLE n (a int PRIMARY KEY, b text); ALTER TABLE n REPLICA IDENTITY NOTHING;"
        "CREATE TABLE i (a int NOT NULL, b int NOT NULL, c text); CREATE UNIQUE INDEX i_b ON i (b);"
        "ALTER TABLE i REPLICA IDENTITY USING INDEX i_b;"
        "ALTER TABLE d DROP COLUMN c; ALTER TABLE d ADD COLUMN c numeric(9, 2)"
    )
    replication.publish("d", "f", "n", "i")
    slot = replication.slot("pgoutput")
    replication.db.execute(
        "INSERT INTO d (a, b) VALUES (1, 'x'); INSERT INTO f VALUES (1, 'x');"
        "INSERT INTO n VALUES (1, 'x'); INSERT INTO i VALUES (1, 2, 'x')"
    )
    sent = {
        e.relation.table: e.relation for e in replication.events(slot, "pgoutput") if isinstance(e, Change)
    }

    with replication.db.connect() as conn:
        described = {t: describe_table(conn, "public", t) for t in ("d", "f", "n", "i")}
        assert describe_table(conn, "public", "missing") is None

    assert {t: info.relation for t, info in described.items() if info} == sent
    assert described["d"] is not None and described["d"].generated == {"g"}
    assert [c.is_key for c in sent["d"].columns] == [True, True, False]
    assert sent["f"].replica_identity is ReplicaIdentity.FULL and sent["i"].key_names() == ("b",)
    assert sent["n"].key_indexes == ()
