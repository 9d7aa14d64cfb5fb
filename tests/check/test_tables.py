"""Per-table checks: grants, keys / replica identity, publication coverage, operations and filters."""

from __future__ import annotations

from pathlib import Path

from replicator.check import Status
from tests.check.conftest import Source, make_source
from tests.conftest import Database


def test_missing_grant(source: Source) -> None:
    source.db.execute(f'REVOKE SELECT ON public.orders FROM "{source.user}"')
    result = source.check().find("select grants")
    assert result.status is Status.FAIL
    assert result.detail == f"{source.user} may not read 1 table(s): public.orders"
    assert result.fix == f'GRANT SELECT ON "public"."orders" TO "{source.user}";'
    source.apply_sql(result.fix)
    assert source.check().find("select grants").status is Status.OK


def test_missing_schema_usage(source: Source) -> None:
    source.db.execute("CREATE SCHEMA sales; CREATE TABLE sales.refunds (id int PRIMARY KEY)")
    source.db.execute(f'ALTER PUBLICATION "pub_{source.user}" ADD TABLE sales.refunds')
    result = source.check().find("select grants")
    assert result.status is Status.FAIL
    assert result.fix == (
        f'GRANT USAGE ON SCHEMA "sales" TO "{source.user}";\nGRANT SELECT ON "sales"."refunds" TO '
        f'"{source.user}";'
    )
    source.apply_sql(result.fix)
    assert source.check().ok


def test_column_grants_cover_a_filtered_column_list(source: Source) -> None:
    source.db.execute(f'REVOKE SELECT ON public.items FROM "{source.user}"')
    source.db.execute(f'GRANT SELECT (id, name) ON public.items TO "{source.user}"')
    filter_ = {"allow": {"schema": "public", "allow": {"items": {"allow": ["id", "name"]}, "orders": None}}}
    assert source.check(filter_=filter_).find("select grants").status is Status.OK


def test_table_without_key(source: Source) -> None:
    source.db.execute("CREATE TABLE public.events (at timestamptz, what text)")
    source.db.execute(f'ALTER PUBLICATION "pub_{source.user}" ADD TABLE public.events')
    result = source.check().find("keys")
    assert result.status is Status.FAIL
    assert "public.events has no primary key" in result.detail
    lines = (result.fix or "").splitlines()
    assert lines[0].startswith(
        'ALTER TABLE "public"."events" ADD PRIMARY KEY (...);  -- or set row-identifier-key'
    )
    assert lines[1] == 'ALTER TABLE "public"."events" REPLICA IDENTITY FULL;'
    # The documented alternative: a row-identifier-key plus REPLICA IDENTITY FULL.
    source.db.execute(lines[1])
    extractor = {
        "snapshot": {
            "per-table-config": [
                {"schema": "public", "tables": {"events": {"row-identifier-key": ["at", "what"]}}}
            ]
        }
    }
    assert source.check(extractor=extractor).find("keys").status is Status.OK


def test_replica_identity_nothing(source: Source) -> None:
    source.db.execute("ALTER TABLE public.items REPLICA IDENTITY NOTHING")
    result = source.check().find("keys")
    assert result.status is Status.FAIL
    assert (
        result.detail == "updates and deletes cannot be replicated: public.items has REPLICA IDENTITY NOTHING"
    )
    source.apply_sql(result.fix or "")
    assert source.check().find("keys").status is Status.OK


def test_publication_without_delete(source: Source) -> None:
    source.db.execute(f"ALTER PUBLICATION \"pub_{source.user}\" SET (publish = 'insert, update')")
    report = source.check()
    result = report.find("publish operations")
    assert (
        result.status is Status.FAIL
        and result.detail == f"publication pub_{source.user} does not publish delete"
    )
    assert (
        result.fix
        == f"ALTER PUBLICATION \"pub_{source.user}\" SET (publish = 'insert, update, delete, truncate', "
        "publish_via_partition_root = true);"
    )
    assert report.exit_code == 1
    source.apply_sql(result.fix)
    assert source.check().ok


def test_publication_missing_a_table(source: Source) -> None:
    source.db.execute(f'ALTER PUBLICATION "pub_{source.user}" DROP TABLE public.orders')
    result = source.check().find("publication coverage")
    assert result.status is Status.FAIL and result.detail == f"pub_{source.user} leaves out public.orders"
    assert result.fix == f'ALTER PUBLICATION "pub_{source.user}" ADD TABLE "public"."orders";'
    source.apply_sql(result.fix)
    assert source.check().ok


def test_publication_row_filter_and_column_list(source: Source) -> None:
    pub = f"pub_{source.user}"
    source.db.execute(
        f'ALTER PUBLICATION "{pub}" SET TABLE public.items WHERE (id > 10), public.orders (id, item)'
    )
    result = source.check().find("publication filters")
    assert result.status is Status.FAIL
    assert (
        "public.items (WHERE (id > 10))" in result.detail and "public.orders (a column list)" in result.detail
    )
    source.apply_sql(result.fix or "")
    assert source.check().ok


def test_publication_that_does_not_exist(source: Source) -> None:
    result = source.check(publication="nope").find("publication")
    assert result.status is Status.FAIL
    assert result.fix == (
        'CREATE PUBLICATION "nope" FOR TABLE "public"."items", "public"."orders" '
        "WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true);"
    )
    source.apply_sql(result.fix)
    assert source.check(publication="nope").ok


def test_pgoutput_without_a_publication_name(source: Source) -> None:
    # A table without a key stays out of the suggested publication: published for updates, the
    # source's own UPDATEs of it would fail (replicator run publishes it for inserts only).
    source.db.execute("CREATE TABLE public.logs (at int, msg text); INSERT INTO public.logs VALUES (1, 'a')")
    result = source.check(publication=None).find("publication")
    assert result.status is Status.FAIL
    assert (result.fix or "").startswith("add `publication: replicator_pub` to the source config")
    assert "logs" not in (result.fix or "") and '"public"."items"' in (result.fix or "")
    source.apply_sql((result.fix or "").split("\n", 1)[1])
    source.db.execute("UPDATE public.logs SET msg = 'the source still updates it'")


def test_partitioned_table_must_be_published_via_its_root(source_db: Database, tmp_path: Path) -> None:
    # Published leaf by leaf, a partition attached later would be missed, and realtime refuses it.
    src = make_source(source_db, tmp_path)
    source_db.execute("CREATE TABLE public.m (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)")
    source_db.execute(
        "CREATE TABLE public.m_2024 PARTITION OF public.m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    )
    source_db.execute(f'CREATE PUBLICATION "pub_{src.user}" FOR TABLE public.m')
    result = src.check().find("publication coverage")
    assert result.status is Status.FAIL
    assert result.fix == f'ALTER PUBLICATION "pub_{src.user}" SET (publish_via_partition_root = true);'
    src.apply_sql(result.fix)
    report = src.check()
    assert report.find("publication coverage").status is Status.OK, report.render()


def test_filter_naming_a_missing_table(source: Source) -> None:
    result = source.check(filter_={"allow": {"schema": "public", "allow": {"itemz": None}}}).find("selection")
    assert (
        result.status is Status.FAIL
        and "no table 'itemz'" in result.detail
        and "did you mean 'items'" in result.detail
    )


def test_wal2json_only_needs_no_publication(source: Source) -> None:
    report = source.check(**{"replication-slots": {f"j_{source.user}": ["wal2json"]}}, publication=None)
    assert report.ok, report.render()
    assert "publication" not in [r.name for r in report.results]


def test_column_list_carrying_every_selected_column_is_fine(source: Source) -> None:
    # What `replicator run` itself creates when the filter names columns.
    pub = f"pub_{source.user}"
    source.db.execute(f'ALTER PUBLICATION "{pub}" SET TABLE public.items, public.orders (id, item)')
    filter_ = {"allow": {"schema": "public", "allow": {"items": None, "orders": {"allow": ["item"]}}}}
    report = source.check(filter_=filter_)
    assert report.find("publication filters").status is Status.OK, report.render()


def test_sequences_behind_the_tables_must_be_readable(source: Source) -> None:
    source.db.execute(
        "CREATE SEQUENCE public.refs; CREATE TABLE public.tickets (id serial PRIMARY KEY, "
        "ref bigint DEFAULT nextval('public.refs'), line bigint GENERATED ALWAYS AS IDENTITY)"
    )
    source.db.execute(f'GRANT SELECT ON public.tickets TO "{source.user}"')
    source.db.execute(f'ALTER PUBLICATION "pub_{source.user}" ADD TABLE public.tickets')
    # The access component grants them (default privileges included): a user made otherwise may lack them.
    assert source.check().find("sequence grants").status is Status.OK
    source.db.execute(f'REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public FROM "{source.user}"')
    result = source.check().find("sequence grants")
    assert result.status is Status.FAIL
    assert result.detail == (
        f"{source.user} may not read the value of 3 sequence(s): public.refs, public.tickets_id_seq, "
        "public.tickets_line_seq (kept in step at the destination, set at switchover)"
    )
    assert result.fix == f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA "public" TO "{source.user}";'
    source.apply_sql(result.fix)
    assert source.check().find("sequence grants").status is Status.OK


def test_wal2json_with_nan_capable_columns_is_refused_unless_accepted(source: Source) -> None:
    """Issue 9 item 10: wal2json 2.5 replicates NaN and ±Infinity as NULL."""
    source.db.execute("ALTER TABLE public.orders ADD COLUMN price numeric, ADD COLUMN ratio real")
    slots = {"replication-slots": {f"slot_{source.user}": ["wal2json"]}}
    result = source.check(**slots).find("wal2json values")
    assert result.status is Status.FAIL
    assert "NaN and ±Infinity as NULL in public.orders" in result.detail
    assert "public.items" not in result.detail
    assert "use pgoutput (the default; no such limit)" in (result.fix or "")
    assert "wal2json-nan-becomes-null: true" in (result.fix or "")
    accepted = source.check(**slots, **{"wal2json-nan-becomes-null": True}).find("wal2json values")
    assert accepted.status is Status.WARN
    # pgoutput: nothing to say.
    assert all(r.name != "wal2json values" for r in source.check().results)


def test_a_row_filter_made_of_the_filter_conditions_is_fine(source: Source) -> None:
    """Issue 9 item 8: `run` puts a condition on the key into the publication; check agrees."""
    # The row filter is tried the way `run` makes it (a publication created and rolled back), which
    # takes the table's owner with CREATE on the database; without those, `run` evaluates the
    # condition at the destination, and check says this row filter is not the one `run` expects.
    source.db.execute(f'ALTER TABLE public.items OWNER TO "{source.user}"')
    source.db.execute(f'GRANT CREATE ON DATABASE "{source.db.name}" TO "{source.user}"')
    source.db.execute(
        f'ALTER PUBLICATION "pub_{source.user}" SET TABLE public.items WHERE (id > 10), public.orders'
    )
    filter_ = {"allow": {"schema": "public", "allow": {"items": {"conditions": "id > 10"}, "orders": None}}}
    assert source.check(filter_=filter_).find("publication filters").status is Status.OK
    # Without those conditions in the filter config, the same row filter loses changes.
    assert source.check().find("publication filters").status is Status.FAIL
