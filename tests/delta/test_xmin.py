"""xmin windows: the 32-bit arithmetic, the SQL it becomes, and a real wraparound.

The last test moves a real server's transaction counter (pg_resetwal, freezing in between as
PostgreSQL requires) to just below 2^32, replicates, and crosses into the next epoch with a
transaction left open across the wrap and across a pass.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from replicator.delta import xmin
from replicator.localpg import LocalCluster, start_cluster
from tests.conftest import Database
from tests.delta.conftest import DeltaSetup
from tests.support import checksum

E = 1 << 32  # one epoch of 32-bit transaction IDs


@pytest.mark.parametrize(
    ("since", "upto", "inside", "outside"),
    [
        # Plain window inside one epoch.
        (1000, 2000, [1000, 1500, 1999], [999, 2000, 2, 1, 0, E - 1]),
        # The window crosses 2^32: the old epoch's top and the new epoch's start; 0-2 are never IDs.
        (E - 100, E + 50, [E - 100, E - 1, 3, 49], [E - 101, 50, 0, 1, 2]),
        # Later epochs work the same (64-bit watermark, 32-bit rows).
        (5 * E + 10, 5 * E + 20, [10, 19], [9, 20]),
        (7 * E - 5, 7 * E + 5, [E - 5, E - 1, 3, 4], [E - 6, 5]),
    ],
)
def test_window_contains_exactly_the_ids_since_the_watermark(
    since: int, upto: int, inside: list[int], outside: list[int]
) -> None:
    w = xmin.window(since, upto)
    assert w is not None
    assert all(w.contains(x) for x in inside), [x for x in inside if not w.contains(x)]
    assert not any(w.contains(x) for x in outside), [x for x in outside if w.contains(x)]


def test_window_edges() -> None:
    assert xmin.window(500, 500) == xmin.XidWindow(500, 500)
    assert xmin.window(500, 500).empty  # type: ignore[union-attr]
    # 2^31 transactions back, 32-bit values are ambiguous: read everything.
    assert xmin.window(E, E + (1 << 31)) is None
    assert xmin.window(E, E + (1 << 31) - 1) is not None
    # The source went backwards (another server behind the same address): read everything.
    assert xmin.window(2000, 1000) is None


def test_predicate_sql_agrees_with_the_arithmetic(source_db: Database) -> None:
    """The SQL a pass sends selects exactly the values ``contains`` accepts, on a real server."""
    values = [0, 1, 2, 3, 4, 99, 100, 101, 5000, (1 << 31), E - 101, E - 100, E - 1]
    cases = [(100, 5000), (E - 100, E + 100), (E + 3, E + 3), (3 * E - 100, 3 * E + 4)]
    with source_db.connect() as conn:
        for since, upto in cases:
            w = xmin.window(since, upto)
            assert w is not None
            query = sql.SQL("SELECT x FROM unnest(%s::bigint[]) x WHERE {} ORDER BY x").format(
                xmin.predicate(w, sql.Identifier("x"))
            )
            got = [r[0] for r in conn.execute(query, (values,)).fetchall()]
            assert got == [x for x in values if w.contains(x)], (since, upto)


# --- a real wraparound --------------------------------------------------------------------------

PAGE = 32768  # transactions per pg_xact page: resetting to a page start lets the server create it


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _advance_to(cluster: LocalCluster, next_xid: int) -> None:
    """Set the next transaction ID (32-bit part), freezing every database first, as a real server would
    have."""
    assert next_xid % PAGE == 0
    with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
        conn.execute("ALTER DATABASE template0 ALLOW_CONNECTIONS true")
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    for name in names:
        with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
            conn.execute("VACUUM FREEZE")
    cluster.stop()
    subprocess.run(
        _as_postgres([str(cluster.bindir / "pg_resetwal"), "-x", str(next_xid), str(cluster.datadir)]),
        check=True,
        capture_output=True,
    )
    cluster.start()


def _burn_xids(conn: psycopg.Connection, n: int) -> None:
    """Consume ``n`` transaction IDs quickly: one subtransaction that writes gets one each."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS burn (i integer)")  # not replicated
    conn.execute(
        sql.SQL(
            "DO $$ BEGIN FOR i IN 1..{} LOOP BEGIN INSERT INTO burn VALUES (i); "
            "EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$"
        ).format(sql.Literal(n))
    )
    conn.execute("TRUNCATE burn")


@pytest.fixture
def wrapping_cluster(cluster_root: Path):  # type: ignore[no-untyped-def]
    cluster = start_cluster(cluster_root / "wrap")
    try:
        # Wraparound protection allows at most 2^31 IDs between the oldest unfrozen one and the
        # next: jump a quarter of the circle at a time, freezing in between.
        for quarter in (1, 2, 3):
            _advance_to(cluster, quarter * (1 << 30))
        _advance_to(cluster, E - PAGE)
        yield cluster
    finally:
        cluster.destroy()


def test_changes_across_the_32_bit_wrap_arrive(
    wrapping_cluster: LocalCluster, dest_db: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrapping_cluster.create_database("wrapsrc")
    source = Database(wrapping_cluster, "wrapsrc")
    source.execute(
        """CREATE TABLE t (id integer PRIMARY KEY, v text);
           INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g;"""
    )
    setup = DeltaSetup(source, dest_db, tmp_path)
    setup.once()
    assert source.fetchone("SELECT pg_current_xact_id()::text::bigint") < E

    with source.connect() as conn:
        conn.execute("UPDATE t SET v = 'before the wrap' WHERE id <= 10")
        _burn_xids(conn, PAGE + 100)  # into the new epoch: 32-bit IDs restart at 3
        long_tx = psycopg.connect(source.conninfo)  # not autocommit: stays open
        long_tx.execute("INSERT INTO t VALUES (1001, 'long transaction, opened just after the wrap')")
        _burn_xids(conn, 100)
        conn.execute("UPDATE t SET v = 'after the wrap' WHERE id BETWEEN 11 AND 20")
        conn.execute("DELETE FROM t WHERE id BETWEEN 21 AND 25")
        conn.execute("INSERT INTO t VALUES (1000, 'new after the wrap')")
    assert source.fetchone("SELECT pg_current_xact_id()::text::bigint") > E
    # Rows written before the wrap carry large xmins, after it small ones: the window must wrap.
    assert source.fetchone("SELECT max(xmin::text::bigint) FROM t WHERE id <= 10") > E - PAGE
    assert source.fetchone("SELECT max(xmin::text::bigint) FROM t WHERE id BETWEEN 11 AND 20") < PAGE

    capsys.readouterr()
    setup.once()  # the long transaction is still open
    # Exactly the changed rows were read (ids 1-20 and 1000), through a window that wraps.
    assert "public.t (xmin): 21 upserted, 5 deleted" in capsys.readouterr().out
    assert dest_db.fetchone("SELECT count(*) FROM t WHERE id = 1001") == 0
    long_tx.commit()
    long_tx.close()
    setup.once()
    # What committed after the long transaction began is read again (11-20, 1000), and its row arrives.
    assert "public.t (xmin): 12 upserted, 0 deleted" in capsys.readouterr().out
    assert checksum(dest_db, "public", "t") == checksum(source, "public", "t")
    assert (
        dest_db.fetchone("SELECT v FROM t WHERE id = 1001") == "long transaction, opened just after the wrap"
    )
    # The stored watermark is a 64-bit ID in the new epoch.
    mark = dest_db.fetchone("SELECT watermark::json->>'xmin' FROM _replicator.delta_watermarks")
    assert int(mark) > E
