"""Database-layer checks on healthy and deliberately broken sources (real PostgreSQL servers)."""

from __future__ import annotations

from pathlib import Path

from replicator.check import Status
from replicator.check.database import check_output_plugin, source_context
from replicator.config import load_connection
from replicator.localpg import LocalCluster
from tests.check.conftest import Source, drop_slots, make_source
from tests.conftest import Database


def statuses(report, *names: str) -> list[Status]:  # type: ignore[no-untyped-def]
    return [report.find(n).status for n in names]


def test_healthy_source_passes(source: Source) -> None:
    report = source.check(
        **{"replication-slots": {f"slot_{source.user}": ["pgoutput"], f"json_{source.user}": ["wal2json"]}}
    )
    assert report.ok, report.render()
    assert (
        statuses(
            report,
            "connect",
            "tls",
            "wal_level",
            "replication right",
            "replication slots",
            "wal senders",
            "wal2json plugin",
            "select grants",
            "keys",
            "publish operations",
            "publication coverage",
            "publication filters",
        )
        == [Status.OK] * 12
    )
    assert report.exit_code == 0
    assert report.find("replication right").detail == f"{source.user} may replicate (REPLICATION attribute)"
    # the wal2json probe left no slot behind
    assert (
        source.db.fetchone(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'replicator_check_%'"
        )
        == 0
    )


def test_wal_level_replica(replica_cluster: LocalCluster, tmp_path: Path) -> None:
    replica_cluster.create_database("app")
    db = Database(replica_cluster, "app")
    src = make_source(db, tmp_path)
    report = src.check()
    result = report.find("wal_level")
    assert (
        result.status is Status.FAIL
        and result.detail == "wal_level is replica; logical decoding needs logical"
    )
    assert (
        result.fix is not None and result.fix.splitlines()[0] == "ALTER SYSTEM SET \"wal_level\" = 'logical';"
    )
    assert "restart PostgreSQL" in result.fix
    assert report.exit_code == 1
    # Applying the fix as printed, then restarting, makes the check pass.
    src.apply_sql(result.fix)
    replica_cluster.stop()
    replica_cluster.settings.pop("wal_level")
    replica_cluster.start()
    try:
        assert src.check().find("wal_level").status is Status.OK
    finally:
        db.execute("ALTER SYSTEM RESET wal_level")
        replica_cluster.stop()
        replica_cluster.settings["wal_level"] = "replica"
        replica_cluster.start()


def test_missing_replication_right_self_hosted(source: Source) -> None:
    source.db.execute(f'ALTER ROLE "{source.user}" NOREPLICATION')
    result = source.check().find("replication right")
    assert result.status is Status.FAIL
    assert result.fix == f'ALTER ROLE "{source.user}" WITH REPLICATION;  -- as the master user / a superuser'
    source.apply_sql(result.fix)
    assert source.check().find("replication right").status is Status.OK


def test_missing_replication_right_on_rds(source_db: Database, tmp_path: Path, rds_replication: str) -> None:
    src = make_source(source_db, tmp_path, right="rds_replication")
    source_db.execute(f'REVOKE rds_replication FROM "{src.user}"')
    result = src.check().find("replication right")
    assert result.status is Status.FAIL
    assert result.fix == f'GRANT rds_replication TO "{src.user}";  -- as the master user / a superuser'
    src.apply_sql(result.fix)
    result = src.check().find("replication right")
    assert (result.status, result.detail) == (
        Status.OK,
        f"{src.user} may replicate (member of rds_replication)",
    )


def test_not_enough_slots_or_senders(source: Source) -> None:
    many = {f"s{i}_{source.user}": ["pgoutput"] for i in range(22)}  # the test servers allow 20
    report = source.check(**{"replication-slots": many})
    slots, senders = report.find("replication slots"), report.find("wal senders")
    assert slots.status is Status.FAIL and "22 more needed" in slots.detail
    assert slots.fix is not None and slots.fix.startswith(
        "ALTER SYSTEM SET \"max_replication_slots\" = '22';"
    )
    assert senders.status is Status.FAIL and senders.fix is not None
    assert senders.fix.startswith("ALTER SYSTEM SET \"max_wal_senders\" = '22';")


def test_existing_slot_with_another_plugin(source: Source) -> None:
    slot = f"slot_{source.user}"
    source.db.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
    try:
        result = source.check().find(f"slot {slot}")
        assert result.status is Status.FAIL
        assert (
            f"exists for test_decoding in database {source.db.name}; the config wants pgoutput"
            in result.detail
        )
        assert result.fix is not None and result.fix.startswith(f"SELECT pg_drop_replication_slot('{slot}');")
    finally:
        drop_slots(source.db)




def test_an_unloadable_output_plugin_is_reported(source: Source) -> None:
    import psycopg

    cfg = load_connection(source.write("s.yaml", source.config()), "source").value
    with psycopg.connect(
        source.db.cluster.conninfo(source.db.name, user=source.user, password=source.password),
        autocommit=True,
    ) as conn:
        result = check_output_plugin(source_context(conn, cfg, None), "no_such_decoder")
    assert result.status is Status.FAIL
    assert "cannot load no_such_decoder" in result.detail
    assert result.fix == "install it on the server: apt-get install postgresql-15-no_such_decoder"


def test_connection_failure_stops_the_database_checks(source: Source) -> None:
    report = source.check(password="wrong-password")
    result = report.find("connect")
    assert result.status is Status.FAIL and "password authentication failed" in result.detail
    assert result.fix == "check username and password (or the credential-store secret) in the config"
    assert [r.name for r in report.results] == ["connect", "aws"]  # nothing else could be checked
    assert report.exit_code == 1


def test_snapshot_only_source_skips_replication_prerequisites(
    replica_cluster: LocalCluster, tmp_path: Path
) -> None:
    replica_cluster.create_database("snaponly")
    db = Database(replica_cluster, "snaponly")
    db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    src = make_source(db, tmp_path)
    report = src.check(**{"replication-slots": None, "publication": None})
    assert report.ok, report.render()
    assert report.find("replication").status is Status.SKIP


def test_destination_without_create_right(source: Source, dest_db: Database) -> None:
    user = f"dst_{source.user}"
    dest_db.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD 'dest-password-1'")
    dest_db.execute(f'REVOKE CREATE ON DATABASE "{dest_db.name}" FROM PUBLIC')
    destination = dest_db.config(username=user, password="dest-password-1")
    result = source.check(destination=destination).find("create schemas")
    assert result.status is Status.FAIL
    assert result.fix == f'GRANT CREATE ON DATABASE "{dest_db.name}" TO "{user}";  -- as the database owner'
    dest_db.execute(result.fix)
    assert source.check(destination=destination).find("create schemas").status is Status.OK


def test_ddl_capture_missing_is_a_warning_with_the_install_command(source: Source) -> None:
    report = source.check(**{"replication-slots": {f"slot_{source.user}": ["pgoutput"]}})
    result = report.find("ddl capture")
    assert result.status is Status.WARN and report.ok
    assert "not installed" in result.detail and "renames" in result.detail
    assert result.fix and "replicator install-ddl-capture --source" in result.fix


def test_ddl_capture_installed_is_reported_with_what_its_owner_lacks(source: Source) -> None:
    from replicator.source import ddlcapture

    slots = {"replication-slots": {f"slot_{source.user}": ["pgoutput"]}}
    with source.db.connect() as conn:
        ddlcapture.install(conn)
    assert source.check(**slots).find("ddl capture").status is Status.OK
    # Installed by a non-superuser (the RDS master user): it must be a member of the publication's owner.
    admin = f"admin_{source.user}"
    source.db.execute(f'CREATE ROLE "{admin}"; ALTER FUNCTION _replicator_ddl.on_end() OWNER TO "{admin}"')
    try:
        result = source.check(publication=f"pub_{source.user}", **slots).find("ddl capture")
        assert result.status is Status.WARN and "cannot join publication" in result.detail
        assert result.fix and result.fix.startswith(f'GRANT "postgres" TO "{admin}";')
        source.db.execute(result.fix.split("--")[0])  # the fix, as printed
        assert source.check(publication=f"pub_{source.user}", **slots).find("ddl capture").status is Status.OK
    finally:
        source.db.execute(f'ALTER FUNCTION _replicator_ddl.on_end() OWNER TO postgres; DROP ROLE "{admin}"')
