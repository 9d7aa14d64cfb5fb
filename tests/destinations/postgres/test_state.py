"""The state store: the only code that touches ``_replicator``, and its schema's versions."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from replicator.destinations.base import ChunkPlan
from replicator.destinations.postgres import state
from replicator.errors import DestinationError
from replicator.lsn import Lsn
from tests.conftest import Database

PACKAGE = Path(state.__file__).resolve().parents[2]
OLD_META = (
    "CREATE SCHEMA _replicator; CREATE TABLE _replicator.meta (key text PRIMARY KEY, value text NOT NULL);"
)


def test_only_the_state_store_touches_the_replicator_schema() -> None:
    """Other engineers add state through the store's API, never by writing SQL against it."""
    touching = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"_replicator\.", p.read_text())
    )
    assert touching == ["replicator/destinations/postgres/state.py"]


def test_a_destination_without_state_gets_every_table_and_the_version(dest_db: Database) -> None:
    with dest_db.session() as session:  # session() runs ensure()
        session.state.ensure()  # twice: idempotent
        assert session.state.present()
    assert dest_db.fetchone("SELECT value FROM _replicator.meta WHERE key = 'version'") == str(state.VERSION)
    tables = {r[0] for r in dest_db.fetchall(
        "SELECT tablename FROM pg_tables WHERE schemaname = '_replicator'")}
    assert tables == {
        "meta", "snapshot_tables", "snapshot_chunks", "slot_checkpoints", "delta_watermarks", "slot_lag",
        "switchovers", "switchover_source", "dropped_foreign_keys",
        "schema_changes", "pending_refreshes", "stream_tables",
    }


def test_a_version_1_destination_reads_slots_without_a_lag_record_and_gets_one_on_upgrade(
    dest_db: Database,
) -> None:
    """``status`` never upgrades: it must read a destination an older replicator left at version 1."""
    dest_db.execute(f"{OLD_META} INSERT INTO _replicator.meta VALUES ('version', '0')")
    for statement in state.MIGRATIONS[0]:
        dest_db.execute(statement)
    dest_db.execute("UPDATE _replicator.meta SET value = '1'")
    dest_db.execute(
        "INSERT INTO _replicator.slot_checkpoints (job, slot_name, lsn) VALUES ('j', 's', '0/20')"
    )
    with dest_db.destination().open_session("test") as session:
        [old] = session.state.slot_progress()
        assert (old.slot, old.lsn, old.applied_through) == ("s", Lsn.parse("0/20"), None)
        assert session.state.schema_change_log() == []  # no log yet: none applied
        assert session.state.stream_tables("j") == {}
        session.state.ensure()
        when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        with session.transaction():
            session.state.save_slot_lag("j", "s", when)
        with session.transaction():
            session.state.save_slot_lag("j", "s", when + timedelta(seconds=3))
        [new] = session.state.slot_progress()
    assert new.applied_through == when + timedelta(seconds=3)


def test_an_older_schema_is_upgraded_by_the_missing_migrations(dest_db: Database) -> None:
    # As an older replicator would have left it: the version table, at version 0, nothing else.
    dest_db.execute(f"{OLD_META} INSERT INTO _replicator.meta VALUES ('version', '0')")
    with dest_db.session() as session:
        session.state.save_slot_checkpoint("job", "slot", Lsn.parse("0/10"))
        assert session.state.slot_checkpoint("job", "slot") == Lsn.parse("0/10")
    assert dest_db.fetchone("SELECT value FROM _replicator.meta WHERE key = 'version'") == str(state.VERSION)


def test_a_newer_schema_is_refused_before_anything_is_written(dest_db: Database) -> None:
    dest_db.execute(f"{OLD_META} INSERT INTO _replicator.meta VALUES ('version', '{state.VERSION + 1}')")
    session = dest_db.destination().open_session("test")
    with session, pytest.raises(DestinationError, match=f"is version {state.VERSION + 1}, newer than"):
        session.state.ensure()
    assert dest_db.fetchone("SELECT count(*) FROM pg_tables WHERE schemaname = '_replicator'") == 1


def test_a_chunk_checkpoint_commits_or_rolls_back_with_its_transaction(dest_db: Database) -> None:
    with dest_db.session() as session:
        plan = [ChunkPlan(0, "public", "t", "all", None, None)]
        with session.transaction():
            session.state.record_table_plan("job", ("public", "t"), True, ["id"], plan)
        with pytest.raises(RuntimeError), session.transaction():
            session.state.mark_chunk_done("job", ("public", "t"), 0, "run", 10)
            raise RuntimeError("the rows it covers failed")
        assert session.state.load_snapshot("job")[("public", "t")].pending == plan
        with session.transaction():
            session.state.mark_chunk_done("job", ("public", "t"), 0, "run", 10)
        assert session.state.load_snapshot("job")[("public", "t")].pending == []
