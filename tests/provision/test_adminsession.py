"""Provisioning against sessions that change the same objects at the same moment, on a real server.

Each conflict is provoked deterministically: a second session holds a change of a catalog row the
provisioning step must change too (a GRANT on the same table, on the same database), so the step
waits for it; the test then commits that change (the step then fails "tuple concurrently updated"),
closes a deadlock with it, or ends the step's connection (``pg_terminate_backend``). The step must
be redone and end in the declared state; an error no retry can cure must not be retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from replicator.localpg import SUPERUSER, SUPERUSER_PASSWORD
from replicator.provision import pgaccess
from replicator.provision.accessspec import AccessSpec
from replicator.provision.adminsession import AccessError, AdminSession
from replicator.provision.dynamic import ReplicationUserProvider
from tests.conftest import Database

PROVISIONING = "replicator-provision"  # the admin connection's application_name


class Background(threading.Thread):
    """``work()`` on a thread of its own; what it returned or raised is kept for the test."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as e:  # noqa: BLE001  (handed to the test)
            self.error = e

    def outcome(self) -> Any:
        self.join(60)
        assert not self.is_alive(), "provisioning did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def props(db: Database, user: str) -> Iterator[dict[str, Any]]:
    """The replication user's resource inputs, as the engine hands them over; the roles removed afterwards."""
    props = {
        "host": "127.0.0.1", "port": float(db.cluster.port), "database": db.name,
        "admin_user": SUPERUSER, "admin_password": SUPERUSER_PASSWORD, "sslmode": "prefer",
        "user": user, "replication_right": "attribute", "schemas": ["public", "sales"], "table_owners": [],
        "password_version": 1.0,
    }  # fmt: skip
    db.execute(f'CREATE ROLE "{user}_other"')
    yield props
    ReplicationUserProvider().delete("", props)
    db.execute(f'DROP OWNED BY "{user}_other"; DROP ROLE "{user}_other"')


def blocked_provisioning(db: Database, timeout_s: float = 30.0) -> int:
    """The pid of the provisioning backend once it waits for a lock another session holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = db.fetchone(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s"
            " AND wait_event_type = 'Lock'",
            (db.name, PROVISIONING),
        )
        if pid is not None:
            return int(pid)
        time.sleep(0.02)
    raise AssertionError("provisioning never waited for the other session's lock")


def can_select(db: Database, user: str, table: str) -> bool:
    return bool(db.fetchone("SELECT has_table_privilege(%s, %s, 'SELECT')", (user, table)))


def provisioned(db: Database, user: str, password: str) -> bool:
    """The declared end state: the role logs in, may replicate and reads both schemas' tables."""
    info = db.cluster.conninfo(db.name, user=user, password=password)
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute("SELECT FROM public.items, sales.orders")
    right = db.fetchone("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (user,))
    return bool(right) and can_select(db, user, "public.items") and can_select(db, user, "sales.orders")


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]


def test_a_grant_whose_table_another_session_changed_first_is_redone(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute(f'GRANT SELECT ON sales.orders TO "{props["user"]}_other"')
        create = Background(lambda: ReplicationUserProvider().create(props))
        create.start()
        blocked_provisioning(db)  # its GRANT SELECT ON ALL TABLES IN SCHEMA sales waits for ours
        other.execute("COMMIT")  # ... and then finds the row changed under it
    created = create.outcome()
    assert provisioned(db, props["user"], created.outs["password"])
    assert can_select(db, f"{props['user']}_other", "sales.orders")  # the other session's change kept
    assert len(retries(caplog)) == 1 and "tuple concurrently updated" in retries(caplog)[0], caplog.text


def test_a_deadlock_with_another_session_is_redone(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Provisioning's sessions look for the deadlock after 3 s of waiting, ours never: the victim is known
    # (and we have 3 s to close the cycle: the check runs once per wait).
    db.execute(f"ALTER DATABASE \"{db.name}\" SET deadlock_timeout = '3s'")
    with db.connect() as other:
        other.execute("SET deadlock_timeout = '60s'")
        other.execute("BEGIN")
        other.execute(f'GRANT SELECT ON sales.orders TO "{props["user"]}_other"')
        create = Background(lambda: ReplicationUserProvider().create(props))
        create.start()
        blocked_provisioning(db)  # it has granted CONNECT on the database, and waits for sales.orders
        # Now we wait for its change of the database's row: a cycle, which its session detects and breaks.
        other.execute(f'GRANT CONNECT ON DATABASE "{db.name}" TO "{props["user"]}_other"')
        other.execute("COMMIT")
    created = create.outcome()
    assert provisioned(db, props["user"], created.outs["password"])
    assert len(retries(caplog)) == 1 and "deadlock detected" in retries(caplog)[0], caplog.text


def test_a_connection_ended_mid_step_is_opened_again_and_the_step_redone(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute(f'GRANT SELECT ON sales.orders TO "{props["user"]}_other"')
        create = Background(lambda: ReplicationUserProvider().create(props))
        create.start()
        pid = blocked_provisioning(db)  # halfway through its transaction: the role made, rights granted
        assert db.fetchone("SELECT pg_terminate_backend(%s)", (pid,)) is True  # as a failover would
        other.execute("ROLLBACK")
    created = create.outcome()
    assert provisioned(db, props["user"], created.outs["password"])
    assert len(retries(caplog)) == 1 and "terminating connection" in retries(caplog)[0], caplog.text


def test_a_permission_the_admin_lacks_is_not_retried(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    admin = f"{props['user']}_admin"
    db.execute(f"CREATE ROLE \"{admin}\" LOGIN PASSWORD 'admin-pw'")  # no CREATEROLE
    try:
        started = time.monotonic()
        with pytest.raises(AccessError, match=rf"setting up replication user {props['user']}: "
                                              "permission denied to create role") as failed:
            ReplicationUserProvider().create({**props, "admin_user": admin, "admin_password": "admin-pw"})
        assert retries(caplog) == [] and "gave up" not in str(failed.value)  # one attempt
        assert time.monotonic() - started < 2  # and no wait
    finally:
        db.execute(f'DROP ROLE "{admin}"')


def test_a_retry_stops_at_what_the_conflict_left_that_no_retry_can_cure(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute("DROP SCHEMA sales CASCADE")
        create = Background(lambda: ReplicationUserProvider().create(props))
        create.start()
        blocked_provisioning(db)  # its GRANT USAGE ON SCHEMA sales waits for our drop of that schema
        other.execute("COMMIT")
    with pytest.raises(AccessError, match="schema 'sales' does not exist"):
        create.outcome()
    # Attempt 1 met the concurrent drop (retried); attempt 2 the missing schema (not retried): 2 in all.
    assert len(retries(caplog)) == 1 and "concurrently deleted" in retries(caplog)[0], caplog.text
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 0


def test_removing_the_user_while_another_session_grants_on_its_tables_is_redone(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    created = ReplicationUserProvider().create(props)
    caplog.set_level(logging.WARNING)
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute(f'GRANT SELECT ON sales.orders TO "{props["user"]}_other"')
        delete = Background(lambda: ReplicationUserProvider().delete(created.id, props))
        delete.start()
        blocked_provisioning(db)  # its REVOKE SELECT ON ALL TABLES IN SCHEMA sales waits for our GRANT
        other.execute("COMMIT")
    delete.outcome()
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 0
    assert can_select(db, f"{props['user']}_other", "sales.orders")
    assert len(retries(caplog)) == 1 and "tuple concurrently updated" in retries(caplog)[0], caplog.text


def test_a_schema_another_session_creates_at_the_same_moment_is_taken_as_it_is(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    props = {**props, "heartbeat_table": "replicator_hb.heartbeat"}
    with db.connect() as other:
        other.execute("BEGIN")
        other.execute("CREATE SCHEMA replicator_hb")
        create = Background(lambda: ReplicationUserProvider().create(props))
        create.start()
        blocked_provisioning(db)  # its CREATE SCHEMA IF NOT EXISTS waits for our creation of that name
        other.execute("COMMIT")  # ... and then finds the name taken in pg_namespace's unique index
    created = create.outcome()
    assert provisioned(db, props["user"], created.outs["password"])
    assert db.fetchone("SELECT has_schema_privilege(%s, 'replicator_hb', 'CREATE')", (props["user"],)) is True
    assert len(retries(caplog)) == 1 and "pg_namespace_nspname_index" in retries(caplog)[0], caplog.text


def test_a_conflict_that_outlasts_every_attempt_ends_with_the_step_named(
    db: Database, props: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    spec = AccessSpec(user=props["user"], schemas=("public", "sales"), replication_right="attribute")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(db.cluster.conninfo(db.name), autocommit=True, application_name=PROVISIONING)

    session = AdminSession(connect, attempts=3, wait_s=0.05, max_wait_s=0.1)
    with db.connect() as other, session:
        other.execute("BEGIN")
        other.execute(f'GRANT SELECT ON sales.orders TO "{props["user"]}_other"')
        create = Background(lambda: pgaccess.ensure_access(session, spec, "pw-123456"))
        create.start()
        # Every attempt waits for our lock, and its connection is ended: a failover that outlasts them all.
        for _ in range(3):
            pid = blocked_provisioning(db)
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
            while db.fetchone("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)):
                time.sleep(0.01)
        with pytest.raises(AccessError) as failed:
            create.outcome()
        other.execute("ROLLBACK")
    step = f"setting up replication user {props['user']}"
    assert str(failed.value).startswith(f"{step}: terminating connection"), failed.value
    assert "gave up after 3 attempts" in str(failed.value) and "Run pulumi up again" in str(failed.value)
    assert len(retries(caplog)) == 2  # attempts 1 and 2 were retried, 3 was the last
    assert db.fetchone("SELECT count(*) FROM pg_roles WHERE rolname = %s", (props["user"],)) == 0
