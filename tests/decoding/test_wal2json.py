"""wal2json decoding against a real server: the same events as pgoutput for the same changes."""

from __future__ import annotations

import pytest

from replicator.decoding import wal2json as wal2json_module
from replicator.decoding.changes import UNCHANGED_TOAST, Change, DecodeError, Truncate
from replicator.decoding.wal2json import Wal2JsonDecoder
from tests.decoding import types
from tests.replication import Replication

BIG = "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200)"  # ~100 KB, incompressible


@pytest.fixture(autouse=True, params=["native", "python"])
def action_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the C action decoder and read loop (when built) and with the
    pure-Python ones."""
    if request.param == "native":
        if wal2json_module.NATIVE is None:
            pytest.skip("replicator._wal2json is not built, or a REPLICATOR_PURE_PYTHON switch is set")
    else:
        monkeypatch.setattr(wal2json_module, "NATIVE", None)
    return str(request.param)


def both(replication: Replication, tables: list[str], workload: list[str]) -> tuple[list, list]:
    """Run ``workload`` once and decode it through a pgoutput slot and a wal2json slot."""
    replication.publish(*tables)
    pg_slot = replication.slot("pgoutput")
    wj_slot = replication.slot("wal2json")
    for statement in workload:
        replication.db.execute(statement)
    return replication.events(pg_slot, "pgoutput"), replication.events(wj_slot, "wal2json", tables)


def test_every_type_family_decodes_like_pgoutput(replication: Replication) -> None:
    types.create(replication.db)
    replication.publish("kinds")
    pg_slot = replication.slot("pgoutput")
    wj_slot = replication.slot("wal2json")
    types.insert(replication.db, [types.ROW_1, types.ROW_2, types.ROW_3])
    replication.db.execute("UPDATE kinds SET t = t || '!', jb = '{}' WHERE id = 1")
    replication.db.execute("DELETE FROM kinds WHERE id = 3")

    pgoutput = replication.events(pg_slot, "pgoutput")
    wal2json = replication.events(wj_slot, "wal2json", ["kinds"])

    assert len([e for e in pgoutput if isinstance(e, Change)]) == 5
    assert wal2json == pgoutput
    row = pgoutput[1].new
    assert row[types.COLUMNS.index("b")] == "t"  # JSON true, back to PostgreSQL text
    assert row[types.COLUMNS.index("by")] == "\\x00ff5c0a"  # wal2json drops the \x; we restore it
    assert row[types.COLUMNS.index("num_scaled")] == "1.5000"  # a JSON number, digits kept


def test_unchanged_toast_like_pgoutput(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, n int, big text, other text)")
    pgoutput, wal2json = both(
        replication,
        ["t"],
        [
            f"INSERT INTO t SELECT 1, 0, ({BIG}), ({BIG})",
            "UPDATE t SET n = 1",  # both TOASTed values unchanged
            f"UPDATE t SET other = ({BIG})",  # one of them changed
        ],
    )
    ins, upd1, upd2 = [e for e in pgoutput if isinstance(e, Change)]
    assert upd1.new[2:] == (UNCHANGED_TOAST, UNCHANGED_TOAST)
    assert upd2.new[2] is UNCHANGED_TOAST and len(upd2.new[3]) > 100_000  # type: ignore[arg-type]
    assert wal2json == pgoutput


def test_key_updates_and_deletes_like_pgoutput(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (a int, b int, v text, PRIMARY KEY (a, b))")
    pgoutput, wal2json = both(
        replication,
        ["t"],
        [
            "INSERT INTO t VALUES (1, 1, 'x'), (1, 2, 'y')",
            "UPDATE t SET v = 'z' WHERE b = 1",  # key unchanged: no old key
            "UPDATE t SET b = 3 WHERE b = 2",  # key changed: old key
            "DELETE FROM t WHERE a = 1",
        ],
    )
    updates = [e for e in pgoutput if isinstance(e, Change) and e.old is not None]
    assert [(c.op.value, c.old) for c in updates] == [
        ("update", ("1", "2", None)),
        ("delete", ("1", "1", None)),
        ("delete", ("1", "3", None)),
    ]
    assert wal2json == pgoutput


def test_replica_identity_full_like_pgoutput(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (a int, b text, big text); ALTER TABLE t REPLICA IDENTITY FULL")
    pgoutput, wal2json = both(
        replication,
        ["t"],
        [f"INSERT INTO t SELECT 1, 'x', ({BIG})", "UPDATE t SET b = 'y'", "DELETE FROM t"],
    )
    ins, upd, dele = [e for e in pgoutput if isinstance(e, Change)]
    assert upd.old == ("1", "x", ins.new[2]) and dele.old == ("1", "y", ins.new[2])  # type: ignore[index]
    assert wal2json == pgoutput


def test_truncate_like_pgoutput_without_options(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    pgoutput, wal2json = both(
        replication,
        ["a", "b"],
        ["INSERT INTO a VALUES (1)", "TRUNCATE a, b RESTART IDENTITY", "INSERT INTO b VALUES (1)"],
    )
    [pg_trunc] = [e for e in pgoutput if isinstance(e, Truncate)]
    [wj_trunc] = [e for e in wal2json if isinstance(e, Truncate)]
    assert pg_trunc.restart_identity and not wj_trunc.restart_identity  # wal2json does not say
    assert (wj_trunc.relations, wj_trunc.lsn, wj_trunc.xid) == (
        pg_trunc.relations,
        pg_trunc.lsn,
        pg_trunc.xid,
    )
    assert [e for e in wal2json if e is not wj_trunc] == [e for e in pgoutput if e is not pg_trunc]


def test_schema_changes_like_pgoutput(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY, a int)")
    pgoutput, wal2json = both(
        replication,
        ["t"],
        [
            "INSERT INTO t (id, a) VALUES (1, 1)",
            "ALTER TABLE t ADD COLUMN note numeric(5, 2)",
            "INSERT INTO t (id, a, note) VALUES (2, 2, 1.5)",
            "UPDATE t SET note = 3 WHERE id = 1",
            "ALTER TABLE t DROP COLUMN a",
            "INSERT INTO t (id, note) VALUES (3, 2)",
        ],
    )
    rels = [e.relation for e in pgoutput if isinstance(e, Change)]
    assert [r.names for r in rels] == [("id", "a"), ("id", "a", "note"), ("id", "a", "note"), ("id", "note")]
    assert wal2json == pgoutput


def test_generated_columns_are_left_out_like_pgoutput(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED)"
    )
    pgoutput, wal2json = both(
        replication, ["t"], ["INSERT INTO t (id, a) VALUES (1, 1)", "UPDATE t SET a = 2", "DELETE FROM t"]
    )
    assert [e.relation.names for e in pgoutput if isinstance(e, Change)] == [("id", "a")] * 3
    assert wal2json == pgoutput


def test_empty_transactions_are_skipped_like_pgoutput(replication: Replication) -> None:
    replication.db.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)")
    pgoutput, wal2json = both(
        replication,
        ["t"],
        ["INSERT INTO other VALUES (1)", "INSERT INTO t VALUES (1)", "INSERT INTO other VALUES (2)"],
    )
    assert len(pgoutput) == 3  # Begin, Change, Commit
    assert wal2json == pgoutput


def test_names_needing_quotes(replication: Replication) -> None:
    replication.db.execute(
        'CREATE SCHEMA "My.Schema"; CREATE TABLE "My.Schema"."a,b t" ("Id" int PRIMARY KEY, "x y" text)'
    )
    pgoutput, wal2json = both(
        replication, ["My.Schema.a,b t"], ["""INSERT INTO "My.Schema"."a,b t" VALUES (1, 'v')"""]
    )
    assert [e.relation.qualified_name for e in pgoutput if isinstance(e, Change)] == ["My.Schema.a,b t"]
    assert wal2json == pgoutput


def test_malformed_messages_raise_decode_error() -> None:
    decoder = Wal2JsonDecoder(lambda schema, table: None)
    with pytest.raises(DecodeError, match="malformed wal2json"):
        decoder.decode(b"{not json", 0)
    with pytest.raises(DecodeError, match="unknown wal2json action 'Q'"):
        decoder.decode(b'{"action": "Q"}', 0)


def test_options_escape_table_names() -> None:
    decoder = Wal2JsonDecoder(lambda s, t: None, [("My.Schema", "a,b t"), ("public", "x")])
    assert decoder.options()["add-tables"] == "My\\.Schema.a\\,b\\ t,public.x"
