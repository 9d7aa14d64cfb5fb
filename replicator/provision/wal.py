"""WAL protection on the source: the retention budget, the server-side bound and the CloudWatch alarms.

Three layers, from the gentlest to the last resort, all derived from one budget so they agree:

1. the replicator's own ``log-monitoring`` warns at ``alert-threshold-percent`` of
   ``max-wal-size-gb`` and stops the pipeline at the maximum;
2. CloudWatch alarms (this module says which metrics, dimensions and thresholds) page an operator
   at the same two points, and when the disk runs low, whether or not the replicator is running;
3. ``max_slot_wal_keep_size`` (RDS for PostgreSQL 13+) makes the server invalidate the slot rather
   than fill the disk, above the replicator's stop point so that the clean stop comes first.

The metric names and dimensions are the ones AWS documents ("Amazon CloudWatch metrics for Amazon
RDS" / "... for Amazon Aurora"): RDS for PostgreSQL publishes ``OldestReplicationSlotLag``,
``TransactionLogsDiskUsage`` and ``FreeStorageSpace`` per ``DBInstanceIdentifier``. Aurora
PostgreSQL publishes no ``OldestReplicationSlotLag`` and no ``FreeStorageSpace`` (its cluster volume
grows by itself); its WAL metrics are instance-level (``ReplicationSlotDiskUsage``,
``TransactionLogsDiskUsage`` on the writer, ``FreeLocalStorage``), aggregated per cluster and role
with the dimensions ``DBClusterIdentifier`` + ``Role=WRITER``, which follows the writer across a
failover. Aurora's cluster-level metrics (``VolumeBytesUsed`` ...) say nothing about WAL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from replicator.config.connection import LogMonitoring

GB = 1024**3

# The replicator's `log-monitoring` default (the config model is the one source of the number).
DEFAULT_ALERT_THRESHOLD_PERCENT: int = LogMonitoring.model_fields["alert_threshold_percent"].default
# `max-wal-size-gb` has no default in the replicator; 50 is the value its README documents.
DEFAULT_MAX_WAL_SIZE_GB = 50.0
# The server's bound sits this far above the replicator's stop point: as much time again to react.
KEEP_SIZE_FACTOR = 2.0
DEFAULT_FREE_STORAGE_GB = 10.0


@dataclass(frozen=True)
class WalBudget:
    """How much WAL a slot may hold, and when to page someone."""

    max_wal_size_gb: float  # the replicator stops here (log-monitoring.max-wal-size-gb)
    alert_threshold_percent: int  # ... and warns from this share of it
    free_storage_gb: float  # the disk (RDS) / local storage (Aurora) is low below this
    # max_slot_wal_keep_size; None: not set (Aurora, PostgreSQL < 13, or unbounded)
    keep_size_gb: float | None

    @property
    def alert_bytes(self) -> int:
        return int(self.max_wal_size_gb * GB) * self.alert_threshold_percent // 100

    @property
    def max_bytes(self) -> int:
        return int(self.max_wal_size_gb * GB)

    @property
    def free_storage_bytes(self) -> int:
        return int(self.free_storage_gb * GB)


def default_budget(
    allocated_storage_gb: float | None,
    max_wal_size_gb: float | None,
    keep_size_gb: float | None,
    free_storage_gb: float | None,
    alert_threshold_percent: int = DEFAULT_ALERT_THRESHOLD_PERCENT,
    keep_size_applies: bool = True,
) -> WalBudget:
    """Fill what the user left out. On a database whose disk size we know (one the program creates),
    the defaults scale down with it, so that a small disk is not promised 100 GB of WAL."""
    storage = allocated_storage_gb
    wal_max = max_wal_size_gb or (
        min(DEFAULT_MAX_WAL_SIZE_GB, storage / 4) if storage else DEFAULT_MAX_WAL_SIZE_GB
    )
    keep: float | None = None
    if keep_size_applies and keep_size_gb != -1:
        keep = keep_size_gb or (
            min(KEEP_SIZE_FACTOR * wal_max, storage / 2) if storage else KEEP_SIZE_FACTOR * wal_max
        )
    free = free_storage_gb or (storage / 10 if storage else DEFAULT_FREE_STORAGE_GB)
    return WalBudget(wal_max, alert_threshold_percent, free, keep)


@dataclass(frozen=True)
class AlarmSpec:
    """One CloudWatch alarm: what it watches and when it fires."""

    key: str  # stable short name, part of the resource and alarm names
    metric: str
    dimensions: dict[str, str]
    comparison: Literal["GreaterThanOrEqualToThreshold", "LessThanOrEqualToThreshold"]
    threshold: int  # bytes
    statistic: Literal["Maximum", "Minimum"]
    description: str


def alarm_specs(kind: Literal["instance", "cluster"], identifier: str, budget: WalBudget) -> list[AlarmSpec]:
    """The alarms for an RDS instance or an Aurora cluster (see the module docstring for the metrics)."""
    alert, stop, low = budget.alert_bytes, budget.max_bytes, budget.free_storage_bytes
    pct, gb = budget.alert_threshold_percent, budget.max_wal_size_gb
    if kind == "instance":
        dims = {"DBInstanceIdentifier": identifier}
        return [
            AlarmSpec(
                "slot-lag",
                "OldestReplicationSlotLag",
                dims,
                "GreaterThanOrEqualToThreshold",
                alert,
                "Maximum",
                f"A replication slot on {identifier} holds {pct}% of the {gb:g} GB WAL budget: the "
                "replicator is falling behind or stopped (its log-monitoring warns at the same point).",
            ),
            AlarmSpec(
                "wal-disk",
                "TransactionLogsDiskUsage",
                dims,
                "GreaterThanOrEqualToThreshold",
                stop,
                "Maximum",
                f"WAL on {identifier} reached the {gb:g} GB budget, where the replicator stops; "
                "max_slot_wal_keep_size will invalidate the slot further on.",
            ),
            AlarmSpec(
                "free-storage",
                "FreeStorageSpace",
                dims,
                "LessThanOrEqualToThreshold",
                low,
                "Minimum",
                f"{identifier} has {budget.free_storage_gb:g} GB of storage left or less.",
            ),
        ]
    dims = {"DBClusterIdentifier": identifier, "Role": "WRITER"}  # follows the writer across failovers
    return [
        AlarmSpec(
            "slot-disk",
            "ReplicationSlotDiskUsage",
            dims,
            "GreaterThanOrEqualToThreshold",
            alert,
            "Maximum",
            f"Replication slots on the writer of {identifier} use {pct}% of the {gb:g} GB WAL budget: "
            "the replicator is falling behind or stopped.",
        ),
        AlarmSpec(
            "wal-disk",
            "TransactionLogsDiskUsage",
            dims,
            "GreaterThanOrEqualToThreshold",
            stop,
            "Maximum",
            f"Transaction logs on the writer of {identifier} reached the {gb:g} GB budget, where the "
            "replicator stops.",
        ),
        AlarmSpec(
            "free-local-storage",
            "FreeLocalStorage",
            dims,
            "LessThanOrEqualToThreshold",
            low,
            "Minimum",
            f"The writer of {identifier} has {budget.free_storage_gb:g} GB of local storage left or less "
            "(logical decoding spills large transactions there).",
        ),
    ]
