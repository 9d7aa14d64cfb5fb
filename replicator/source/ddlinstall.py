"""``replicator install-ddl-capture``: the DDL capture's admin path (a superuser's connection)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import ConfigFile, ConnectionConfig
from replicator.connect import connect, describe
from replicator.source import ddlcapture

log = logging.getLogger(__name__)


def run_install(source: ConfigFile[ConnectionConfig], uninstall: bool = False) -> int:
    cfg = source.value
    with connect(cfg, "source", "replicator/install-ddl-capture", autocommit=True) as conn:
        if uninstall:
            ddlcapture.uninstall(conn)
            print(f"DDL capture removed from {describe(cfg)}")
            return 0
        ddlcapture.install(conn)
        state = ddlcapture.state(conn)
        print(f"DDL capture installed in {describe(cfg)} (version {state.version}, owner {state.owner})")
        gap = publication_gap(conn, cfg.publication)
        if gap is not None:
            print(f"note: {gap[0]}; fix: {gap[1]}")
    return 0


def publication_gap(conn: psycopg.Connection[Any], publication: str | None) -> tuple[str, str] | None:
    """(what, fix) when the DDL capture's owner cannot add new tables to ``publication`` (a
    superuser can; the RDS master user must be a member of the publication's owner); else None."""
    # The trigger's function is SECURITY DEFINER: ALTER PUBLICATION runs as its owner.
    row = conn.execute(
        """SELECT r.rolsuper, p.pubname IS NOT NULL, pg_get_userbyid(p.pubowner),
                  p.pubname IS NOT NULL AND pg_has_role(f.proowner, p.pubowner, 'USAGE'),
                  pg_get_userbyid(f.proowner)
           FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace JOIN pg_roles r ON r.oid = f.proowner
           LEFT JOIN pg_publication p ON p.pubname = %s
           WHERE n.nspname = '_replicator_ddl' AND f.proname = 'on_end'""",
        (publication,),
    ).fetchone()
    if row is None or row[0] or not publication or not row[1] or row[3]:
        return None
    grant = sql.SQL("GRANT {} TO {};").format(sql.Identifier(str(row[2])), sql.Identifier(str(row[4])))
    return (
        f"new tables cannot join publication {publication} by themselves: the DDL capture runs as {row[4]}, "
        f"not a member of the publication's owner {row[2]}",
        f"{grant.as_string(conn)}  -- and make {row[4]} a member of the roles that create tables there",
    )
