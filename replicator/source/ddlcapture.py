"""DDL capture on the source: event triggers that write each schema change into the WAL.

Logical decoding carries rows, not schema changes. So an event trigger (``ddl_command_end``,
``sql_drop``, ``table_rewrite``) writes every change to a table as a transactional logical
message (``pg_logical_emit_message``, prefix ``replicator.ddl``): it reaches the replicator in
its transaction, in order with the rows around it, and only if that transaction commits.

A message says what changed without the destination having to look at the source's catalog
(which has moved on by the time the message is read): for each table touched, its shape
*before* and *after* the command (columns with attnum, name, type, NOT NULL, default,
generated expression; primary key; indexes and constraints as ``pg_get_indexdef`` /
``pg_get_constraintdef`` give them; partitions with their partition constraint), whether the
command rewrote the table and why (``table_rewrite``'s reason), whether the query had a
``USING`` clause and whether each changed column's conversion is an immutable cast (else the
rewritten values cannot be recomputed at the destination and are copied from the source), and
whether a table new to replication holds rows. The *before* shapes come from a registry table
(``_replicator_ddl.relations``) the trigger keeps up to date: renames are told by attnum and
table oid, not guessed from names.

New tables of a schema the replicator follows whole join its publication from the trigger, in
the same transaction as their CREATE (so no row can slip between the two): ``follow_schemas``
registers (publication, schema) pairs, and the trigger runs ``ALTER PUBLICATION ... ADD TABLE``
as the role that installed it (PostgreSQL wants both the publication's and the table's owner
for that; a superuser, or on RDS the master user when it is a member of both). A table is
added only if the role that registered the pair may read it (no one gets rows they could not
SELECT), and only if its UPDATEs and DELETEs can be published (a primary key, a replica
identity index, or REPLICA IDENTITY FULL), unless the publication publishes inserts only:
publishing a keyless table would make the source refuse its UPDATEs and DELETEs. What the
trigger could not do is in the message, and the replicator says it with the fix.

The trigger never fails the user's command: an error inside it is caught, reported in a
message (and as a WARNING), and the command goes on.

Installing needs superuser (``rds_superuser`` on RDS and Aurora): ``replicator
install-ddl-capture --source ADMIN.yaml``, or the Pulumi access component (``ddl_capture``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from replicator.errors import SourceError

log = logging.getLogger(__name__)

SCHEMA = "_replicator_ddl"
PREFIX = "replicator.ddl"
VERSION = 1
TRIGGERS = ("replicator_ddl_end", "replicator_ddl_drop", "replicator_ddl_rewrite")

_SHAPE = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.shape(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
SELECT jsonb_build_object(
  'relid', c.oid, 'schema', n.nspname, 'name', c.relname, 'kind', c.relkind::text,
  'persistence', c.relpersistence::text, 'identity', c.relreplident::text,
  'columns', coalesce((
    SELECT jsonb_agg(jsonb_build_object(
             'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
             'type_oid', a.atttypid, 'typmod', a.atttypmod, 'not_null', a.attnotnull,
             'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
             'generated', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
             'identity', a.attidentity::text,
             'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                               THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
             'has_missing', a.atthasmissing) ORDER BY a.attnum)
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
  'key', coalesce((
    SELECT jsonb_agg(a.attname ORDER BY k.ord)
    FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisprimary), '[]'),
  'identity_columns', coalesce((
    SELECT jsonb_agg(a.attname ORDER BY k.ord)
    FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = c.oid AND i.indisreplident), '[]'),
  'indexes', coalesce((
    SELECT jsonb_agg(jsonb_build_object('oid', i.indexrelid, 'name', ic.relname,
                                        'definition', pg_get_indexdef(i.indexrelid)) ORDER BY ic.relname)
    FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
    WHERE i.indrelid = c.oid
      AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conindid = i.indexrelid
                        AND x.conrelid = c.oid AND x.contype IN ('p', 'u', 'x'))), '[]'),
  'constraints', coalesce((
    SELECT jsonb_agg(jsonb_build_object('oid', x.oid, 'name', x.conname, 'type', x.contype::text,
                                        'definition', pg_get_constraintdef(x.oid)) ORDER BY x.conname)
    FROM pg_constraint x WHERE x.conrelid = c.oid AND x.contype IN ('c', 'f', 'p', 'u', 'x')), '[]'),
  'partitions', coalesce((
    SELECT jsonb_agg(jsonb_build_object('relid', pc.oid, 'schema', pn.nspname, 'name', pc.relname,
                                        'leaf', pt.isleaf,
                                        'constraint', pg_get_partition_constraintdef(pc.oid))
                     ORDER BY pc.oid)
    FROM pg_partition_tree(c.oid) pt JOIN pg_class pc ON pc.oid = pt.relid
    JOIN pg_namespace pn ON pn.oid = pc.relnamespace
    WHERE c.relkind = 'p' AND pt.relid <> c.oid), '[]'))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_replicator_ddl', '_replicator')
  AND n.nspname NOT LIKE 'pg\_%'
$fn$"""

_CAST = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.immutable_cast(source oid, target oid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
-- Whether converting a value of type source to type target (as ALTER COLUMN TYPE without USING
-- does) gives the same result on any server and session: binary coercible, or an immutable cast
-- function. (timestamp -> timestamptz, for one, depends on the TimeZone setting.)
DECLARE
  s oid := source; t oid := target; se oid; te oid; m "char"; f oid;
BEGIN
  SELECT CASE WHEN typtype = 'd' THEN typbasetype ELSE oid END INTO s FROM pg_type WHERE oid = s;
  SELECT CASE WHEN typtype = 'd' THEN typbasetype ELSE oid END INTO t FROM pg_type WHERE oid = t;
  IF s = t THEN RETURN true; END IF;  -- a typmod change: length coercions are immutable
  SELECT typelem INTO se FROM pg_type WHERE oid = s AND typcategory = 'A';
  SELECT typelem INTO te FROM pg_type WHERE oid = t AND typcategory = 'A';
  IF se IS NOT NULL AND te IS NOT NULL THEN RETURN _replicator_ddl.immutable_cast(se, te); END IF;
  SELECT castmethod, castfunc INTO m, f FROM pg_cast WHERE castsource = s AND casttarget = t;
  IF m = 'b' THEN RETURN true; END IF;
  IF m = 'f' THEN RETURN (SELECT provolatile = 'i' FROM pg_proc WHERE oid = f); END IF;
  RETURN false;
END
$fn$"""

_ON_REWRITE = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.on_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- Remember, until the command's end, that this table was rewritten and why (1: persistence,
-- 2: a volatile default, 4: a column's type, 8: the access method).
BEGIN
  PERFORM set_config('replicator_ddl.rewrites',
                     (coalesce(nullif(current_setting('replicator_ddl.rewrites', true), ''), '{}')::jsonb
                      || jsonb_build_object(pg_event_trigger_table_rewrite_oid()::text,
                                            pg_event_trigger_table_rewrite_reason()))::text, true);
END
$fn$"""

_ON_DROP = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- Remember, until the command's end (which reports them), the tables this command dropped or
-- changed by dropping something of theirs (a column, an index, a constraint).
DECLARE
  o record;
  touched jsonb := coalesce(nullif(current_setting('replicator_ddl.touched', true), ''), '[]')::jsonb;
BEGIN
  FOR o IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
    IF o.classid = 'pg_class'::regclass AND o.objsubid = 0 THEN
      -- A table (known to the registry), or an index (found by its oid in a registered shape).
      touched := touched || coalesce((
        SELECT jsonb_agg(r.relid) FROM _replicator_ddl.relations r
        WHERE r.relid = o.objid
           OR r.shape->'indexes' @> jsonb_build_array(jsonb_build_object('oid', o.objid))),
        '[]');
    ELSIF o.classid = 'pg_class'::regclass THEN
      touched := touched || to_jsonb(o.objid);  -- a column
    ELSIF o.classid = 'pg_constraint'::regclass THEN
      touched := touched || coalesce((
        SELECT jsonb_agg(r.relid) FROM _replicator_ddl.relations r
        WHERE r.shape->'constraints' @> jsonb_build_array(jsonb_build_object('oid', o.objid))), '[]');
    END IF;
  END LOOP;
  PERFORM set_config('replicator_ddl.touched', touched::text, true);
END
$fn$"""

_ON_END = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.on_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  cmd record; rel oid; root oid; touched oid[] := '{}'; rewrites jsonb; tables jsonb := '[]';
  pubs jsonb := '[]'; before jsonb; after jsonb; part jsonb; child jsonb; f record; reason text;
  entered boolean; casts jsonb; col jsonb; old jsonb; filled jsonb; value text; prows jsonb;

BEGIN
  IF current_setting('replicator_ddl.busy', true) = 'on' THEN
    RETURN;  -- our own ALTER PUBLICATION, below: reported by the outer call
  END IF;
  BEGIN
    rewrites := coalesce(nullif(current_setting('replicator_ddl.rewrites', true), ''), '{}')::jsonb;
    SELECT array_agg(DISTINCT x::oid) INTO touched
    FROM jsonb_array_elements_text(coalesce(nullif(current_setting('replicator_ddl.touched', true), ''),
                                            '[]')::jsonb) x;
    touched := coalesce(touched, '{}') || ARRAY(SELECT k::oid FROM jsonb_object_keys(rewrites) k);
    PERFORM set_config('replicator_ddl.rewrites', '', true), set_config('replicator_ddl.touched', '', true);
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
      rel := NULL;
      IF cmd.classid = 'pg_class'::regclass THEN
        SELECT CASE WHEN c.relkind IN ('i', 'I') THEN i.indrelid ELSE c.oid END INTO rel
        FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = cmd.objid;
      ELSIF cmd.classid = 'pg_constraint'::regclass THEN
        SELECT conrelid INTO rel FROM pg_constraint WHERE oid = cmd.objid;
      ELSIF cmd.classid = 'pg_namespace'::regclass THEN  -- ALTER SCHEMA RENAME: every table in it
        touched := touched || ARRAY(SELECT oid FROM pg_class WHERE relnamespace = cmd.objid);
      ELSIF cmd.classid = 'pg_publication_rel'::regclass THEN
        pubs := pubs || (SELECT jsonb_build_object('publication', p.pubname, 'relid', pr.prrelid,
                                                   'schema', n.nspname, 'name', c.relname, 'event', 'added',
                                                   'shape', _replicator_ddl.shape(pr.prrelid),
                                                   'rows', _replicator_ddl.has_rows(pr.prrelid))
                         FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                         JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE pr.oid = cmd.objid);
      END IF;
      IF rel IS NOT NULL THEN
        touched := touched || rel;
      END IF;
    END LOOP;
    -- A partition's change is its root's (partitions are replicated through their root).
    FOREACH rel IN ARRAY touched LOOP
      root := NULL;
      SELECT pg_partition_root(c.oid) INTO root FROM pg_class c WHERE c.oid = rel AND c.relispartition;
      IF root IS NOT NULL THEN touched := touched || root; END IF;
    END LOOP;
    FOR rel IN SELECT DISTINCT x FROM unnest(touched) x ORDER BY 1 LOOP
      SELECT shape INTO before FROM _replicator_ddl.relations WHERE relid = rel;
      after := _replicator_ddl.shape(rel);
      reason := rewrites ->> rel::text;
      IF before IS NOT DISTINCT FROM after AND reason IS NULL THEN CONTINUE; END IF;
      -- Columns whose type changed: can the destination convert them the same way?
      casts := '{}';
      IF before IS NOT NULL AND after IS NOT NULL THEN
        FOR col IN SELECT * FROM jsonb_array_elements(after->'columns') LOOP
          SELECT o INTO old FROM jsonb_array_elements(before->'columns') o
          WHERE (o->>'attnum')::int = (col->>'attnum')::int;
          IF old IS NOT NULL
             AND (old->>'type_oid' <> col->>'type_oid' OR old->>'typmod' <> col->>'typmod') THEN
            casts := casts || jsonb_build_object(col->>'name',
              _replicator_ddl.immutable_cast((old->>'type_oid')::oid, (col->>'type_oid')::oid));
          END IF;
        END LOOP;
      END IF;
      -- Columns added with a default: the value the rows already there read (one row tells).
      filled := '{}';
      IF before IS NOT NULL AND after IS NOT NULL THEN
        FOR col IN SELECT * FROM jsonb_array_elements(after->'columns') LOOP
          IF col->>'default' IS NOT NULL AND NOT (before->'columns' @> jsonb_build_array(
                jsonb_build_object('attnum', (col->>'attnum')::int))) THEN
            EXECUTE format('SELECT %I::text FROM %s LIMIT 1', col->>'name', rel::regclass) INTO value;
            filled := filled || jsonb_build_object(col->>'name', value);
          END IF;
        END LOOP;
      END IF;
      -- New leaf partitions: do they bring rows (ATTACH) or not (CREATE TABLE ... PARTITION OF)?
      prows := '{}';
      FOR part IN SELECT * FROM jsonb_array_elements(coalesce(after->'partitions', '[]')) LOOP
        IF (part->>'leaf')::boolean AND NOT (coalesce(before->'partitions', '[]') @> jsonb_build_array(
              jsonb_build_object('relid', part->'relid'))) THEN
          prows := prows || jsonb_build_object(part->>'relid',
                                               _replicator_ddl.has_rows((part->>'relid')::oid));
        END IF;
      END LOOP;
      entered := after IS NOT NULL AND (before IS NULL OR before->>'schema' <> after->>'schema'
                                        OR before->>'name' <> after->>'name');
      tables := tables || jsonb_build_object(
        'relid', rel, 'before', before, 'after', after, 'rewrite', coalesce(reason::int, 0),
        'casts', casts, 'filled', filled, 'partition_rows', prows,
        'rows', CASE WHEN entered THEN _replicator_ddl.has_rows(rel) END);
      IF after IS NULL THEN
        DELETE FROM _replicator_ddl.relations WHERE relid = rel;
      ELSE
        INSERT INTO _replicator_ddl.relations VALUES (rel, after)
        ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape;
      END IF;
      -- Partitions detached (now tables of their own) and tables attached (now partitions).
      FOR part IN SELECT * FROM jsonb_array_elements(coalesce(before->'partitions', '[]')) LOOP
        IF after IS NULL OR NOT (after->'partitions'
                                 @> jsonb_build_array(jsonb_build_object('relid', part->'relid'))) THEN
          child := _replicator_ddl.shape((part->>'relid')::oid);
          IF child IS NOT NULL THEN
            tables := tables || jsonb_build_object('relid', part->'relid', 'before', NULL, 'after', child,
              'rewrite', 0, 'casts', '{}'::jsonb, 'rows', _replicator_ddl.has_rows((part->>'relid')::oid),
              'detached_from', rel);
            INSERT INTO _replicator_ddl.relations VALUES ((part->>'relid')::oid, child)
            ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape;
          END IF;
        END IF;
      END LOOP;
      FOR part IN SELECT * FROM jsonb_array_elements(coalesce(after->'partitions', '[]')) LOOP
        SELECT shape INTO child FROM _replicator_ddl.relations WHERE relid = (part->>'relid')::oid;
        IF child IS NOT NULL THEN
          tables := tables || jsonb_build_object('relid', part->'relid', 'before', child, 'after', NULL,
            'rewrite', 0, 'casts', '{}'::jsonb, 'rows', NULL, 'attached_to', rel);
          DELETE FROM _replicator_ddl.relations WHERE relid = (part->>'relid')::oid;
        END IF;
      END LOOP;
      -- A table new to a schema the replicator follows whole joins its publications.
      IF after IS NOT NULL THEN
        FOR f IN SELECT fl.publication, fl.registered_by, p.oid AS pubid,
                        p.pubupdate OR p.pubdelete AS changes
                 FROM _replicator_ddl.follow fl JOIN pg_publication p ON p.pubname = fl.publication
                 WHERE fl.schema_name IN (after->>'schema', '*')
                   AND NOT EXISTS (SELECT 1 FROM pg_publication_rel pr
                                   WHERE pr.prpubid = p.oid AND pr.prrelid = rel)
        LOOP
          IF NOT has_table_privilege(f.registered_by, rel, 'SELECT') THEN
            pubs := pubs || jsonb_build_object('publication', f.publication, 'relid', rel,
              'schema', after->>'schema', 'name', after->>'name', 'event', 'refused',
              'error', format('%s may not read it (GRANT SELECT ON %s TO %I)', f.registered_by,
                              rel::regclass, f.registered_by));
          ELSIF f.changes AND after->>'identity' <> 'f' AND after->'identity_columns' = '[]'
                AND (after->>'identity' <> 'd' OR after->'key' = '[]') THEN
            pubs := pubs || jsonb_build_object('publication', f.publication, 'relid', rel,
              'schema', after->>'schema', 'name', after->>'name', 'event', 'refused',
              'error', 'no primary key and no replica identity: published, '
                       || 'its UPDATEs and DELETEs would fail');
          ELSE
            BEGIN
              PERFORM set_config('replicator_ddl.busy', 'on', true);
              EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', f.publication, rel::regclass);
              PERFORM set_config('replicator_ddl.busy', '', true);
              pubs := pubs || jsonb_build_object('publication', f.publication, 'relid', rel,
                'schema', after->>'schema', 'name', after->>'name', 'event', 'added');
            EXCEPTION WHEN OTHERS THEN
              PERFORM set_config('replicator_ddl.busy', '', true);
              pubs := pubs || jsonb_build_object('publication', f.publication, 'relid', rel,
                'schema', after->>'schema', 'name', after->>'name', 'event', 'refused', 'error', SQLERRM);
            END;
          END IF;
        END LOOP;
      END IF;
    END LOOP;
    IF tables <> '[]' OR pubs <> '[]' THEN
      PERFORM pg_logical_emit_message(true, 'replicator.ddl', jsonb_build_object(
        'v', 1, 'tag', tg_tag, 'using', current_query() ~* '\musing\M', 'tables', tables,
        'publications', pubs)::text);
    END IF;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'replicator DDL capture failed for %: % (the replicator is told; the command goes on)',
      tg_tag, SQLERRM;
    PERFORM pg_logical_emit_message(true, 'replicator.ddl', jsonb_build_object(
      'v', 1, 'tag', tg_tag, 'error', SQLERRM, 'tables', '[]'::jsonb, 'publications', '[]'::jsonb)::text);
  END;
END
$fn$"""

_HAS_ROWS = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.has_rows(rel oid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE found boolean;
BEGIN
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', rel::regclass) INTO found;
  RETURN found;
END
$fn$"""

_FOLLOW = r"""
CREATE OR REPLACE FUNCTION _replicator_ddl.follow_schemas(pub text, schemas text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- New tables of these schemas join publication pub (replacing what was registered for it).
-- Whoever calls this must own the publication; new tables are added only if they may read them.
DECLARE owner oid;
BEGIN
  SELECT pubowner INTO owner FROM pg_publication WHERE pubname = pub;
  IF owner IS NULL THEN
    RAISE EXCEPTION 'publication % does not exist', pub;
  END IF;
  IF NOT pg_has_role(session_user, owner, 'USAGE') THEN
    RAISE EXCEPTION 'only the owner of publication % (%) may choose the schemas it follows', pub,
      pg_get_userbyid(owner) USING ERRCODE = 'insufficient_privilege';
  END IF;
  DELETE FROM _replicator_ddl.follow WHERE publication = pub;
  INSERT INTO _replicator_ddl.follow SELECT pub, s, session_user FROM unnest(schemas) s
  ON CONFLICT DO NOTHING;
END
$fn$"""

_INSTALL: list[str] = [
    "CREATE SCHEMA IF NOT EXISTS _replicator_ddl",
    "REVOKE ALL ON SCHEMA _replicator_ddl FROM PUBLIC",
    "GRANT USAGE ON SCHEMA _replicator_ddl TO PUBLIC",
    """CREATE TABLE IF NOT EXISTS _replicator_ddl.relations (relid oid PRIMARY KEY, shape jsonb NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS _replicator_ddl.follow (
         publication text NOT NULL, schema_name text NOT NULL, registered_by text NOT NULL,
         PRIMARY KEY (publication, schema_name))""",
    "GRANT SELECT ON _replicator_ddl.follow TO PUBLIC",
    _SHAPE,
    _CAST,
    _HAS_ROWS,
    _ON_REWRITE,
    _ON_DROP,
    _ON_END,
    _FOLLOW,
    f"CREATE OR REPLACE FUNCTION _replicator_ddl.version() RETURNS integer LANGUAGE sql IMMUTABLE "
    f"AS 'SELECT {VERSION}'",
    "REVOKE ALL ON FUNCTION _replicator_ddl.follow_schemas(text, text[]) FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION _replicator_ddl.follow_schemas(text, text[]) TO PUBLIC",
    # Every table as it is now: the "before" of the first change to each.
    """INSERT INTO _replicator_ddl.relations
       SELECT c.oid, s FROM pg_class c CROSS JOIN LATERAL _replicator_ddl.shape(c.oid) s WHERE s IS NOT NULL
       ON CONFLICT (relid) DO UPDATE SET shape = EXCLUDED.shape""",
    "DELETE FROM _replicator_ddl.relations r WHERE _replicator_ddl.shape(r.relid) IS NULL",
    "DROP EVENT TRIGGER IF EXISTS replicator_ddl_end",
    "DROP EVENT TRIGGER IF EXISTS replicator_ddl_drop",
    "DROP EVENT TRIGGER IF EXISTS replicator_ddl_rewrite",
    "CREATE EVENT TRIGGER replicator_ddl_rewrite ON table_rewrite"
    " EXECUTE FUNCTION _replicator_ddl.on_rewrite()",
    "CREATE EVENT TRIGGER replicator_ddl_drop ON sql_drop EXECUTE FUNCTION _replicator_ddl.on_drop()",
    "CREATE EVENT TRIGGER replicator_ddl_end ON ddl_command_end EXECUTE FUNCTION _replicator_ddl.on_end()",
    # Also under session_replication_role = replica (restores, other replication tools' sessions).
    "ALTER EVENT TRIGGER replicator_ddl_rewrite ENABLE ALWAYS",
    "ALTER EVENT TRIGGER replicator_ddl_drop ENABLE ALWAYS",
    "ALTER EVENT TRIGGER replicator_ddl_end ENABLE ALWAYS",
]


@dataclass(frozen=True)
class CaptureState:
    """What the source has of the DDL capture."""

    installed: bool  # every trigger present and enabled, at this version
    version: int | None  # the installed functions' version (None: not installed)
    owner: str | None  # who installed it: the role the trigger adds tables to publications as
    problem: str | None  # why it is not usable as it is (None when it is)


def install_statements() -> list[str]:
    """Every statement ``install`` runs, in order (the Pulumi access component runs the same)."""
    return list(_INSTALL)


def can_install(conn: psycopg.Connection[Any]) -> str | None:
    """Why this session cannot create event triggers (None: it can)."""
    row = conn.execute(
        "SELECT rolsuper, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser')"
        " AND pg_has_role(current_user, 'rds_superuser', 'MEMBER'), current_user"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    if row[0] or row[1]:
        return None
    return (
        f"{row[2]} may not create event triggers: that needs a superuser (on Amazon RDS and Aurora, "
        "the master user, a member of rds_superuser); connect as one"
    )


def install(conn: psycopg.Connection[Any]) -> None:
    """Install (or upgrade in place) the DDL capture, in one transaction. Idempotent."""
    reason = can_install(conn)
    if reason is not None:
        raise SourceError(f"cannot install the DDL capture: {reason}")
    try:
        with conn.transaction():
            for statement in _INSTALL:
                conn.execute(statement)
    except psycopg.Error as e:
        raise SourceError(f"installing the DDL capture failed: {e.diag.message_primary or e}") from None
    log.info("installed the DDL capture (event triggers %s) in database %s", ", ".join(TRIGGERS),
             conn.info.dbname)


def uninstall(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for name in TRIGGERS:
            conn.execute(sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute("DROP SCHEMA IF EXISTS _replicator_ddl CASCADE")


def state(conn: psycopg.Connection[Any]) -> CaptureState:
    """Whether the DDL capture is installed and enabled here (reads the catalogs only)."""
    rows = conn.execute(
        "SELECT evtname, evtenabled, pg_get_userbyid(evtowner) FROM pg_event_trigger WHERE evtname = ANY(%s)",
        (list(TRIGGERS),),
    ).fetchall()
    version_row = conn.execute(
        """SELECT (SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = '_replicator_ddl' AND p.proname = 'version')"""
    ).fetchone()
    version = _version(version_row[0] if version_row else None)
    found = {name: (enabled, owner) for name, enabled, owner in rows}
    owner = next((o for _, o in found.values()), None)
    fix = "install it: replicator install-ddl-capture --source <a superuser's connection config>"
    if not found and version is None:
        return CaptureState(False, None, None, f"not installed; {fix}")
    missing = [n for n in TRIGGERS if n not in found]
    if missing or version is None:
        what = ", ".join(missing) or "functions"
        return CaptureState(False, version, owner, f"incomplete (missing: {what}); {fix}")
    disabled = [n for n, (enabled, _) in found.items() if enabled == "D"]
    if disabled:
        enable = "; ".join(f"ALTER EVENT TRIGGER {n} ENABLE ALWAYS" for n in disabled)
        return CaptureState(False, version, owner, f"disabled ({', '.join(disabled)}); fix: {enable}")
    if version != VERSION:
        needs = f"version {version}, this replicator needs {VERSION}"
        return CaptureState(False, version, owner, f"{needs}; {fix}")
    return CaptureState(True, version, owner, None)


def _version(source: str | None) -> int | None:
    if not source:
        return None
    digits = "".join(ch for ch in source if ch.isdigit())
    return int(digits) if digits else None


def follow_schemas(conn: psycopg.Connection[Any], publication: str, schemas: list[str]) -> None:
    """New tables of ``schemas`` join ``publication`` (the trigger adds them); replaces what was
    registered for it. Call as the publication's owner."""
    conn.execute("SELECT _replicator_ddl.follow_schemas(%s, %s)", (publication, sorted(set(schemas))))


def followed_schemas(conn: psycopg.Connection[Any], publication: str) -> list[str]:
    rows = conn.execute(
        "SELECT schema_name FROM _replicator_ddl.follow WHERE publication = %s ORDER BY 1", (publication,)
    ).fetchall()
    return [str(r[0]) for r in rows]
