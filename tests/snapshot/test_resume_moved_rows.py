"""A resumed snapshot does not trust page ranges read in another snapshot (issue 9 item 4).

Killed after 3 of 32 chunks; at the source 3,000 rows of the finished pages are deleted, VACUUM
frees their space, and 2,000 rows from the end of the table are updated, so their new versions
move into pages of chunks already done. The resumed run must still copy them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.snapshot.test_resume import _kill_at_gate
from tests.support import checksum, run_cli, write

SOURCE = """
CREATE TABLE moving (id integer {key}, v text) WITH (fillfactor = 100);
INSERT INTO moving SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
ANALYZE;
"""
EXTRACTOR = "snapshot:\n  threads: 1\n  min-job-size-rows: 3000\n  max-jobs-per-chunk: 32\n"


def _args(tmp_path: Path, source_db: Database, dest_db: Database) -> list[str]:
    return [
        "run", "snapshot", "--no-progress",
        "--source", str(source_db.write_config(tmp_path / "source.yaml")),
        "--destination", str(dest_db.write_config(tmp_path / "destination.yaml")),
        "--extractor", str(write(tmp_path / "extractor.yaml", EXTRACTOR)),
    ]


@pytest.mark.parametrize("key", ["PRIMARY KEY", ""])
def test_rows_moved_into_finished_page_ranges_reach_the_destination(
    source_db: Database, dest_db: Database, tmp_path: Path, key: str
) -> None:
    source_db.execute(SOURCE.format(key=key))
    args = _args(tmp_path, source_db, dest_db)
    _kill_at_gate(dest_db, args, after_chunk=3)  # threads: 1, so chunks 0-2 are done
    bound = dest_db.fetchone(
        "SELECT max(upper_bound::int) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL"
    )
    assert dest_db.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks") == 32
    assert dest_db.fetchone("SELECT count(*) FROM _replicator.snapshot_chunks WHERE done_at IS NOT NULL") == 3
    before = _rows(source_db)
    source_db.execute(
        "DELETE FROM moving WHERE id IN (SELECT id FROM moving WHERE (ctid::text::point)[0] < %s "
        "ORDER BY id LIMIT 3000)", (bound,)
    )
    source_db.execute("VACUUM moving")
    source_db.execute("UPDATE moving SET v = 'moved ' || id WHERE id > 98000")
    moved = source_db.fetchone(
        "SELECT count(*) FROM moving WHERE v LIKE 'moved %%' AND (ctid::text::point)[0] < %s", (bound,)
    )
    assert moved >= 1500, f"only {moved} rows moved into finished pages: the test proves nothing"

    assert run_cli(*args) == 0
    after = _rows(source_db)
    copied = _rows(dest_db)
    missing = after - copied
    assert not missing, f"{len(missing)} source rows missing or stale at the destination"
    if key:
        # Every source row with its current values, once; what may remain is deleted rows only.
        assert copied - after <= before - after
        assert dest_db.fetchone("SELECT count(*) - count(DISTINCT id) FROM moving") == 0
    else:
        # No key to merge by: copied again from the start, so exact.
        assert checksum(dest_db, "public", "moving") == checksum(source_db, "public", "moving")


def _rows(db: Database) -> set[tuple[int, str]]:
    return set(db.fetchall("SELECT id, v FROM moving"))
