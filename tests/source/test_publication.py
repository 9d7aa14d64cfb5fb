"""Publications against a real server: created right, reused only when usable, problems named with fixes."""

from __future__ import annotations

import psycopg
import pytest

from replicator.decoding.changes import Change
from replicator.errors import SourceError
from replicator.source.publication import PublishedTable, ensure_publication
from tests.replication import Replication

T = PublishedTable("public", "t")
U = PublishedTable("public", "u")


def test_creates_with_column_lists_keys_included_and_partitions_via_root(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, secret text);"
        "CREATE TABLE parted (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
        "CREATE TABLE parted_2024 PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    )
    tables = [PublishedTable("public", "t", ("a",)), PublishedTable("public", "parted")]
    with replication.db.connect() as conn:
        assert ensure_publication(conn, "pub", tables) is True
        assert ensure_publication(conn, "pub", tables) is False  # reused: valid as created
    assert replication.db.fetchall(
        "SELECT tablename, attnames, pubviaroot FROM pg_publication_tables "
        "JOIN pg_publication USING (pubname) ORDER BY 1"
    ) == [
        ("parted", ["id", "at"], True),
        ("t", ["id", "a"], True),  # the key is published too: updates need it
    ]

    slot = replication.slot("pgoutput")
    replication.db.execute(
        "INSERT INTO t VALUES (1, 'x', 'hidden'); INSERT INTO parted VALUES (1, '2024-05-01')"
    )
    changes = [e for e in replication.events(slot, "pgoutput") if isinstance(e, Change)]
    assert [(c.relation.table, c.new) for c in changes] == [
        ("t", ("1", "x")),
        ("parted", ("1", "2024-05-01")),
    ]


def test_reports_every_problem_with_its_fix(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text); CREATE TABLE u (id int PRIMARY KEY);"
        "CREATE TABLE w (id int PRIMARY KEY, n int);"
        "CREATE TABLE parted (id int) PARTITION BY LIST (id);"
        "CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);"
        "CREATE PUBLICATION pub FOR TABLE t (id, a), w WHERE (n > 0), parted WITH (publish = 'insert')"
    )
    wanted = [T, U, PublishedTable("public", "w"), PublishedTable("public", "parted")]
    with replication.db.connect() as conn, pytest.raises(SourceError) as err:
        ensure_publication(conn, "pub", wanted)

    problems = str(err.value).splitlines()
    assert problems[0] == "publication 'pub' cannot be used as it is:"
    assert problems[1:] == [
        "  - it does not publish update, delete, truncate; "
        "fix: ALTER PUBLICATION \"pub\" SET (publish = 'insert, update, delete, truncate');",
        "  - its column list for public.t leaves out b; "
        'fix: ALTER PUBLICATION "pub" DROP TABLE "public"."t"; ALTER PUBLICATION "pub" ADD TABLE '
        '"public"."t";',
        '  - it does not include public.u; fix: ALTER PUBLICATION "pub" ADD TABLE "public"."u";',
        "  - it filters the rows of public.w (WHERE (n > 0)): changes to rows outside the filter would be "
        "lost; "
        'fix: ALTER PUBLICATION "pub" DROP TABLE "public"."w"; ALTER PUBLICATION "pub" ADD TABLE '
        '"public"."w";',
        "  - public.parted is partitioned and the publication does not publish via the partition root "
        "(changes would arrive under each partition's name); "
        'fix: ALTER PUBLICATION "pub" SET (publish_via_partition_root = true);',
    ]

    # The fixes, as given, make the publication usable.
    for line in problems[1:]:
        replication.db.execute(line.split("fix: ", 1)[1])
    with replication.db.connect() as conn:
        assert ensure_publication(conn, "pub", wanted) is False


def test_missing_table_and_creation_failure(replication: Replication) -> None:
    replication.db.execute(
        "CREATE TABLE t (id int PRIMARY KEY); DROP ROLE IF EXISTS pub_user;"
        "CREATE ROLE pub_user LOGIN PASSWORD 'pw-pub'; GRANT CREATE ON DATABASE "
        + f'"{replication.db.name}"'
        + " TO pub_user"
    )
    with (
        replication.db.connect() as conn,
        pytest.raises(SourceError, match="cannot publish public.u: no such table"),
    ):
        ensure_publication(conn, "pub", [T, U])
    try:
        info = replication.db.cluster.conninfo(replication.db.name, user="pub_user", password="pw-pub")
        with psycopg.connect(info, autocommit=True) as conn, pytest.raises(SourceError) as err:
            ensure_publication(conn, "pub", [T])
        assert "must be owner of table t" in str(err.value)
        assert (
            'ask the tables\' owner (or a superuser) to run: CREATE PUBLICATION "pub" FOR TABLE "public"."t"'
            in str(err.value)
        )
    finally:
        replication.db.execute(
            f'REVOKE ALL ON DATABASE "{replication.db.name}" FROM pub_user; DROP ROLE pub_user'
        )
