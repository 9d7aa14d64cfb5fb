"""The source side of realtime replication: from slot and publication to a stream of change events.

Setting up (regular autocommit connection unless said otherwise):

- ``publication.ensure_publication(conn, name, [PublishedTable(schema, table, columns)])``
  creates the publication pgoutput streams, or validates the one that exists (which tables'
  updates can be replicated at all is ``catalog.Table.identity_gap``).
- ``slots.ensure_slot(conn, name, plugin)``, or ``slots.SnapshotSlot.create(cfg, name, plugin)``
  for the `full` mode: an exported snapshot that meets the stream exactly at ``consistent_point``.
- ``heartbeat.ensure_heartbeat_table(conn, hb)`` and ``HeartbeatWriter(conn, hb).tick()``.

Reading (both readers satisfy ``reader.ChangeReader``: ``read(max_events, timeout, until)``,
``position``, ``confirmed``, ``confirm(lsn)``, ``close()``; and are context managers):

- ``stream.ReplicationStream.open(cfg, slot, decoder, start_lsn)`` (``log-reader-type: STREAM``);
- ``sqlreader.SqlReader.open(cfg, slot, decoder, start_lsn)`` (``log-reader-type: SQL``).

The source hears only what the caller ``confirm()``s: the end LSN of a transaction (or
``position``) the destination has committed. Failures that a reconnect can fix carry
``transient = True`` (``ReplicationLost``, ``SlotInUse``); after one, open a new reader from the
destination's checkpoint.

Watching: ``walwatch.WalWatch(log_monitoring, slots).check_if_due(conn)``.
"""
