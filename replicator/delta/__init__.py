"""delta-snapshot: keep a destination in sync by scanning the source, without replication slots.

Modules, in the order a pass uses them:

- ``tables``: the selected tables, how each finds changes (``update-key`` or ``xmin``), and
  the configs refused (no key, unusable update key, nullable key with replicate-deletes).
- ``updatekey`` and ``xmin``: which rows changed since the last pass, and which watermark is
  safe to store so that a row committed late by a long transaction is never missed.
- ``changes``: read the changed rows in the pass's snapshot and merge them by key, storing the
  watermark in the same destination transaction.
- ``deletes``: compare key sets in ordered ranges and remove what the source no longer has.
- ``passes``: one pass (the first one of a table is a full snapshot, via ``replicator.snapshot``),
  its work spread over ``snapshot.workers``' pool, which the snapshot uses too.
- ``loop``: passes at an interval, signals, ``--once``; a failed pass is tried again under
  ``replicator.retry``'s rule.

Everything that touches the destination goes through its session (``replicator.destinations``).
"""
