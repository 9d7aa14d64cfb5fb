"""A slot's pipeline under the one retry rule: what it survives, and what it gives up on."""

from __future__ import annotations

import threading
import time

from replicator.config import load_connection
from replicator.decoding.pgoutput import PgOutputDecoder
from replicator.source.stream import ReplicationStream
from tests.realtime.conftest import Env


def test_a_slot_still_held_by_another_walsender_is_waited_for(pg_env: Env) -> None:
    """SlotInUse (say, our previous walsender still exiting) is transient: the pipeline waits
    and retries instead of ending the run."""
    pg_env.source.execute("CREATE TABLE t (id integer PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    assert pg_env.run("full", "--once") == 0
    pg_env.source.execute("INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'changed' WHERE id = 1")
    pg_env.source_config = lambda **kw: pg_env.source.write_config(  # type: ignore[method-assign]
        pg_env.tmp / "source.yaml", **{"replication-slots": {pg_env.slot: ["pgoutput"]},
                                       "publication": f"{pg_env.slot}_pub", "max-retries": 30,
                                       "retry-wait-duration-ms": 200, **kw})
    cfg = load_connection(pg_env.source_config(), "source").value
    holder = ReplicationStream.open(cfg, pg_env.slot, PgOutputDecoder([f"{pg_env.slot}_pub"]))
    release = threading.Timer(1.5, holder.close)  # the other consumer lets go after a while
    release.start()
    started = time.monotonic()
    try:
        assert pg_env.run("realtime", "--once") == 0
    finally:
        release.cancel()
        holder.close()
    assert time.monotonic() - started >= 1.5  # it did have to wait
    pg_env.assert_equal("t")
