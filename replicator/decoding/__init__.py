"""Decoders: output-plugin messages in, change events out (one model for pgoutput and wal2json).

- ``changes``: the events (Begin, Change, Truncate, Commit), Relation/Column, UNCHANGED_TOAST,
  and the ``Decoder`` protocol the readers drive.
- ``pgoutput``: ``PgOutputDecoder(publications)``, the built-in plugin (recommended, fastest).
- ``wal2json``: ``Wal2JsonDecoder(describe, tables)``, format version 2, evened out to pgoutput's
  events (``describe`` is ``replicator.source.describe.CatalogDescriber(conn)``).
"""
