"""Server-side output settings do not change the values we decode."""

from __future__ import annotations

import pytest

from replicator.decoding.changes import Change
from tests.replication import Replication


@pytest.mark.parametrize("plugin", ["pgoutput", "wal2json"])
@pytest.mark.parametrize("reader", ["stream", "sql"])
def test_values_print_the_same_whatever_the_database_settings(
    replication: Replication, plugin: str, reader: str
) -> None:
    db = replication.db
    db.execute(
        f"ALTER DATABASE \"{db.name}\" SET DateStyle = 'SQL, DMY';"
        f"ALTER DATABASE \"{db.name}\" SET IntervalStyle = 'sql_standard';"
        f"ALTER DATABASE \"{db.name}\" SET bytea_output = 'escape';"
        f'ALTER DATABASE "{db.name}" SET extra_float_digits = -3;'
        "CREATE TABLE t (id int PRIMARY KEY, d date, iv interval, by bytea, f float8)"
    )
    replication.publish("t")
    slot = replication.slot(plugin)
    db.execute("INSERT INTO t VALUES (1, '2024-03-31', '1 day 02:00', '\\x00ff', 0.1)")

    [change] = [e for e in replication.events(slot, plugin, ["t"], reader=reader) if isinstance(e, Change)]

    assert db.fetchone("SHOW DateStyle") == "SQL, DMY"  # the database's own sessions do use them
    assert change.new == ("1", "2024-03-31", "1 day 02:00:00", "\\x00ff", "0.1")
