"""The publications provisioning manages, against a real server: created as declared, kept exact, keyless
tables in an insert-only companion, FOR ALL TABLES refused while a table has no key."""

from __future__ import annotations

import pytest

from replicator.provision import pgaccess
from replicator.provision.accessspec import AccessSpec
from replicator.provision.adminsession import AccessError
from tests.conftest import Database
from tests.provision.test_pgaccess import run


def test_managed_publication_is_created_and_kept_exact(db: Database, user: str) -> None:
    spec = AccessSpec(
        user=user, replication_right="attribute", publication="pub_a",
        publication_tables=(("public", "items"), ("sales", "orders")),
    )
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    members = (
        "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'pub_a' ORDER BY 1"
    )
    assert [r[0] for r in db.fetchall(members)] == ["public.items", "sales.orders"]
    # Drift: an operation switched off, a row filter added, an extra table.
    db.execute("CREATE TABLE public.extra (id int PRIMARY KEY)")
    db.execute("ALTER PUBLICATION pub_a SET (publish = 'insert, update')")
    db.execute("ALTER PUBLICATION pub_a SET TABLE public.items WHERE (id > 10), sales.orders, public.extra")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert [r[0] for r in db.fetchall(members)] == ["public.items", "sales.orders"]
    assert db.fetchall(
        "SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = 'pub_a'"
    ) == [(True, True, True)]
    assert db.fetchone("SELECT count(*) FROM pg_publication_rel WHERE prqual IS NOT NULL") == 0


def test_all_tables_publication_for_self_hosted(db: Database, user: str) -> None:
    spec = AccessSpec(user=user, replication_right="attribute", publication="pub_all", publication_tables="*")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert db.fetchone("SELECT puballtables FROM pg_publication WHERE pubname = 'pub_all'") is True
    narrower = AccessSpec(
        user=user,
        replication_right="attribute",
        publication="pub_all",
        publication_tables=(("public", "items"),),
    )
    run(db, pgaccess.update_access, spec, narrower, "pw-123456")
    assert db.fetchone("SELECT puballtables FROM pg_publication WHERE pubname = 'pub_all'") is False


def test_unmanaged_publication_is_left_alone(db: Database, user: str) -> None:
    db.execute("CREATE PUBLICATION theirs FOR TABLE public.items")
    spec = AccessSpec(user=user, replication_right="attribute", publication="theirs", publication_tables=None)
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_publication WHERE pubname = 'theirs'") == 1


def test_a_table_without_a_key_goes_to_an_insert_only_publication_and_the_source_keeps_updating_it(
    db: Database, user: str
) -> None:
    """A keyless table in a publication that publishes updates makes the source's own UPDATEs and
    DELETEs of it fail the moment `pulumi up` ends. It goes to ``<publication>_insert_only``, as
    ``replicator run`` expects (and validates): the two publications as provisioned are accepted by
    the run's checks, partitioned tables included (published via their root)."""
    from replicator.source.publication import INSERT_ONLY, PublishedTable, publication_problems

    db.execute(
        "CREATE TABLE public.logs (at int, msg text); INSERT INTO public.logs VALUES (1, 'a'), (2, 'b');"
        "CREATE TABLE public.events (id int, part int, PRIMARY KEY (id, part)) PARTITION BY LIST (part);"
        "CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES IN (1)"
    )
    spec = AccessSpec(
        user=user, replication_right="attribute", publication="pub_k",
        publication_tables=(("public", "items"), ("public", "logs"), ("public", "events")),
    )
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    db.execute("UPDATE public.logs SET msg = 'changed' WHERE at = 1; DELETE FROM public.logs WHERE at = 2")
    members = "SELECT tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1"
    assert db.fetchall(members, ("pub_k",)) == [("events",), ("items",)]
    assert db.fetchall(members, ("pub_k_insert_only",)) == [("logs",)]
    assert db.fetchall(
        "SELECT pubname, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication "
        "WHERE pubname LIKE 'pub\\_k%' ORDER BY 1"
    ) == [("pub_k", True, True, True, True, True), ("pub_k_insert_only", True, False, False, True, True)]
    with db.connect() as conn:
        keyed = [PublishedTable("public", "items"), PublishedTable("public", "events")]
        logs = [PublishedTable("public", "logs")]
        assert publication_problems(conn, "pub_k", keyed, not_here=logs) == []
        assert publication_problems(conn, "pub_k_insert_only", logs, publish=INSERT_ONLY) == []
    # The table gets a key: it moves to the main publication at the next `pulumi up`.
    db.execute("ALTER TABLE public.logs ADD PRIMARY KEY (at)")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert db.fetchall(members, ("pub_k",)) == [("events",), ("items",), ("logs",)]
    assert db.fetchall(members, ("pub_k_insert_only",)) == []
    run(db, pgaccess.drop_access, spec)
    assert db.fetchone("SELECT count(*) FROM pg_publication WHERE pubname LIKE 'pub\\_k%'") == 0


def test_all_tables_is_refused_before_anything_while_a_table_has_no_key(db: Database, user: str) -> None:
    """FOR ALL TABLES would publish a keyless table's updates, and the source would refuse them."""
    db.execute("CREATE TABLE public.logs (at int, msg text); INSERT INTO public.logs VALUES (1, 'a')")
    spec = AccessSpec(user=user, replication_right="attribute", publication="pub_all", publication_tables="*")
    with pytest.raises(AccessError, match=r"public\.logs.*primary key.*publicationTables"):
        run(db, pgaccess.ensure_access, spec, "pw-123456")
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)) == 0
    assert db.fetchone("SELECT count(*) FROM pg_publication") == 0
    db.execute("UPDATE public.logs SET msg = 'still fine'")
    db.execute("ALTER TABLE public.logs REPLICA IDENTITY FULL")
    run(db, pgaccess.ensure_access, spec, "pw-123456")
    db.execute("UPDATE public.logs SET msg = 'published, with its full old row'")
    assert db.fetchone("SELECT puballtables FROM pg_publication WHERE pubname = 'pub_all'") is True
